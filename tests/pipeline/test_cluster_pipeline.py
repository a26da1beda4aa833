"""The compiled cluster pipeline (what `medgan compile` / `submit` / `schedule` send to Kubeflow Pipelines).

Checked in the compiled YAML, as a KFP backend reads it: per-task resources, the train task's accelerator, retries
with backoff, caching per task, the exit handler, the data step and its lineage wiring, Secrets as environment,
volumes, labels and the security context. No KFP backend runs it here.
"""

from __future__ import annotations

import pytest
import yaml

from components.config import resolve
from components.errors import ConfigError
from pipeline.dag import compile_pipeline

SIDE_EFFECTS = ("run-context-op", "pull-data-op", "open-run-op", "register-op", "apply-gate-op", "close-run-op")
PURE = ("ingest-op", "validate-op", "rebalance-op", "train-op", "evaluate-op")
RETRIED = ("run-context-op", "pull-data-op", "open-run-op", "train-op", "evaluate-op", "close-run-op")


def _compile(tmp_path, preset="ct-128", *overrides, dataset_version=None):
    out = tmp_path / "pipeline.yaml"
    compile_pipeline(out, resolve(preset, list(overrides)), dataset_version)
    spec, platform = yaml.safe_load_all(out.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _all_tasks(spec):
    """Every task of the package, by task name (branches and the exit handler's body included)."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    return {name: t for name, t in tasks.items() if "componentRef" in t and not name.startswith(("condition", "exit"))}


def _executor(spec, task):
    return spec["components"][task["componentRef"]["name"]]["executorLabel"]


def _base(name):
    return name.rsplit("-", 1)[0] if name[-1].isdigit() else name


def test_every_task_has_cpu_and_memory_requests_and_limits_and_the_heavy_ones_more(tmp_path):
    spec, _ = _compile(tmp_path)
    executors = spec["deploymentSpec"]["executors"]
    for name, task in _all_tasks(spec).items():
        res = executors[_executor(spec, task)]["container"]["resources"]
        for key in ("resourceCpuRequest", "resourceMemoryRequest", "resourceCpuLimit", "resourceMemoryLimit"):
            assert res.get(key), f"{name}: no {key}"
        heavy = _base(name) in ("train-op", "evaluate-op")  # ct-128 trains in the task (train.launcher=local)
        assert res["resourceMemoryRequest"] == ("16Gi" if heavy else "4Gi"), name


def test_the_train_task_gets_the_presets_gpus_on_gpu_nodes(tmp_path):
    spec, platform = _compile(tmp_path, "ct-128", "train.nproc=2")
    executors = spec["deploymentSpec"]["executors"]
    train = executors["exec-train-op"]["container"]["resources"]["accelerator"]
    assert (train["resourceType"], train["resourceCount"]) == ("nvidia.com/gpu", "2")
    assert platform["exec-train-op"]["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert platform["exec-train-op"]["tolerations"] == [
        {"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}
    ]
    (shm,) = platform["exec-train-op"]["emptyDirMounts"]
    assert (shm["mountPath"], shm["medium"], shm["sizeLimit"]) == ("/dev/shm", "Memory", "8Gi")
    others = [e for name, e in executors.items() if name != "exec-train-op"]
    assert not any("accelerator" in e["container"].get("resources", {}) for e in others)
    # a Kubernetes launcher trains in the job's pods: the train task itself only waits, on a CPU node
    spec, platform = _compile(tmp_path, "ct-128", "train.launcher=trainjob")
    res = spec["deploymentSpec"]["executors"]["exec-train-op"]["container"]["resources"]
    assert "accelerator" not in res and res["resourceMemoryRequest"] == "4Gi"
    assert platform["exec-train-op"]["pvcMount"][0]["mountPath"] == "/workspace/data"
    # a CPU/auto preset asks for no GPU; evaluate gets some when configured
    spec, platform = _compile(tmp_path, "quickstart", "kubernetes.evaluate_gpus=1")
    executors = spec["deploymentSpec"]["executors"]
    assert "accelerator" not in executors["exec-train-op"]["container"]["resources"]
    assert executors["exec-evaluate-op"]["container"]["resources"]["accelerator"]["resourceCount"] == "1"


def test_retries_with_backoff_where_failures_are_transient_and_caching_per_task(tmp_path):
    spec, _ = _compile(tmp_path)
    tasks = _all_tasks(spec)
    assert {_base(n) for n in tasks} == set(SIDE_EFFECTS) | set(PURE)
    for name, task in tasks.items():
        base = _base(name)
        retry = task.get("retryPolicy")
        if base in RETRIED:
            assert retry == {
                "maxRetryCount": 2,
                "backoffDuration": "60s",
                "backoffFactor": 2.0,
                "backoffMaxDuration": "1800s",
            }, name
        else:
            assert retry is None, f"{name}: a registry write must not be retried"
        assert task["cachingOptions"].get("enableCache", False) is (base in PURE), name
    spec, _ = _compile(tmp_path, "ct-128", "kubernetes.retries=0")
    assert not any("retryPolicy" in t for t in _all_tasks(spec).values())


def test_an_exit_handler_closes_the_run_whatever_happened(tmp_path):
    spec, platform = _compile(tmp_path)
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"close-run-op", "exit-handler-1"}
    closing = root["close-run-op"]
    assert closing["triggerPolicy"] == {"strategy": "ALL_UPSTREAM_TASKS_COMPLETED"}
    assert closing["dependentTasks"] == ["exit-handler-1"]
    assert "taskFinalStatus" in closing["inputs"]["parameters"]["status"]
    inputs = spec["components"]["comp-close-run-op"]["inputDefinitions"]["parameters"]
    assert inputs["status"]["parameterType"] == "TASK_FINAL_STATUS"
    # it removes the pulled copy from the shared volume, and logs to MLflow with the client's credentials
    assert platform["exec-close-run-op"]["pvcMount"][0]["mountPath"] == "/workspace/data"
    assert platform["exec-close-run-op"]["secretAsEnv"][0]["secretName"] == "medgan-mlflow-client"
    # the gate is still a visible branch inside the handled body
    (branches,) = [c for name, c in spec["components"].items() if name.startswith("comp-condition-branches-")]
    conditions = [t["triggerPolicy"]["condition"] for t in branches["dag"]["tasks"].values()]
    assert any("== 'promote'" in c for c in conditions)


def test_the_data_step_feeds_ingest_and_the_lineage_every_stage_records(tmp_path):
    spec, platform = _compile(tmp_path)
    tasks = _all_tasks(spec)
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"dataset_version_json", "dvc_remote", "dataset_repo", "dataset_rev", "dataset_path"} <= set(params)
    assert "data_dir" not in params  # nothing on a cluster holds a local folder
    ingest = tasks["ingest-op"]["inputs"]["parameters"]
    assert ingest["data_dir"]["taskOutputParameter"] == {
        "producerTask": "pull-data-op",
        "outputParameterKey": "data_dir",
    }
    for name in ("ingest-op", "open-run-op"):
        lineage = tasks[name]["inputs"]["parameters"]["dataset_version_json"]["taskOutputParameter"]
        assert lineage == {"producerTask": "pull-data-op", "outputParameterKey": "dataset_version_json"}, name
    # the run key comes from the Kubeflow run (run-context), for every stage
    for name, task in tasks.items():
        tracking = task["inputs"]["parameters"].get("tracking_json")
        if tracking and _base(name) not in ("run-context-op", "close-run-op"):
            # a task inside a gate branch gets it through the branch's inputs
            source = tracking.get("taskOutputParameter", {}).get(
                "producerTask", tracking.get("componentInputParameter")
            )
            assert "run-context-op" in source, name
    pull = tasks["pull-data-op"]["inputs"]["parameters"]
    assert pull["staging_dir"]["runtimeValue"]["constant"] == "/workspace/data/pipeline-runs"
    assert pull["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    for executor in ("exec-pull-data-op", "exec-ingest-op"):
        (pvc,) = platform[executor]["pvcMount"]
        assert pvc["mountPath"] == "/workspace/data" and pvc["constant"] == "medgan-data"


def test_secrets_labels_and_security_context_of_the_task_pods(tmp_path):
    spec, platform = _compile(tmp_path)
    tasks = _all_tasks(spec)
    text = yaml.safe_dump(platform)
    assert "CHANGE_ME" not in text and "password" not in text.lower().replace("mlflow_tracking_password", "")
    for name, task in tasks.items():
        executor = platform[_executor(spec, task)]
        assert executor["securityContext"] == {"runAsUser": "10001", "runAsGroup": "10001", "runAsNonRoot": True}
        secrets = {s["secretName"]: s for s in executor.get("secretAsEnv", [])}
        labels = executor.get("podMetadata", {}).get("labels", {})
        if _base(name) in ("run-context-op", "pull-data-op"):
            assert "medgan-mlflow-client" not in secrets and not labels, name
            continue
        keys = {k["envVar"] for k in secrets["medgan-mlflow-client"]["keyToEnv"]}
        assert keys == {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}, name
        assert labels == {"medgan-ops/mlflow-client": "true"}, name  # what the tracking server's policy admits
    ingest = {s["secretName"]: s for s in platform["exec-ingest-op"]["secretAsEnv"]}
    assert ingest["medgan-patient-salt"]["keyToEnv"] == [
        {"envVar": "MEDGAN_PATIENT_SALT", "secretKey": "MEDGAN_PATIENT_SALT"}
    ]
    for executor in ("exec-pull-data-op", "exec-evaluate-op"):
        dvc = {s["secretName"]: s for s in platform[executor]["secretAsEnv"]}["medgan-dvc-remote"]
        assert dvc["optional"] is True and {k["envVar"] for k in dvc["keyToEnv"]} >= {"AWS_ACCESS_KEY_ID"}
    # a config without the Secrets compiles without them
    spec, platform = _compile(tmp_path, "ct-128", "kubernetes.mlflow_secret=", "kubernetes.salt_secret=")
    assert "medgan-mlflow-client" not in yaml.safe_dump(platform)
    assert "medgan-patient-salt" not in yaml.safe_dump(platform)


def test_a_cluster_pipeline_without_a_shared_volume_is_not_compiled(tmp_path):
    with pytest.raises(ConfigError, match="needs train.data_volume_claim"):
        compile_pipeline(tmp_path / "p.yaml", resolve("ct-128", ["train.data_volume_claim="]))
    with pytest.raises(ConfigError, match="kubernetes.heavy_memory"):
        resolve("ct-128", ["kubernetes.heavy_memory=a lot"])
    assert not (tmp_path / "p.yaml").exists()


LINEAGE = {"tracked": True, "md5": "0123456789abcdef0123456789abcdef.dir", "rev": "abc"}


def _cache_keys(spec):
    return {_base(n): t["cachingOptions"].get("cacheKey") for n, t in _all_tasks(spec).items()}


def test_a_pinned_dataset_gives_the_pure_stages_a_cache_key_of_config_data_and_image(tmp_path):
    """A rerun of unchanged data and config (same image) takes the pure stages from KFP's cache across runs."""
    keys = _cache_keys(_compile(tmp_path, dataset_version=LINEAGE)[0])
    assert {k for k, v in keys.items() if v} == set(PURE)
    assert len(set(keys[k] for k in PURE)) == len(PURE) and all(keys[k].endswith(k.removesuffix("-op")) for k in PURE)
    assert _cache_keys(_compile(tmp_path, dataset_version=LINEAGE)[0]) == keys  # deterministic
    changed_data = _cache_keys(_compile(tmp_path, dataset_version={**LINEAGE, "md5": "f" * 32 + ".dir"})[0])
    changed_config = _cache_keys(_compile(tmp_path, "ct-128", "train.steps=100", dataset_version=LINEAGE)[0])
    for other in (changed_data, changed_config):
        assert all(other[k] != keys[k] for k in PURE)
    # the git revision alone does not change the data: same hash, same key
    assert _cache_keys(_compile(tmp_path, dataset_version={**LINEAGE, "rev": "def"})[0]) == keys
    # not pinned (a recurring run following a repository): KFP's own key, every input, so no cross-run hits
    assert not any(_cache_keys(_compile(tmp_path)[0]).values())
