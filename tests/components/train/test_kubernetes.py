"""Kubernetes launch without a cluster: the generated TrainJob / PyTorchJob specs and the submit-and-wait logic.

The status logic is exercised against an in-memory stand-in for ``CustomObjectsApi`` (the object is injected); it
tests our handling of the conditions the operators report, not the operators.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from kubernetes.client import ApiClient

from components.config import Config, resolve
from components.errors import ConfigError, TrainingError
from components.train import kubernetes as k8s
from components.train.core import train
from components.train.worker import parse_args

ROOT = Path(__file__).resolve().parents[3]
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
TRACKING = {"tracking_uri": "http://mlflow:5000", "experiment": "medgan", "run_key": "run-7"}
PATHS = ("/workspace/data/archive", "/workspace/data/split", "/workspace/data/model")


def _cfg(launcher: str, *more: str) -> Config:
    return resolve("quickstart", [f"train.launcher={launcher}", "train.data_volume_claim=medgan-data", *more])


def _worker_argv(command: list[str], args: list[str]) -> list[str]:
    assert command[:3] == ["python", "-m", "torch.distributed.run"]
    assert command[-2:] == ["-m", "components.train.worker"]
    return args


def _check_round_trip(args: list[str], cfg: Config) -> None:
    parsed = parse_args(args)
    assert (parsed.archive, parsed.split, parsed.out) == PATHS
    assert Config.from_json(parsed.config_json) == cfg
    assert json.loads(parsed.tracking_json) == TRACKING


def _deserialize(data: dict, klass: str):
    """Parse with the kubernetes client's models: missing required fields or wrong types raise."""
    return ApiClient()._ApiClient__deserialize(data, klass)


