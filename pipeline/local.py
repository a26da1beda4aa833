"""Running the pipeline on one machine with ``kfp.local.SubprocessRunner`` and embedded defaults.

Defaults: MLflow tracking in SQLite under ``<project>/runs``, kfp outputs under ``<project>/runs/kfp``, the
patient-ID salt in ``<project>/runs/.patient_salt`` (unless ``MEDGAN_PATIENT_SALT`` is set), CPU.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import dataversion
from components.config import Config
from components.errors import DataError, MedganError
from components.tracking import default_tracking_uri, project_runs_dir


@dataclass
class LocalRun:
    """Where a finished local run left its results."""

    run_key: str
    run_dir: Path
    report: Path
    tracking_uri: str
    decision: dict[str, Any]


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


def _mark_failed(tracking: dict[str, str]) -> None:
    """Close the pipeline's MLflow run as FAILED so it does not look like it is still running."""
    from mlflow.tracking import MlflowClient

    from components.tracking import RUN_KEY_TAG

    try:
        client = MlflowClient(tracking["tracking_uri"])
        exp = client.get_experiment_by_name(tracking["experiment"])
        if exp is None:
            return
        for run in client.search_runs([exp.experiment_id], f"tags.`{RUN_KEY_TAG}` = '{tracking['run_key']}'"):
            client.set_terminated(run.info.run_id, "FAILED")
    except Exception:  # noqa: BLE001 - best effort: the original failure is what the user must see
        pass


def new_run_key() -> str:
    """A sortable, unique key naming the pipeline run (MLflow tag, output folder)."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def run_local(data_dir: str | os.PathLike[str], cfg: Config, project_dir: str | os.PathLike[str] = ".") -> LocalRun:
    """Execute the whole DAG locally; raise ``MedganError`` with the failing stage's message on user errors."""
    from kfp import local

    from pipeline.dag import medgan_pipeline

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

    os.environ[cfg.ingest.salt_env] = patient_salt(runs, cfg.ingest.salt_env)
    os.environ["MEDGAN_PROJECT_DIR"] = str(Path(project_dir).resolve())  # its DVC remote versions the top-up
    error_file = run_dir / "error.json"
    os.environ["MEDGAN_ERROR_FILE"] = str(error_file)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(runs / "kfp"), raise_on_error=True)
    try:
        medgan_pipeline(
            data_dir=str(data),
            config_json=cfg.to_json(),
            tracking_json=json.dumps(tracking),
            dataset_version_json=json.dumps(lineage),
            cache_dir=str(runs / "cache"),
        )
    except Exception as exc:  # noqa: BLE001 - kfp wraps task failures in generic exceptions
        _mark_failed(tracking)
        if error_file.is_file():
            err = json.loads(error_file.read_text())
            raise MedganError(f"pipeline stopped at {err['stage']}: {err['message']}") from None
        raise MedganError(f"pipeline failed: {exc} (see the task log above; outputs in {runs / 'kfp'})") from exc
    finally:
        os.environ.pop("MEDGAN_ERROR_FILE", None)

    # MLflow holds the outcome whichever gate branch ran: the final report and the audit record of the decision.
    decision = _fetch_outcome(tracking, run_dir)
    return LocalRun(run_key, run_dir, run_dir / "report.html", tracking_uri, decision)


def _fetch_outcome(tracking: dict[str, str], run_dir: Path) -> dict[str, Any]:
    from mlflow.artifacts import download_artifacts

    from components.tracking import RunTracker

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
