"""Model registration in MLflow and the champion/challenger promotion gate.

``register`` logs the EMA generator the evaluate stage scored (its ``generator.pt``, chosen by
``eval.select_snapshot``; the training's final model when evaluate left none) as an MLflow pyfunc model in the
pipeline run, registers a new version tagged with its data lineage (DVC rev + md5 of the dataset, dataset content
hash, git commit, pipeline run key), its training step, its metrics and the feature spaces behind them (weights
fingerprints, sample counts), points the ``challenger`` alias at it and decides, against the current ``champion``,
whether to promote. ``promote`` / ``reject`` then carry out the decision
(the DAG branches on it with ``dsl.If``): each writes an audit record (when, why, both metric sets) to the version's
tags and to the run, and finalises the review report.
"""

from __future__ import annotations

import json
import math
import os
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
from components.tracking import RunTracker

CHALLENGER, CHAMPION = "challenger", "champion"
METRIC_TAG = "metrics."


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


def gate_decision(
    challenger: dict[str, float], champion: dict[str, float] | None, rules: list[GateMetric]
) -> tuple[bool, str]:
    """Promote when the challenger meets every ``at_least`` rule and beats the champion on every other rule.

    ``at_least`` rules judge the challenger alone (its value ``>= margin``; undefined fails), so they hold for the
    first model too; ``min`` / ``max`` rules need a champion to beat by more than the margin, and without one the
    challenger becomes champion.
    """
    reasons, ok = [], True
    for rule in (r for r in rules if r.mode == "at_least"):
        value = challenger.get(rule.name)
        if value is None or not math.isfinite(value):
            reasons.append(
                f"{rule.name}: undefined for the challenger, required >= {rule.margin:g} (e.g. a Dice baseline below "
                "eval.seg_min_baseline_dice, or too few test patients for an interval)"
            )
            ok = False
            continue
        meets = value >= rule.margin
        reasons.append(f"{rule.name}: {value:.4g} {'meets' if meets else 'misses'} >= {rule.margin:g}")
        ok = ok and meets
    if champion is None:
        first = "no champion to beat: the first model becomes champion" if ok else "no champion, but a rule fails"
        return ok, "; ".join([first, *reasons])
    for rule in (r for r in rules if r.mode != "at_least"):
        new, old = challenger.get(rule.name), champion.get(rule.name)
        if new is None:
            return False, "; ".join([*reasons, f"challenger has no metric {rule.name!r}"])
        if old is None:
            reasons.append(f"{rule.name}: champion has no value, challenger {new:.4g} accepted")
            continue
        # Strictly better: a tie keeps the champion, so identical retrains do not churn the alias.
        better = new < old - rule.margin if rule.mode == "min" else new > old + rule.margin
        sign = "<" if rule.mode == "min" else ">"
        target = old - rule.margin if rule.mode == "min" else old + rule.margin
        reasons.append(
            f"{rule.name}: {new:.4g} {'meets' if better else 'misses'} {sign} {target:.4g} "
            f"(champion {old:.4g}, margin {rule.margin:g})"
        )
        ok = ok and better
    return ok, "; ".join(reasons)


def _version_metrics(version: Any) -> dict[str, float]:
    return {k[len(METRIC_TAG) :]: float(v) for k, v in version.tags.items() if k.startswith(METRIC_TAG)}