def test_trainjob_spec_is_a_valid_trainer_v2_object():
    cfg = _cfg("trainjob", "train.nodes=2", "train.gpus_per_node=4", "train.service_account=medgan-trainer")
    job = k8s.build_trainjob(*PATHS, cfg, TRACKING, image="registry.example/medgan:1")
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    name = job["metadata"]["name"]
    assert DNS1123.match(name) and len(name) <= k8s.MAX_JOB_NAME and job["metadata"]["namespace"] == "kubeflow"
    spec = job["spec"]
    assert spec["runtimeRef"] == {
        "name": "torch-distributed",
        "kind": "ClusterTrainingRuntime",
        "apiGroup": "trainer.kubeflow.org",
    }
    trainer = spec["trainer"]
    assert trainer["image"] == "registry.example/medgan:1"
    assert trainer["numNodes"] == 2 and isinstance(trainer["numNodes"], int) and trainer["numProcPerNode"] == 4
    # GPUs beside CPU and memory (kubernetes.pod_*), the GPU count as request and limit
    assert trainer["resourcesPerNode"] == {
        "requests": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "4"},
        "limits": {"memory": "64Gi", "nvidia.com/gpu": "4"},
    }
    _check_round_trip(_worker_argv(trainer["command"], trainer["args"]), cfg)
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in trainer["env"]}
    assert env["MLFLOW_TRACKING_URI"] == TRACKING["tracking_uri"] and env["MEDGAN_RUN_KEY"] == "run-7"
    # the tracking server's credentials come from the Secret kubernetes.mlflow_secret, never inline
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert env[key] == {"secretKeyRef": {"name": "medgan-mlflow-client", "key": key}}
    for e in trainer["env"]:
        _deserialize(e, "V1EnvVar")
    # placement, identity, security and volumes: a runtime patch of the runtime's "node" job (Trainer >= v2.2)
    (patch,) = spec["runtimePatches"]
    assert patch["manager"] == k8s.RUNTIME_PATCH_MANAGER
    (node_job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert node_job["name"] == "node"
    pod = node_job["template"]["spec"]["template"]
    assert pod["metadata"]["labels"]["medgan-ops/mlflow-client"] == "true"
    pod_spec = _deserialize(pod["spec"], "V1PodSpec")
    assert pod_spec.service_account_name == "medgan-trainer"
    assert pod_spec.node_selector == {"nvidia.com/gpu.present": "true"}
    assert [(t.key, t.operator, t.effect) for t in pod_spec.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]
    assert pod_spec.security_context.run_as_non_root and pod_spec.security_context.run_as_user == 10001
    volumes = {v.name: v for v in pod_spec.volumes}
    assert volumes["medgan-data"].persistent_volume_claim.claim_name == "medgan-data"
    assert (volumes["dshm"].empty_dir.medium, volumes["dshm"].empty_dir.size_limit) == ("Memory", "8Gi")
    (container,) = pod_spec.containers
    assert container.name == "node" and container.security_context.allow_privilege_escalation is False
    assert {m.name: m.mount_path for m in container.volume_mounts} == {
        "medgan-data": "/workspace/data",
        "dshm": "/dev/shm",
    }
    # The default image is the project's one (components.image).
    assert k8s.build_trainjob(*PATHS, cfg, TRACKING)["spec"]["trainer"]["image"] == k8s.BASE_IMAGE


@pytest.mark.parametrize("nodes", [1, 4])
def test_pytorchjob_spec_is_a_valid_training_operator_v1_object(nodes):
    cfg = _cfg("pytorchjob", f"train.nodes={nodes}", "train.gpus_per_node=2", "train.image_pull_policy=Always")
    job = k8s.build_pytorchjob(*PATHS, cfg, TRACKING)
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    assert DNS1123.match(job["metadata"]["name"])
    spec = job["spec"]
    assert spec["nprocPerNode"] == "2"
    replicas = spec["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1
    if nodes == 1:
        assert set(replicas) == {"Master"}
    else:
        assert replicas["Worker"]["replicas"] == nodes - 1
    for role, replica in replicas.items():
        template = _deserialize(replica["template"], "V1PodTemplateSpec")
        (container,) = template.spec.containers
        assert container.name == "pytorch", role
        assert container.image == k8s.BASE_IMAGE and container.image_pull_policy == "Always"
        assert container.resources.requests == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"}
        assert container.resources.limits == {"memory": "64Gi", "nvidia.com/gpu": "2"}
        assert {m.name: m.mount_path for m in container.volume_mounts} == {
            "medgan-data": "/workspace/data",
            "dshm": "/dev/shm",
        }
        assert template.spec.volumes[0].persistent_volume_claim.claim_name == "medgan-data"
        assert container.security_context.allow_privilege_escalation is False
        assert container.security_context.capabilities.drop == ["ALL"]
        assert template.spec.security_context.run_as_non_root and template.spec.automount_service_account_token is False
        assert template.spec.node_selector == {"nvidia.com/gpu.present": "true"} and template.spec.tolerations
        assert template.metadata.labels["medgan-ops/mlflow-client"] == "true"
        secret_env = {e.name: e.value_from.secret_key_ref.name for e in container.env if e.value_from}
        assert secret_env == {
            k: "medgan-mlflow-client" for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
        }
        _check_round_trip(_worker_argv(container.command, container.args), cfg)
    # Masters and workers are separate objects (no shared, aliased dicts in the spec).
    if nodes > 1:
        assert replicas["Master"]["template"] is not replicas["Worker"]["template"]


def test_job_names_are_dns1123_and_stable():
    cfg = _cfg("trainjob")
    a, b = k8s.job_name(cfg, PATHS[0], PATHS[2]), k8s.job_name(cfg, PATHS[0], PATHS[2])
    assert a == b and DNS1123.match(a) and len(a) <= 40
    assert k8s.job_name(cfg, PATHS[0], "/workspace/data/other") != a


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("train.namespace=Bad_NS", "train.namespace"),
        ("train.batch_size=30", "divisible by the 4 processes"),
        ("train.batch_size=8", "train.mbstd_group=4 must divide the per-process batch"),
        ("train.gpus_per_node=0", "train.gpus_per_node"),
        ("train.image_pull_policy=sometimes", "train.image_pull_policy"),
        ("train.device=cpu", "train.device=cpu"),
    ],
)
def test_bad_kubernetes_settings_are_rejected_by_name(override, match):
    cfg = _cfg("trainjob", "train.gpus_per_node=4", override)
    with pytest.raises(ConfigError, match=match):
        k8s.build_trainjob(*PATHS, cfg, TRACKING)


