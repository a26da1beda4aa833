"""Class-distribution drift against the registry's champion, on a real MLflow tracking server (PostgreSQL)."""

import uuid

import pytest
from mlflow.tracking import MlflowClient

from components.config import resolve
from components.rebalance.core import rebalance
from components.tracking import RunTracker
from components.validate.core import validate

CURRENT = ["normal"] * 8 + ["benign"] * 4 + ["malignant"] * 3
PATIENTS = [f"p{i % 5}" for i in range(len(CURRENT))]


@pytest.fixture
def registry(mlflow_server, tmp_path):
    """A fresh model name on the server, and a helper that makes a champion from a real rebalance run."""
    name = f"drift-{uuid.uuid4().hex[:8]}"
    cfg = resolve("tiny", [f"registry.model_name={name}", "validate.max_class_drift=0.1"])
    client = MlflowClient(mlflow_server)

    def champion_from(archive):
        tracker = RunTracker(mlflow_server, "drift-tests", f"champion-{uuid.uuid4().hex[:8]}")
        rebalance(archive, tmp_path / f"split-{tracker.run_id}", cfg, tracker)  # logs rebalance/distribution.json
        if not client.search_registered_models(f"name = '{name}'"):
            client.create_registered_model(name)
        version = client.create_model_version(name, f"runs:/{tracker.run_id}/generator", run_id=tracker.run_id)
        client.set_registered_model_alias(name, "champion", version.version)
        return version

    def tracker():
        return RunTracker(mlflow_server, "drift-tests", f"validate-{uuid.uuid4().hex[:8]}")

    return cfg, client, champion_from, tracker


def test_no_champion_skips_the_drift_check_and_says_so(registry, synthetic_archive, tmp_path):
    cfg, _, _, tracker = registry
    summary = validate(synthetic_archive(CURRENT, PATIENTS), tmp_path / "v", cfg, tracker())
    assert summary["drift"]["status"] == "skipped"
    assert "no champion version" in summary["drift"]["reason"]
    assert not any(r["batch"] == "drift" for r in summary["results"])
    untracked = validate(synthetic_archive(CURRENT, PATIENTS), tmp_path / "u", cfg)
    assert untracked["drift"] == {"status": "skipped", "reason": untracked["drift"]["reason"]}
    assert "no MLflow tracking" in untracked["drift"]["reason"]


def test_same_distribution_as_champion_passes(registry, synthetic_archive, tmp_path):
    cfg, client, champion_from, tracker = registry
    archive = synthetic_archive(CURRENT, PATIENTS)
    version = champion_from(archive)
    run = tracker()
    summary = validate(archive, tmp_path / "v", cfg, run)
    drift = summary["drift"]
    assert drift["status"] == "checked" and f"version {version.version}" in drift["reference"]
    assert drift["total_variation"] == pytest.approx(0.0)
    assert summary["n_warnings"] == 0
    [row] = [r for r in summary["results"] if r["batch"] == "drift"]
    assert row["success"] and row["severity"] == "warning" and row["column"] == "abs_diff"
    logged = client.get_run(run.run_id).data.metrics
    assert logged["validate/class_drift_tv"] == pytest.approx(0.0) and logged["validate/n_warnings"] == 0
    artifacts = {a.path for a in client.list_artifacts(run.run_id, "validation")}
    assert {"validation/data_docs", "validation/validation.json"} <= artifacts


def test_class_drift_against_champion_is_a_warning(registry, synthetic_archive, tmp_path):
    cfg, client, champion_from, tracker = registry
    # the champion saw mostly normal images; today's data has twice the share of lesions
    champion_labels = ["normal"] * 12 + ["benign"] * 2 + ["malignant"] * 1
    champion_from(synthetic_archive(champion_labels, PATIENTS, seed=1))
    run = tracker()
    summary = validate(synthetic_archive(CURRENT, PATIENTS), tmp_path / "v", cfg, run)
    assert summary["success"] and summary["n_failed_critical"] == 0
    drift = summary["drift"]
    assert drift["status"] == "checked"
    by_class = {c["label"]: c for c in drift["classes"]}
    assert by_class["normal"]["fraction"] == pytest.approx(8 / 15)
    assert by_class["normal"]["champion_fraction"] == pytest.approx(12 / 15)
    assert drift["total_variation"] == pytest.approx(4 / 15)
    [row] = [r for r in summary["results"] if r["batch"] == "drift"]
    assert not row["success"] and row["severity"] == "warning" and row["unexpected_count"] == 3  # all moved > 0.1
    assert summary["n_warnings"] >= 1
    assert client.get_run(run.run_id).data.metrics["validate/class_drift_tv"] == pytest.approx(4 / 15)
