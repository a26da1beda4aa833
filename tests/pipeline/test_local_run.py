"""The whole DAG on the kfp local runner: real components, real SQLite MLflow, tiny preset."""

import json
import re

import pytest
from mlflow.tracking import MlflowClient

from components.config import resolve
from components.errors import MedganError
from pipeline.local import run_local


def test_two_local_runs_register_two_versions_and_gate_decides(phantom_dir, tiny_project):
    cfg = resolve("tiny")
    project, first = tiny_project  # the shared first run (tests/pipeline/conftest.py)
    assert first.report.is_file()
    html = first.report.read_text()
    # promoted; green only when no sanity check failed (the tiny model's samples are off the manifold: amber)
    assert re.search(r'<p class="decision (good|warn)">promoted', html) and "<td>fid (gate)</td>" in html
    client = MlflowClient(first.tracking_uri)
    name = cfg.registry.model_name
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "1"

    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    run = client.search_runs([exp.experiment_id], f"tags.`medgan.run_key` = '{first.run_key}'")[0]
    metrics = run.data.metrics
    for key in ("train/loss_g", "train/loss_d", "eval/fid", "eval/kid", "eval/dice_real", "eval/topup_n"):
        assert key in metrics, sorted(metrics)
    # the default strategy (gan-topup) built the top-up; with no pairs kept, its Dice arm is skipped, and said so
    if metrics["eval/topup_n"] > 0:
        assert "eval/dice_real_synth" in metrics
    else:
        assert "eval/dice_real_synth" not in metrics and "Arm real+synthetic was not trained" in html
    assert run.data.params["train.steps"] == str(cfg.train.steps)
    # the logged model belongs to the pipeline's experiment (not "Default", whose artifacts go to ./mlruns)
    logged = client.search_logged_models(experiment_ids=[exp.experiment_id])
    assert [m.source_run_id for m in logged] == [run.info.run_id]
    assert len(client.get_metric_history(run.info.run_id, "train/loss_d")) >= 2  # per-step curve, not one value
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"samples", "report", "validation", "config", "gate"} <= artifacts, artifacts
    assert run.info.status == "FINISHED"

    second = run_local(phantom_dir, cfg, project_dir=project)
    gate = second.decision
    assert str(gate["challenger_version"]) == "2" and str(gate["champion_version"]) == "1"
    assert gate["action"] in ("promoted", "rejected") and "fid" in gate["reason"]
    v2 = client.get_model_version(name, "2")
    assert v2.tags["gate.decision"] == gate["action"]
    expected_champion = "2" if gate["action"] == "promoted" else "1"
    assert str(client.get_model_version_by_alias(name, "champion").version) == expected_champion
    assert json.loads((second.run_dir / "config.json").read_text())["preset"] == "tiny"
    # with a champion in the registry, validation compared the class fractions with its data (same data: no drift)
    run2 = client.search_runs([exp.experiment_id], f"tags.`medgan.run_key` = '{second.run_key}'")[0]
    assert client.get_run(run2.info.run_id).data.metrics["validate/class_drift_tv"] == 0.0
    assert "validation/split" in {a.path for a in client.list_artifacts(run2.info.run_id, "validation")}


def test_critical_validation_failure_stops_the_pipeline_with_its_summary(phantom_dir, tmp_path):
    cfg = resolve("tiny", ["validate.min_images_per_class=1000"])
    with pytest.raises(
        MedganError,
        match=r"(?s)pipeline stopped at validate: data validation failed.*\[classes\] class normal has \d+ images, "
        r"class benign has \d+ images, class malignant has \d+ images, fewer than validate.min_images_per_class=1000",
    ):
        run_local(phantom_dir, cfg, project_dir=tmp_path)


def test_too_few_patients_of_a_class_in_a_split_stops_the_pipeline_when_critical(phantom_dir, tmp_path):
    # The tiny phantom's four malignant patients split 2/1/1: one in val and one in test, below the default two.
    cfg = resolve("tiny", ["validate.patients_per_class_severity=critical"])
    with pytest.raises(MedganError) as info:
        run_local(phantom_dir, cfg, project_dir=tmp_path)
    message = str(info.value)
    assert message.startswith("pipeline stopped at rebalance: split validation failed: 1 critical expectation")
    assert "malignant: 1 patient in val, below validate.min_patients_per_class=2" in message
    assert "set validate.patients_per_class_severity=warning to only report it" in message
    assert "Traceback" not in message