def test_paths_outside_the_shared_volume_are_rejected():
    with pytest.raises(ConfigError, match="not under train.data_mount_path"):
        k8s.build_pytorchjob("/tmp/archive", PATHS[1], PATHS[2], _cfg("pytorchjob"), TRACKING)


def test_example_manifests_match_what_the_code_renders():
    """k8s/examples/*.yaml are generated from the defaults; regenerate them when the spec changes."""
    for launcher, file in (("trainjob", "trainjob.yaml"), ("pytorchjob", "pytorchjob.yaml")):
        on_disk = yaml.safe_load((ROOT / "k8s/examples" / file).read_text())
        fresh = k8s.example_job(launcher)

        def without_config(job):
            job = json.loads(json.dumps(job))
            if job["kind"] == "TrainJob":
                holders = [job["spec"]["trainer"]]
            else:
                holders = [r["template"]["spec"]["containers"][0] for r in job["spec"]["pytorchReplicaSpecs"].values()]
            configs = []
            for holder in holders:
                i = holder["args"].index("--config-json")
                configs.append(json.loads(holder["args"][i + 1]))
                holder["args"][i + 1] = "<config>"
            return job, configs

        disk_job, disk_cfgs = without_config(on_disk)
        fresh_job, fresh_cfgs = without_config(fresh)
        assert disk_job == fresh_job, (
            f"regenerate k8s/examples/{file}: python -m components.train.kubernetes {launcher}"
        )
        # Other stages' sections may grow fields; the train section must be exactly what the code renders.
        assert [c["train"] for c in disk_cfgs] == [c["train"] for c in fresh_cfgs]


# ------------------------------------------------------------------------------------------ submit and wait


class ApiError(Exception):
    def __init__(self, status, reason):
        super().__init__(reason)
        self.status, self.reason = status, reason


class FakeCustomObjectsApi:
    """Holds created objects; every ``get`` reports the next of a scripted list of status condition sets."""

    def __init__(self, statuses, create_error=None):
        self.statuses = list(statuses)
        self.create_error = create_error
        self.created, self.deleted, self.gets = [], [], 0

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        if self.create_error:
            raise self.create_error
        self.created.append((group, version, namespace, plural, body))
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.gets += 1
        conditions = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        body = json.loads(json.dumps(self.created[-1][4])) if self.created else {"metadata": {"name": name}}
        body["status"] = {"conditions": conditions}
        return body

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.deleted.append((group, version, namespace, plural, name))


def _cond(kind, status="True", reason="", message=""):
    return {"type": kind, "status": status, "reason": reason, "message": message}


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def _wait(job, api, timeout_s=100.0):
    clock, lines = FakeClock(), []
    result = k8s.submit_and_wait(
        job, api, timeout_s=timeout_s, poll_s=10, log=lines.append, clock=clock, sleep=clock.sleep
    )
    return result, lines, clock


@pytest.mark.parametrize("launcher", ["trainjob", "pytorchjob"])
def test_wait_returns_when_the_job_succeeds(launcher):
    job = k8s.build_job(*PATHS, _cfg(launcher), TRACKING)
    done = "Complete" if launcher == "trainjob" else "Succeeded"
    api = FakeCustomObjectsApi(
        [[], [_cond("Created")], [_cond("Created"), _cond("Running")], [_cond(done, message="ok")]]
    )
    result, lines, clock = _wait(job, api)
    kind = k8s.KINDS[launcher]
    assert api.created[0][:4] == (kind.group, kind.version, "kubeflow", kind.plural)
    assert result["status"]["conditions"][-1]["type"] == done and api.gets == 4 and not api.deleted
    assert lines[0].startswith("[train] submitted") and any("Running" in line for line in lines)
    assert "succeeded" in lines[-1] and clock.now == 30


