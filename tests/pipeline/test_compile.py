import pytest
import yaml
from kfp import compiler, dsl, kubernetes, local

from components.config import resolve
from components.errors import ConfigError
from pipeline.cli import main
from pipeline.dag import build_pipeline, compile_pipeline


def _stage_tasks(spec):
    """The stage tasks of a compiled package: at the root (local build) or inside the exit handler (cluster)."""
    handler = spec["components"].get("comp-exit-handler-1")
    return (handler or spec["root"])["dag"]["tasks"]


def test_pipeline_compiles_with_gate_branch_and_project_image(tmp_path, monkeypatch):
    out = tmp_path / "pipeline.yaml"
    assert main(["compile", "--out", str(out)]) == 0
    spec = next(yaml.safe_load_all(out.read_text()))
    assert spec["pipelineInfo"]["name"] == "medgan-ops"
    tasks = _stage_tasks(spec)
    for name in ("open-run-op", "ingest-op", "validate-op", "rebalance-op", "train-op", "evaluate-op", "register-op"):
        assert name in tasks, sorted(tasks)
    # the gate is a visible branch: dsl.If (promote) / dsl.Else (reject) on the register step's decision
    (branches_name,) = [c for c in spec["components"] if c.startswith("comp-condition-branches-")]
    branches = spec["components"][branches_name]["dag"]["tasks"]
    conditions = [t["triggerPolicy"]["condition"] for t in branches.values()]
    assert len(conditions) == 2
    assert any("== 'promote'" in c for c in conditions) and any("!(" in c for c in conditions), conditions
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"ghcr.io/medgan-ops/medgan-ops:0.1.0"}
    # the component code must not pip-install anything at run time: the image carries it
    commands = " ".join(
        " ".join(e["container"].get("command", [])) for e in spec["deploymentSpec"]["executors"].values()
    )
    assert "pip install" not in commands


# ------------------------------------------------------------------ train on Kubernetes: the compiled train task


def _compiled(tmp_path, cfg):
    """The local build of the pipeline for ``cfg`` (what ``medgan run`` executes), compiled."""
    out = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(build_pipeline(cfg), str(out))
    docs = list(yaml.safe_load_all(out.read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else None)


def test_local_launcher_compiles_without_platform_config(tmp_path):
    for cfg in (None, resolve("quickstart")):
        spec, platform = _compiled(tmp_path, cfg)
        assert platform is None
        params = spec["root"]["dag"]["tasks"]["train-op"]["inputs"]["parameters"]
        assert set(params) == {"config_json", "tracking_json"}  # volume_claim/staging_dir/run_id keep their ""


@pytest.mark.parametrize(
    ("overrides", "claim", "mount"),
    [
        (["train.launcher=trainjob"], "medgan-data", "/workspace/data"),  # defaults: k8s/base/pipelines/pvc.yaml
        (
            ["train.launcher=pytorchjob", "train.data_volume_claim=gan-scratch", "train.data_mount_path=/mnt/gan"],
            "gan-scratch",
            "/mnt/gan",
        ),
    ],
)
def test_kubernetes_launcher_mounts_the_shared_claim_on_the_train_task_only(tmp_path, overrides, claim, mount):
    spec, platform = _compiled(tmp_path, resolve("ct-128", overrides))
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    train_exec = spec["components"]["comp-train-op"]["executorLabel"]
    assert set(executors) == {train_exec}, "only the train task mounts the volume"
    (pvc,) = executors[train_exec]["pvcMount"]
    assert pvc["mountPath"] == mount and pvc["pvcNameParameter"]["runtimeValue"]["constant"] == claim
    # the task is told the claim it mounts, the per-run staging folder under the mount, and the kfp run's UUID
    params = spec["root"]["dag"]["tasks"]["train-op"]["inputs"]["parameters"]
    constants = {k: v["runtimeValue"]["constant"] for k, v in params.items() if "runtimeValue" in v}
    assert constants == {
        "volume_claim": claim,
        "staging_dir": f"{mount}/pipeline-runs",
        "run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER,
    }
    assert params["config_json"] == {"componentInputParameter": "config_json"}
    # the rest of the DAG is the local one: same tasks, same wiring into evaluate and register
    local_spec, _ = _compiled(tmp_path, None)
    assert spec["root"]["dag"]["tasks"].keys() == local_spec["root"]["dag"]["tasks"].keys()
    for task in ("evaluate-op", "register-op"):
        assert spec["root"]["dag"]["tasks"][task] == local_spec["root"]["dag"]["tasks"][task]


def test_a_kubernetes_pipeline_that_could_not_work_is_not_compiled(tmp_path):
    with pytest.raises(ConfigError, match="needs train.data_volume_claim"):
        compile_pipeline(
            tmp_path / "p.yaml", resolve("ct-128", ["train.launcher=trainjob", "train.data_volume_claim="])
        )
    with pytest.raises(ConfigError, match="train.device=cpu"):
        compile_pipeline(tmp_path / "p.yaml", resolve("tiny", ["train.launcher=trainjob", "train.device=cpu"]))
    assert not (tmp_path / "p.yaml").exists()


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def _write_marker(text: str, marker: dsl.Output[dsl.Artifact]):
    with open(marker.path, "w") as fh:
        fh.write(text)


@dsl.pipeline(name="pvc-on-local-runner")
def _pipeline_with_a_pvc_mount(text: str = "ran"):
    task = _write_marker(text=text)
    kubernetes.mount_pvc(task, pvc_name="medgan-data", mount_path="/workspace/data")


def test_the_local_runner_ignores_the_kubernetes_platform_config(tmp_path, monkeypatch):
    """kfp.local runs a task that carries a kfp-kubernetes PVC mount as a plain task (nothing is mounted)."""
    assert _pipeline_with_a_pvc_mount.platform_spec.platforms["kubernetes"]  # the mount is really in the spec
    monkeypatch.setattr(local.config.LocalExecutionConfig, "instance", None)  # restored: no local mode leaks out
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    _pipeline_with_a_pvc_mount(text="ran")
    (marker,) = [p for p in (tmp_path / "kfp").rglob("marker") if p.is_file()]
    assert marker.read_text() == "ran"
