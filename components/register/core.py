"""Model registration in MLflow and the champion/challenger promotion gate.

``register`` logs the EMA generator the evaluate stage scored (its ``generator.pt``, chosen by
``eval.select_snapshot``; the training's final model when evaluate left none) as an MLflow pyfunc model in the
pipeline run, registers a new version tagged with its data lineage (DVC rev + md5 of the dataset, dataset content
hash, git commit, pipeline run key), its training step, its metrics and the feature spaces behind them (weights
fingerprints, sample counts), points the ``challenger`` alias at it and proposes a decision against the current
``champion`` (the DAG branches on it with ``dsl.If``). Registration is idempotent per pipeline run: a retried
register finds the version its run already registered (tag ``pipeline.run_key``) instead of making another.

``apply_decision`` (the gate step) takes the binding decision under the model's promotion lock with a
compare-and-set on ``champion`` (:mod:`components.register.promotion`), writes the audit record, finalises the
review report and, being the last step, marks the pipeline's MLflow run FINISHED.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import Config, GateMetric
from components.errors import RegistryError
from components.evaluate.report import write_report
from components.evaluate.spaces import extractor_tags
from components.promotion_lock import lock_target
from components.register.gate import comparability, gate_decision
from components.register.promotion import decide_and_promote
from components.registry import (
    CHALLENGER,
    METRIC_TAG,
    RUN_KEY_TAG,
    actor,
    champion_version,
    utc_now,
    version_for_run,
    version_metrics,
)
from components.tracking import RunTracker


def git_commit(repo_dir: str | os.PathLike[str] | None = None) -> str:
    """Commit of the code that ran (``MEDGAN_GIT_COMMIT`` in images built without .git), or 'unknown'."""
    if os.environ.get("MEDGAN_GIT_COMMIT"):
        return os.environ["MEDGAN_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=repo_dir or Path(__file__).parent,
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo_dir or Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def register(
    model_dir: str | os.PathLike[str],
    eval_dir: str | os.PathLike[str],
    cfg: Config,
    tracking: dict[str, str],
    dataset_version: dict[str, Any],
) -> dict[str, Any]:
    """Log + register the generator (or find this run's version), set ``challenger``, propose the gate decision.

    Nothing is promoted here: :func:`apply_decision` decides under the promotion lock.

    The weights are ``eval_dir/generator.pt`` (those the metrics describe) when evaluate wrote it, else
    ``model_dir/generator.pt``.
    """
    metrics = json.loads((Path(eval_dir) / "metrics.json").read_text())
    tracker = RunTracker.of(tracking)
    client = tracker.client
    name = cfg.registry.model_name
    existing = version_for_run(client, name, tracking["run_key"])
    if existing is None:
        model_uri = log_generator(model_dir, eval_dir, cfg, tracker)
        tags = {
            "dataset.dvc_rev": dataset_version.get("rev", "unknown"),
            "dataset.dvc_md5": dataset_version.get("md5", "unknown"),
            "dataset.content_hash": dataset_version.get("dataset_hash", "unknown"),
            "git_commit": git_commit(),
            RUN_KEY_TAG: tracking["run_key"],
            "config.preset": cfg.preset,
            "model.selected_step": _selected_step(metrics),
            # which feature space (weights fingerprint, sample counts) produced each space's metrics
            **extractor_tags(metrics, "extractor."),
            # full precision: the gate of later runs compares against these values
            **{f"{METRIC_TAG}{k}": repr(float(v)) for k, v in metrics.items() if isinstance(v, (int, float))},
        }
        version = register_version(tracking["tracking_uri"], name, model_uri, tags)
    else:
        version = existing.version
    version = _wait_ready(client, name, version)
    client.set_registered_model_alias(name, CHALLENGER, version.version)

    champion = champion_version(client, name)
    champion_metrics = version_metrics(champion) if champion is not None else None
    promote, reason = gate_decision(
        metrics,
        champion_metrics,
        cfg.registry.gate,
        cfg.registry.floor,
        str(champion.version) if champion is not None else None,
        comparability(version.tags, champion.tags) if champion is not None else None,
    )
    decision = {
        "decision": "promote" if promote else "reject",
        "reason": reason,
        "model_name": name,
        "challenger_version": str(version.version),
        "champion_version": str(champion.version) if champion is not None else None,
        "challenger_metrics": {k: metrics[k] for k in sorted(metrics)},
        "champion_metrics": champion_metrics,
        "rules": [asdict(r) for r in cfg.registry.gate],
        "floor": [asdict(r) for r in cfg.registry.floor],
        "lock_uri": cfg.registry.lock_uri,
        "lock_timeout_s": cfg.registry.lock_timeout_s,
        "reused_version": existing is not None,
        "decided_at": utc_now(),
    }
    tracker.set_tags({"registry.model": name, "registry.version": version.version})
    tracker.log_dict(decision, "gate/decision.json")
    return decision


def log_generator(
    model_dir: str | os.PathLike[str], eval_dir: str | os.PathLike[str], cfg: Config, tracker: Any
) -> str:
    """Log the generator as a pyfunc model in the pipeline's run (left RUNNING); return the model URI."""
    import mlflow
    from mlflow.models import Model

    from components.register.pyfunc import GeneratorModel, signature

    mlflow.set_tracking_uri(tracker.tracking_uri)
    # Without an active run MLflow 3 files a logged model under the process's current experiment, by default
    # "Default" (0), whose artifacts live in ./mlruns of whatever folder the step runs in: name the run's own.
    mlflow.set_experiment(experiment_id=tracker.experiment_id)
    model_dir = Path(model_dir)
    weights = Path(eval_dir) / "generator.pt"
    if not weights.is_file():
        weights = model_dir / "generator.pt"
    # Model.log with run_id, not inside `with mlflow.start_run()`: leaving that block would end the pipeline's run
    # as FINISHED here, before the gate has decided; the gate step ends it.
    info = Model.log(
        artifact_path=None,  # MLflow 3 names the model instead
        name="generator",
        flavor=mlflow.pyfunc,
        run_id=tracker.run_id,
        python_model=GeneratorModel(),
        artifacts={"generator": str(weights), "training_options": str(model_dir / "training_options.json")},
        code_paths=[str(Path(__file__).resolve().parents[1])],
        signature=signature(cfg.data.image_size),
        input_example=pd.DataFrame({"class": [cfg.data.classes[-1]], "n": [2], "seed": [0]}),
        pip_requirements=requirements(),
    )
    return info.model_uri


def requirements() -> list[str]:
    """The logged model's pip requirements, pinned to the versions running here, installable from PyPI.

    A local version label (``torch 2.13.0+cpu``: PEP 440's ``+...``, set by the PyTorch wheel index) names a build
    PyPI does not serve, so it is dropped: ``torch==2.13.0`` installs the same release on a fresh machine.
    """
    return [f"{p}=={re.sub(r'[+].*$', '', _version(p))}" for p in ("torch", "numpy", "pandas", "mlflow")]


def register_version(tracking_uri: str, name: str, model_uri: str, tags: dict[str, str]) -> str:
    """Register ``model_uri`` as a new version of ``name`` (created if needed) with ``tags``; return its number."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    # register_model links the version to the logged model (MLflow 3 model ids) and creates the name if needed
    return str(mlflow.register_model(model_uri, name, tags=tags, await_registration_for=0).version)


def apply_decision(
    decision: dict[str, Any],
    eval_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    tracking: dict[str, str],
) -> dict[str, Any]:
    """The gate step: decide under the promotion lock, move ``champion`` when promoting, audit, finalise the report.

    The binding decision is taken against the champion found under the lock (the register step's proposal may be
    stale by then: that is recorded as ``re-taken``); a retried gate step returns the version's existing record.
    The pipeline's MLflow run ends FINISHED here, its last step.
    """
    tracker = RunTracker.of(tracking)
    client = tracker.client
    name, version = decision["model_name"], str(decision["challenger_version"])
    rules = [GateMetric(**r) for r in decision["rules"]]
    floor = [GateMetric(**r) for r in decision.get("floor", [])]
    context = {
        "actor": actor(),
        "via": "pipeline gate step",
        "pipeline_run_key": tracking["run_key"],
        "mlflow_run_id": tracker.run_id,
        "challenger_version": version,
    }
    record = decide_and_promote(
        client,
        name,
        version,
        decision["challenger_metrics"],
        rules,
        floor,
        lock_target(tracking["tracking_uri"], name, decision.get("lock_uri", "")),
        context,
        timeout_s=float(decision.get("lock_timeout_s", 300.0)),
        proposed_against=str(decision.get("champion_version")),
    )
    audit = {**record, "proposed": decision["decision"], "proposed_reason": decision["reason"]}
    tracker.log_dict(audit, "gate/audit.json")
    tracker.set_tags({"gate.decision": audit["action"]})
    tracker.log_metrics({"gate/promoted": 1.0 if audit["action"] == "promoted" else 0.0})

    report = json.loads((Path(eval_dir) / "report.json").read_text())
    report["gate"] = audit
    out = Path(out_dir)
    html = write_report(report, out)
    tracker.log_artifact(out / "report.html", "report")
    tracker.close("FINISHED")
    return {"audit": audit, "report": str(html)}


def _wait_ready(client: Any, name: str, version: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        mv = client.get_model_version(name, version)
        if mv.status == "READY":
            return mv
        if mv.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise RegistryError(f"model version {name}/{version} did not become READY (status {mv.status})")
        time.sleep(0.5)


def _selected_step(metrics: dict[str, Any]) -> str:
    """The training step of the registered weights; 'final' for an evaluation made before evaluate recorded it."""
    step = metrics.get("selected_step")
    return str(int(step)) if isinstance(step, (int, float)) else "final"


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