def test_a_failed_job_raises_training_error_with_the_job_message():
    job = k8s.build_job(*PATHS, _cfg("pytorchjob"), TRACKING)
    failed = [
        _cond("Created", "True"),
        _cond("Running", "False"),
        _cond("Failed", reason="BackoffLimitExceeded", message="pod OOMKilled"),
    ]
    api = FakeCustomObjectsApi([[_cond("Running")], failed])
    with pytest.raises(TrainingError, match=r"PyTorchJob kubeflow/.* failed: BackoffLimitExceeded: pod OOMKilled"):
        _wait(job, api)


def test_a_job_that_outlives_the_timeout_is_deleted_and_reported():
    job = k8s.build_job(*PATHS, _cfg("trainjob"), TRACKING)
    api = FakeCustomObjectsApi([[_cond("Created")]])
    with pytest.raises(TrainingError, match=r"did not finish within train.job_timeout_s=100 s and was deleted"):
        _wait(job, api, timeout_s=100)
    assert api.deleted == [("trainer.kubeflow.org", "v1alpha1", "kubeflow", "trainjobs", job["metadata"]["name"])]
    assert api.gets == 11  # polled at t = 0, 10, ..., 100


def test_an_existing_job_is_adopted_and_other_create_errors_are_reported():
    job = k8s.build_job(*PATHS, _cfg("trainjob"), TRACKING)
    api = FakeCustomObjectsApi([[_cond("Complete")]], create_error=ApiError(409, "AlreadyExists"))
    _, lines, _ = _wait(job, api)
    assert "exists already" in lines[0]
    api = FakeCustomObjectsApi([[_cond("Complete")]], create_error=ApiError(403, "Forbidden"))
    with pytest.raises(TrainingError, match="could not create TrainJob .*Forbidden"):
        _wait(job, api)


class ClusterWithAnEarlierJob:
    """A job of the same name exists with ``conditions``; deleting it takes ``gone_after`` polls."""

    def __init__(self, job, conditions, gone_after=2):
        self.objects = {job["metadata"]["name"]: {**job, "status": {"conditions": conditions}}}
        self.gone_after, self.created, self.deleted, self.calls = gone_after, [], [], []

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.calls.append("create")
        if body["metadata"]["name"] in self.objects:
            raise ApiError(409, "AlreadyExists")
        self.created.append(body)
        self.objects[body["metadata"]["name"]] = {**body, "status": {"conditions": [_cond("Complete")]}}
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append("get")
        if name in self.deleted:
            self.gone_after -= 1
            if self.gone_after <= 0:
                self.deleted.remove(name)
                del self.objects[name]
        if name not in self.objects:
            raise ApiError(404, "NotFound")
        return self.objects[name]

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, propagation_policy=None):
        self.calls.append(f"delete:{propagation_policy}")
        self.deleted.append(name)


def test_a_retry_replaces_an_earlier_failed_job_of_the_same_name():
    job = k8s.build_job(*PATHS, _cfg("trainjob"), TRACKING)
    api = ClusterWithAnEarlierJob(job, [_cond("Failed", reason="BackoffLimitExceeded", message="OOMKilled")])
    result, lines, _ = _wait(job, api)
    # deleted with its pods, waited for until gone, then created anew and waited for
    assert api.calls[:3] == ["create", "get", "delete:Foreground"]
    assert api.calls.count("create") == 2 and len(api.created) == 1
    assert api.calls.index("create", 1) > api.calls.index("delete:Foreground") + 1
    assert result["status"]["conditions"][0]["type"] == "Complete"
    assert "failed (BackoffLimitExceeded: OOMKilled)" in lines[0] and "again" in lines[1]


