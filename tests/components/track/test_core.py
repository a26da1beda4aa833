"""The cluster pipeline's run key and exit handler, against a real MLflow store (SQLite)."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from components.track.core import cluster_tracking, finish_run
from components.tracking import RunTracker


def test_a_kubeflow_run_gets_its_own_run_key_unless_one_was_submitted():
    tracking = {"tracking_uri": "http://mlflow:5000", "experiment": "medgan", "run_key": ""}
    assert cluster_tracking(tracking, "7f3a")["run_key"] == "kfp-7f3a"
    assert cluster_tracking({**tracking, "run_key": "manual-1"}, "7f3a")["run_key"] == "manual-1"


@pytest.fixture
def tracking(tmp_path):
    return {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "medgan", "run_key": "kfp-run-1"}


def test_the_exit_handler_leaves_a_succeeded_or_unopened_run_alone(tracking):
    assert finish_run(tracking, "SUCCEEDED")["action"] == "none"
    assert finish_run(tracking, "FAILED")["reason"] == "no MLflow run was opened"  # the data step failed first


def test_the_exit_handler_ends_a_failed_runs_mlflow_run_failed(tracking):
    pytest.importorskip("components.runstate", reason="closing runs lives in components/runstate.py")
    tracker = RunTracker.of(tracking)
    done = finish_run(tracking, "FAILED", "train-op: the job failed")
    assert done["action"] == "closed FAILED" and done["versions"] == []
    run = MlflowClient(tracking["tracking_uri"]).get_run(tracker.run_id)
    assert run.info.status == "FAILED"
    closed = run.data.tags["medgan.closed"]
    assert "pipeline exit handler" in closed and "the job failed" in closed
    # a second pass (a retried exit handler) finds it ended
    assert finish_run(tracking, "FAILED")["action"] == "none"


def test_the_exit_handler_component_removes_the_pulled_copy_and_keeps_checkpoints(tracking, tmp_path):
    from kfp import dsl

    from components.track.component import close_run_op

    root = tmp_path / "volume/pipeline-runs/run-1"
    (root / "dicom/sub").mkdir(parents=True)
    (root / "dicom.lineage.yaml").write_text("md5: x\n")
    status = dsl.PipelineTaskFinalStatus("SUCCEEDED", "runs/run-1", "medgan-ops", None, None)
    out = close_run_op.python_func(
        tracking_json=json.dumps(tracking), run_id="run-1", staging_dir=str(root.parent), status=status
    )
    assert json.loads(out)["action"] == "none" and not root.exists()
    # a failed run's folder keeps what a retry needs (the training job's checkpoints)
    (root / "dicom").mkdir(parents=True)
    (root / "model").mkdir()
    failed = dsl.PipelineTaskFinalStatus("FAILED", "runs/run-1", "medgan-ops", 1, "train-op failed")
    args = {"tracking_json": json.dumps(tracking), "run_id": "run-1", "staging_dir": str(root.parent)}
    close_run_op.python_func(**args, status=failed)
    assert sorted(p.name for p in root.iterdir()) == ["model"]
