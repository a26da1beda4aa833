import yaml

from pipeline.cli import main


def test_pipeline_compiles_with_gate_branch_and_project_image(tmp_path, monkeypatch):
    out = tmp_path / "pipeline.yaml"
    assert main(["compile", "--out", str(out)]) == 0
    spec = yaml.safe_load(out.read_text())
    assert spec["pipelineInfo"]["name"] == "medgan-ops"
    tasks = spec["root"]["dag"]["tasks"]
    for name in ("open-run-op", "ingest-op", "validate-op", "rebalance-op", "train-op", "evaluate-op",
                 "register-op"):
        assert name in tasks, sorted(tasks)
    conditions = [t for t in tasks.values() if "triggerPolicy" in t and "condition" in t["triggerPolicy"]]
    assert len(conditions) == 2  # the If branch (promote) and the Else branch (reject)
    assert any("promote" in t["triggerPolicy"]["condition"] for t in conditions)
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"ghcr.io/medgan-ops/medgan-ops:0.1.0"}
    # the component code must not pip-install anything at run time: the image carries it
    commands = " ".join(" ".join(e["container"].get("command", [])) for e in spec["deploymentSpec"]["executors"].values())
    assert "pip install" not in commands