def test_a_running_earlier_job_is_adopted_not_replaced():
    job = k8s.build_job(*PATHS, _cfg("trainjob"), TRACKING)
    api = ClusterWithAnEarlierJob(job, [_cond("Running")])
    real_get, gets = api.get_namespaced_custom_object, []

    def get_then_finish(*args):
        gets.append(args)
        found = real_get(*args)
        if len(gets) == 2:  # the first poll after adoption: it finishes
            found["status"] = {"conditions": [_cond("Complete")]}
        return found

    api.get_namespaced_custom_object = get_then_finish
    result, lines, _ = _wait(job, api)
    assert not api.deleted and not api.created and len(gets) == 2
    assert "exists already (running)" in lines[0] and result["status"]["conditions"][0]["type"] == "Complete"


def test_a_failed_job_that_will_not_go_away_is_a_clear_error():
    job = k8s.build_job(*PATHS, _cfg("trainjob"), TRACKING)
    api = ClusterWithAnEarlierJob(job, [_cond("Failed")], gone_after=10**9)
    with pytest.raises(TrainingError, match=r"not gone 600 s after its deletion; delete it by hand \(kubectl delete"):
        _wait(job, api)
    assert not api.created


def test_train_dispatches_to_the_kubernetes_launcher(monkeypatch, tmp_path):
    api = FakeCustomObjectsApi([[_cond("Failed", reason="Error", message="worker exited 2")]])
    monkeypatch.setattr(k8s, "default_api", lambda: api)
    cfg = resolve("tiny", ["train.launcher=trainjob", "train.job_timeout_s=60", f"train.data_mount_path={tmp_path}"])
    with pytest.raises(TrainingError, match="worker exited 2"):
        train(tmp_path / "archive", tmp_path / "split", tmp_path / "model", cfg, TRACKING)
    (created,) = api.created
    assert created[4]["kind"] == "TrainJob"
    args = parse_args(created[4]["spec"]["trainer"]["args"])
    assert args.out == str(tmp_path / "model") and Config.from_json(args.config_json) == cfg


# ------------------------------------------------------------------- the pipeline's train task: staging


RUN_ID = "0b9f6c2e-5d1a-4c1e-9d7a-2f4b8e6a1c3d"  # what {{$.pipeline_job_uuid}} resolves to


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _artifacts(tmp_path: Path) -> tuple[Path, Path, Path]:
    """kfp input artifact folders (archive with a sub-folder, split) and an output artifact path."""
    archive, split = tmp_path / "kfp/archive", tmp_path / "kfp/split"
    (archive / "arrays").mkdir(parents=True)
    (archive / "manifest.parquet").write_bytes(b"manifest")
    (archive / "arrays/images.npy").write_bytes(bytes(range(256)))
    split.mkdir(parents=True)
    (split / "split.csv").write_text("id,split\n0,train\n")
    return archive, split, tmp_path / "kfp/model"


def _volume_cfg(tmp_path: Path, launcher: str = "trainjob", *more: str) -> Config:
    mount = tmp_path / "mnt"
    mount.mkdir(exist_ok=True)
    return _cfg(launcher, f"train.data_mount_path={mount}", *more)


def _volume(cfg: Config) -> dict[str, str]:
    volume = k8s.pipeline_volume(cfg)
    return {"volume_claim": volume.claim, "staging_dir": volume.staging_dir, "run_id": RUN_ID}


def test_pipeline_volume_follows_the_launcher_and_is_checked_at_compile_time():
    assert k8s.pipeline_volume(None) is None and k8s.pipeline_volume(resolve("quickstart")) is None
    volume = k8s.pipeline_volume(resolve("quickstart", ["train.launcher=pytorchjob"]))
    # defaults: the claim of k8s/base/pipelines/pvc.yaml at the path the example jobs use
    pvc = yaml.safe_load((ROOT / "k8s/base/pipelines/pvc.yaml").read_text())
    assert volume == k8s.PipelineVolume(pvc["metadata"]["name"], "/workspace/data", "/workspace/data/pipeline-runs")
    custom = k8s.pipeline_volume(_cfg("trainjob", "train.data_volume_claim=gan-scratch", "train.data_mount_path=/d"))
    assert (custom.claim, custom.mount_path, custom.staging_dir) == ("gan-scratch", "/d", "/d/pipeline-runs")
    with pytest.raises(ConfigError, match="needs train.data_volume_claim"):
        k8s.pipeline_volume(_cfg("trainjob", "train.data_volume_claim="))
    with pytest.raises(ConfigError, match="train.data_mount_path must be absolute"):
        k8s.pipeline_volume(_cfg("trainjob", "train.data_mount_path=data"))
    with pytest.raises(ConfigError, match="train.data_volume_claim must be a DNS-1123 name"):
        k8s.pipeline_volume(_cfg("trainjob", "train.data_volume_claim=Bad_Claim"))


