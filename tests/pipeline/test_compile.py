import yaml

from pipeline.cli import main


def test_pipeline_compiles_with_gate_branch_and_project_image(tmp_path, monkeypatch):
    out = tmp_path / "pipeline.yaml"
    assert main(["compile", "--out", str(out)]) == 0
    spec = yaml.safe_load(out.read_text())
    assert spec["pipelineInfo"]["name"] == "medgan-ops"
    tasks = spec["root"]["dag"]["tasks"]
    for name in ("open-run-op", "ingest-op", "validate-op", "rebalance-op", "train-op", "evaluate-op", "register-op"):
        assert name in tasks, sorted(tasks)
    # the gate is a visible branch: dsl.If (promote) / dsl.Else (reject) on the register step's decision
    branches = spec["components"]["comp-condition-branches-1"]["dag"]["tasks"]
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
