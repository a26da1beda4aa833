"""Running the pipeline on one machine with ``kfp.local.SubprocessRunner`` and embedded defaults.

Defaults: MLflow tracking in SQLite under ``<project>/runs``, kfp outputs under ``<project>/runs/kfp``, the
patient-ID salt in ``<project>/runs/.patient_salt`` (unless ``MEDGAN_PATIENT_SALT`` is set), CPU.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components import dataversion
from components.config import Config
from components.errors import DataError, MedganError
from components.runstate import claim_run
from components.tracking import RunTracker, default_tracking_uri, prepare_local_store, project_runs_dir


@dataclass
class LocalRun:
    """Where a finished local run left its results."""

    run_key: str
    run_dir: Path
    report: Path
    tracking_uri: str
    decision: dict[str, Any]
    orphans: list[str] = field(default_factory=list)  # earlier runs found left RUNNING by a dead process


def preflight(data_dir: Path) -> None:
    """Catch the common user mistakes before any component starts, with a message that says what to do."""
    if not data_dir.exists():
        raise DataError(
            f"data folder {data_dir} does not exist; create a sample with `medgan phantom --out "
            f"{data_dir}` or point --data at your DICOM folder"
        )
    if not data_dir.is_dir():
        raise DataError(f"data path {data_dir} is not a folder")
    labels = data_dir / "labels.csv"
    if not labels.is_file():
        raise DataError(
            f"{labels} not found: the data folder needs a labels.csv (columns file,label[,patient_id,mask_file])"
        )
    if not labels.read_text(errors="replace").strip():
        raise DataError(f"{labels} is empty: it needs a header (file,label,...) and one row per image")


def patient_salt(runs: Path, env_name: str) -> str:
    """The salt for patient-ID hashing: from the environment, else a per-project secret file created once."""
    if os.environ.get(env_name):
        return os.environ[env_name]
    path = runs / ".patient_salt"
    if not path.exists():
        runs.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return path.read_text().strip()


def _close_failed(tracker: RunTracker, status: str, reason: str) -> None:
    """End the pipeline's MLflow run as FAILED / KILLED and refuse a version it registered but never gated."""
    from components.runstate import close_run

    try:
        close_run(tracker.client, tracker.run_id, status, reason, via="local runner (failure)")
    except Exception:  # noqa: BLE001 - best effort: the original failure is what the user must see
        pass


def report_orphans(tracker: RunTracker, experiment: str) -> list[str]:
    """Runs of ``experiment`` left RUNNING by a dead process, as lines for the user (also on stderr)."""
    from components.runstate import find_orphans

    lines = [f"{o.run_key} ({o.why})" for o in find_orphans(tracker.client, experiment) if o.run_id != tracker.run_id]
    if lines:
        print(
            f"medgan: {len(lines)} earlier run(s) still marked RUNNING, their process gone: {'; '.join(lines)}. "
            "Close them with `medgan runs --repair`.",
            file=sys.stderr,
            flush=True,
        )
    return lines


def new_run_key() -> str:
    """A sortable, unique key naming the pipeline run (MLflow tag, output folder)."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def run_local(
    data_dir: str | os.PathLike[str], cfg: Config, project_dir: str | os.PathLike[str] = ".", reuse: bool = False
) -> LocalRun:
    """Execute the whole DAG locally; raise ``MedganError`` with the failing stage's message on user errors.

    ``reuse``: take ingest, validate, rebalance, train and evaluate from an earlier run of the same DVC-tracked data,
    config and source code (kfp's local cache under ``runs/kfp-cache``) instead of recomputing them; the new run still
    opens its MLflow run, registers and passes the gate, but the reused stages log nothing into it.
    """
    from kfp import local

    from pipeline.dag import build_pipeline, cache_key, medgan_pipeline, source_digest

    data = Path(data_dir).resolve()
    preflight(data)
    runs = project_runs_dir(project_dir)
    run_key = new_run_key()
    run_dir = runs / run_key
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(json.loads(cfg.to_json()), indent=2))
    tracking_uri = cfg.tracking.tracking_uri or default_tracking_uri(project_dir)
    tracking = {"tracking_uri": tracking_uri, "experiment": cfg.tracking.experiment, "run_key": run_key}
    lineage = dataversion.describe(data)
    prepare_local_store(tracking_uri, cfg.tracking.experiment)  # before any task opens it: runs may start together
    tracker = RunTracker.of(tracking)  # created here, so that it names this process as its owner from the start
    claim_run(tracker)
    orphans = report_orphans(tracker, cfg.tracking.experiment)

    os.environ[cfg.ingest.salt_env] = patient_salt(runs, cfg.ingest.salt_env)
    os.environ["MEDGAN_PROJECT_DIR"] = str(Path(project_dir).resolve())  # its DVC remote versions the top-up
    error_file = run_dir / "error.json"
    os.environ["MEDGAN_ERROR_FILE"] = str(error_file)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    key = cache_key(cfg, lineage, source_digest()) if reuse else ""
    if reuse and not key:
        print(f"medgan: {data} is not tracked by DVC: nothing to reuse, every stage runs", file=sys.stderr, flush=True)
    pipeline = build_pipeline(cache=key) if key else medgan_pipeline
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(runs / "kfp"),
        raise_on_error=True,
        enable_caching=bool(key),
        cache_root=str(runs / "kfp-cache"),
    )
    try:
        pipeline(
            data_dir=str(data),
            config_json=cfg.to_json(),
            tracking_json=json.dumps(tracking),
            dataset_version_json=json.dumps(lineage),
            cache_dir=str(runs / "cache"),
        )
    except KeyboardInterrupt:
        _close_failed(tracker, "KILLED", "interrupted")
        raise
    except Exception as exc:  # noqa: BLE001 - kfp wraps task failures in generic exceptions
        if error_file.is_file():
            err = json.loads(error_file.read_text())
            _close_failed(tracker, "FAILED", f"stopped at {err['stage']}: {err['message']}")
            raise MedganError(f"pipeline stopped at {err['stage']}: {err['message']}") from None
        _close_failed(tracker, "FAILED", f"pipeline failed: {exc}")
        raise MedganError(f"pipeline failed: {exc} (see the task log above; outputs in {runs / 'kfp'})") from exc
    finally:
        os.environ.pop("MEDGAN_ERROR_FILE", None)

    # MLflow holds the outcome whichever gate branch ran: the final report and the audit record of the decision.
    decision = _fetch_outcome(tracking, run_dir)
    return LocalRun(run_key, run_dir, run_dir / "report.html", tracking_uri, decision, orphans)


def _fetch_outcome(tracking: dict[str, str], run_dir: Path) -> dict[str, Any]:
    from mlflow.artifacts import download_artifacts

    tracker = RunTracker.of(tracking)
    with tempfile.TemporaryDirectory() as tmp:
        fetched = {
            name: Path(
                download_artifacts(
                    run_id=tracker.run_id, artifact_path=name, dst_path=tmp, tracking_uri=tracking["tracking_uri"]
                )
            )
            for name in ("report/report.html", "gate/audit.json")
        }
        shutil.copyfile(fetched["report/report.html"], run_dir / "report.html")
        audit = json.loads(fetched["gate/audit.json"].read_text())
    (run_dir / "gate.json").write_text(json.dumps(audit, indent=2))
    return audit