def test_stage_in_copies_whole_folders_atomically_and_reuses_a_complete_copy(tmp_path):
    archive, _, _ = _artifacts(tmp_path)
    dest = tmp_path / "mnt/pipeline-runs/run/archive"
    # an attempt that died mid-copy left a partial folder: it is replaced, never used
    partial = dest.with_name(".archive.partial")
    partial.mkdir(parents=True)
    (partial / "junk").write_text("half")
    assert k8s.stage_in(archive, dest) is True
    assert _tree(dest) == _tree(archive) and not partial.exists()
    # a retried task finds the complete copy (the job may be reading it): it is left alone
    (archive / "manifest.parquet").write_bytes(b"changed")
    assert k8s.stage_in(archive, dest) is False
    assert (dest / "manifest.parquet").read_bytes() == b"manifest"
    with pytest.raises(TrainingError, match="does not exist"):
        k8s.stage_in(tmp_path / "missing", tmp_path / "mnt/x")
    with pytest.raises(ConfigError, match="cannot name a folder"):
        k8s.staged_run(tmp_path, "../escape")


def test_train_through_volume_stages_in_trains_on_the_copies_and_stages_out(tmp_path):
    archive, split, model = _artifacts(tmp_path)
    cfg = _volume_cfg(tmp_path)
    root = tmp_path / "mnt/pipeline-runs" / RUN_ID
    calls = []

    def fake_train(archive_dir, split_dir, out_dir, cfg_, tracking):
        # what the job's pods see: complete copies on the volume, and an output folder there
        calls.append((archive_dir, split_dir, out_dir))
        assert _tree(Path(archive_dir)) == _tree(archive) and _tree(Path(split_dir)) == _tree(split)
        out = Path(out_dir)
        out.mkdir()
        (out / "generator.pt").write_bytes(b"weights")
        (out / "samples").mkdir()
        (out / "samples/step_000006.png").write_bytes(b"png")
        summary = {"steps": 6, "paths": {"generator": str(out / "generator.pt"), "elsewhere": "/x/y"}}
        (out / "train_summary.json").write_text(json.dumps(summary))
        return summary

    summary = k8s.train_through_volume(archive, split, model, cfg, TRACKING, train=fake_train, **_volume(cfg))
    assert calls == [(str(root / "archive"), str(root / "split"), str(root / "model"))]
    assert (model / "generator.pt").read_bytes() == b"weights" and (model / "samples/step_000006.png").is_file()
    assert summary["steps"] == 6
    assert summary["paths"] == {"generator": str(model / "generator.pt"), "elsewhere": "/x/y"}
    assert json.loads((model / "train_summary.json").read_text()) == summary
    assert not root.exists()  # the run's copies leave the shared volume once the model is in the artifact


