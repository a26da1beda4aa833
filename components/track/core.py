"""The pipeline run's MLflow run: opened up front (resolved config, parameters, lineage), closed by the exit handler.

On a cluster the run key comes from the Kubeflow run: :func:`cluster_tracking` fills ``run_key`` with
``kfp-<run id>`` when the submitted tracking parameters leave it empty (a recurring run's parameters are the same for
every run it starts). :func:`finish_run` is what the cluster pipeline's exit handler does once every task has ended.
"""

from __future__ import annotations

import json
from typing import Any

from components.config import Config
from components.tracking import RUN_KEY_TAG, RunTracker, access_checked


def open_run(cfg: Config, tracking: dict[str, str], dataset_version: dict[str, Any]) -> str:
    """Create (or find) the MLflow run of this pipeline run and log the resolved config; return its run id."""
    tracker = RunTracker.of(tracking)
    tracker.log_params(cfg.flat())
    tracker.log_dict({"config": json.loads(cfg.to_json())}, "config/resolved_config.json")
    tracker.set_tags({"medgan.preset": cfg.preset, **{f"dataset.{k}": v for k, v in dataset_version.items()}})
    return tracker.run_id


KFP_RUN_KEY_PREFIX = "kfp-"
FAILED_STATES = ("FAILED", "CANCELED", "CANCELLED", "SYSTEM_ERROR")


def cluster_tracking(tracking: dict[str, str], run_id: str) -> dict[str, str]:
    """``tracking`` with the run key of Kubeflow run ``run_id`` when it names none."""
    return tracking if tracking.get("run_key") else {**tracking, "run_key": KFP_RUN_KEY_PREFIX + run_id}


def finish_run(tracking: dict[str, str], state: str, message: str = "") -> dict[str, Any]:
    """After every task of a pipeline run: end a failed run's MLflow run FAILED and refuse its half-made challenger.

    components.runstate.close_run does both; a succeeded run is left as the gate closed it.

    Returns what was done, for the task's output. A run that never got an MLflow run (the data step failed) has
    nothing to close.
    """
    from components.runstate import close_run

    if state.upper() not in FAILED_STATES:
        return {"state": state, "action": "none"}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking["tracking_uri"])
    with access_checked(tracking["tracking_uri"]):
        experiment = client.get_experiment_by_name(tracking["experiment"])
        found = (
            client.search_runs([experiment.experiment_id], f"tags.`{RUN_KEY_TAG}` = '{tracking['run_key']}'")
            if experiment is not None
            else []
        )
        if not found:
            return {"state": state, "action": "none", "reason": "no MLflow run was opened"}
        run = found[0]
        if run.info.status != "RUNNING":
            return {"state": state, "action": "none", "reason": f"the MLflow run had ended ({run.info.status})"}
        reason = f"pipeline run {state.lower()}" + (f": {message}" if message else "")
        records = close_run(client, run.info.run_id, "FAILED", reason[:1000], via="pipeline exit handler")
    return {"state": state, "action": "closed FAILED", "versions": [r["version"] for r in records]}