def champion_version(client: Any, model_name: str) -> Any | None:
    """The version the ``champion`` alias points at, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None


def register(
    model_dir: str | os.PathLike[str],
    eval_dir: str | os.PathLike[str],
    cfg: Config,
    tracking: dict[str, str],
    dataset_version: dict[str, Any],
) -> dict[str, Any]:
    """Log + register the generator, set ``challenger``, and return the gate decision (nothing promoted yet).

    The weights are ``eval_dir/generator.pt`` (those the metrics describe) when evaluate wrote it, else
    ``model_dir/generator.pt``.
    """
    import mlflow

    from components.register.pyfunc import GeneratorModel, signature

    metrics = json.loads((Path(eval_dir) / "metrics.json").read_text())
    tracker = RunTracker.of(tracking)
    client = tracker.client
    name = cfg.registry.model_name
    mlflow.set_tracking_uri(tracking["tracking_uri"])
    model_dir = Path(model_dir)
    weights = Path(eval_dir) / "generator.pt"
    if not weights.is_file():
        weights = model_dir / "generator.pt"
    with mlflow.start_run(run_id=tracker.run_id):
        info = mlflow.pyfunc.log_model(
            name="generator",
            python_model=GeneratorModel(),
            artifacts={
                "generator": str(weights),
                "training_options": str(model_dir / "training_options.json"),
            },
            code_paths=[str(Path(__file__).resolve().parents[1])],
            signature=signature(cfg.data.image_size),
            input_example=pd.DataFrame({"class": [cfg.data.classes[-1]], "n": [2], "seed": [0]}),
            pip_requirements=[
                f"torch=={_version('torch')}",
                f"numpy=={_version('numpy')}",
                f"pandas=={_version('pandas')}",
                f"mlflow=={_version('mlflow')}",
            ],
        )
    tags = {
        "dataset.dvc_rev": dataset_version.get("rev", "unknown"),
        "dataset.dvc_md5": dataset_version.get("md5", "unknown"),
        "dataset.content_hash": dataset_version.get("dataset_hash", "unknown"),
        "git_commit": git_commit(),
        "pipeline.run_key": tracking["run_key"],
        "config.preset": cfg.preset,
        "model.selected_step": _selected_step(metrics),
        # which feature space (weights fingerprint, sample counts) produced each space's metrics
        **extractor_tags(metrics, "extractor."),
        # full precision: the gate of later runs compares against these values
        **{f"{METRIC_TAG}{k}": repr(float(v)) for k, v in metrics.items() if isinstance(v, (int, float))},
    }
    # register_model links the version to the logged model (MLflow 3 model ids) and creates the name if needed
    version = mlflow.register_model(info.model_uri, name, tags=tags, await_registration_for=0)
    version = _wait_ready(client, name, version.version)
    client.set_registered_model_alias(name, CHALLENGER, version.version)

    champion = champion_version(client, name)
    champion_metrics = _version_metrics(champion) if champion is not None else None
    promote, reason = gate_decision(metrics, champion_metrics, cfg.registry.gate)
    decision = {
        "decision": "promote" if promote else "reject",
        "reason": reason,
        "model_name": name,
        "challenger_version": str(version.version),
        "champion_version": str(champion.version) if champion is not None else None,
        "challenger_metrics": {k: metrics[k] for k in sorted(metrics)},
        "champion_metrics": champion_metrics,
        "rules": [asdict(r) for r in cfg.registry.gate],
        "decided_at": _now(),
    }
    tracker.set_tags({"registry.model": name, "registry.version": version.version})
    tracker.log_dict(decision, "gate/decision.json")
    return decision


def apply_decision(
    decision: dict[str, Any],
    eval_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    tracking: dict[str, str],
) -> dict[str, Any]:
    """Carry out a gate decision: move ``champion`` when promoting; audit it either way; finalise the report.

    The alias moves only after the challenger version is re-checked to still be the one decided on, so a stale
    decision can never promote a different model.
    """
    tracker = RunTracker.of(tracking)
    client = tracker.client
    name, version = decision["model_name"], str(decision["challenger_version"])
    current = client.get_model_version_by_alias(name, CHALLENGER)
    if str(current.version) != version:
        raise RegistryError(
            f"challenger of {name!r} is now version {current.version}, not {version}; "
            "refusing to act on a stale gate decision"
        )
    audit = {
        **decision,
        "action": "promoted" if decision["decision"] == "promote" else "rejected",
        "applied_at": _now(),
    }
    if decision["decision"] == "promote":
        previous = champion_version(client, name)
        client.set_registered_model_alias(name, CHAMPION, version)
        audit["previous_champion"] = str(previous.version) if previous is not None else None
    for key, value in {
        "gate.decision": audit["action"],
        "gate.reason": decision["reason"][:5000],
        "gate.at": audit["applied_at"],
    }.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(
        name, version, description=f"{audit['action']} {audit['applied_at']}: {decision['reason']}"[:5000]
    )
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


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