def test_a_failed_job_keeps_the_staged_run_for_the_retry_and_writes_no_model(tmp_path):
    archive, split, model = _artifacts(tmp_path)
    cfg = _volume_cfg(tmp_path)
    root = tmp_path / "mnt/pipeline-runs" / RUN_ID

    def failing_train(archive_dir, split_dir, out_dir, cfg_, tracking):
        Path(out_dir).mkdir()
        (Path(out_dir) / "checkpoint.pt").write_bytes(b"step 3")
        raise TrainingError("TrainJob kubeflow/x failed: worker exited 2")

    with pytest.raises(TrainingError, match="worker exited 2"):
        k8s.train_through_volume(archive, split, model, cfg, TRACKING, train=failing_train, **_volume(cfg))
    assert (root / "model/checkpoint.pt").is_file() and (root / "archive/manifest.parquet").is_file()
    assert not model.exists()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"launcher": "local"}, "compiled for a Kubernetes launcher"),
        ({"volume_claim": "other-claim"}, "mounts the claim 'other-claim'"),
        ({"unmounted": True}, "is not mounted there"),
        ({"staging_dir": "/elsewhere/pipeline-runs"}, "not under train.data_mount_path"),
        ({"run_id": ""}, "cannot name a folder"),
    ],
)
def test_a_run_whose_config_disagrees_with_the_compiled_task_is_refused(tmp_path, change, match):
    archive, split, model = _artifacts(tmp_path)
    cfg = _volume_cfg(tmp_path)
    volume = _volume(cfg)
    if "launcher" in change:
        cfg = _volume_cfg(tmp_path, "local")
    if change.get("unmounted"):
        (tmp_path / "mnt").rmdir()
    volume.update({k: v for k, v in change.items() if k in volume})

    def never(*args):
        raise AssertionError("must not train")

    with pytest.raises(ConfigError, match=match):
        k8s.train_through_volume(archive, split, model, cfg, TRACKING, train=never, **volume)
    assert not model.exists()


class CompletingApi(FakeCustomObjectsApi):
    """Reports the job complete; the first status read plays rank 0 and writes the model on the 'volume'."""

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        if self.gets == 0:
            args = parse_args(self.created[-1][4]["spec"]["trainer"]["args"])
            out = Path(args.out)
            out.mkdir(parents=True)
            (out / "generator.pt").write_bytes(b"G")
            paths = {"generator": str(out / "generator.pt")}
            (out / "train_summary.json").write_text(json.dumps({"steps": 1000, "paths": paths}))
        return super().get_namespaced_custom_object(group, version, namespace, plural, name)


def test_the_train_component_runs_the_job_on_the_staged_copies(tmp_path, monkeypatch):
    """train_op's own code (no kfp runner): stage in, the TrainJob on the staged paths, stage out."""
    from types import SimpleNamespace

    from components.train.component import train_op

    archive, split, model = _artifacts(tmp_path)
    cfg = _volume_cfg(tmp_path)
    api = CompletingApi([[_cond("Complete")]])
    monkeypatch.setattr(k8s, "default_api", lambda: api)
    artifact = SimpleNamespace
    out = train_op.python_func(
        archive=artifact(path=str(archive)),
        split=artifact(path=str(split)),
        config_json=cfg.to_json(),
        tracking_json=json.dumps(TRACKING),
        model=artifact(path=str(model)),
        **_volume(cfg),
    )
    root = tmp_path / "mnt/pipeline-runs" / RUN_ID
    (created,) = api.created
    job = created[4]
    args = parse_args(job["spec"]["trainer"]["args"])
    assert (args.archive, args.split, args.out) == (str(root / "archive"), str(root / "split"), str(root / "model"))
    (patch,) = job["spec"]["runtimePatches"]
    pod = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "medgan-data"
    assert pod["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] == str(tmp_path / "mnt")
    assert json.loads(out)["paths"] == {"generator": str(model / "generator.pt")}
    assert (model / "generator.pt").read_bytes() == b"G" and not root.exists()


def test_the_train_component_refuses_a_kubernetes_launcher_it_was_not_compiled_for(tmp_path, capsys):
    from types import SimpleNamespace

    from components.train.component import train_op

    archive, split, model = _artifacts(tmp_path)
    artifact = SimpleNamespace
    with pytest.raises(SystemExit) as exit_info:
        train_op.python_func(
            archive=artifact(path=str(archive)),
            split=artifact(path=str(split)),
            config_json=_cfg("pytorchjob").to_json(),
            tracking_json=json.dumps(TRACKING),
            model=artifact(path=str(model)),
        )
    assert exit_info.value.code == 2
    assert "compiled for train.launcher=local" in capsys.readouterr().err
