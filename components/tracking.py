"""MLflow tracking behind a small logger interface (``log_*`` and ``close``).

All stages of one pipeline run log into ONE MLflow run, found by its ``medgan.run_key`` tag (created by the first
stage that asks). Stages run one after another, so find-or-create is race free. Locally the backend is SQLite in
the project's run folder; on Kubernetes it is a tracking server with a PostgreSQL backend.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from components.errors import TrackingAccessDenied

RUN_KEY_TAG = "medgan.run_key"
HEARTBEAT_TAG = "medgan.heartbeat"  # epoch seconds of the run's last sign of life (components/runstate.py)
HEARTBEAT_EVERY_S = 60.0


def project_runs_dir(project_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder that holds local MLflow data, pipeline outputs and the patient-ID salt."""
    base = Path(project_dir) if project_dir else Path(os.environ.get("MEDGAN_HOME", Path.cwd()))
    return (base / "runs").resolve()


def default_tracking_uri(project_dir: str | os.PathLike[str] | None = None) -> str:
    """SQLite tracking store inside the project's run folder."""
    runs = project_runs_dir(project_dir)
    runs.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{runs / 'mlflow.db'}"


def prepare_local_store(tracking_uri: str, experiment: str) -> None:
    """Create or migrate a SQLite tracking store and its experiment once, under the project's lock.

    Two runs opening a new database at once would both create MLflow's tables (``duplicate column name``); the first
    to take the lock does it, the other then finds the schema current. Other URIs are left alone.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return
    from components.projectlock import TRACKING_INIT_LOCK, project_lock

    db = Path(tracking_uri[len("sqlite:///") :])
    with project_lock(db.parent / TRACKING_INIT_LOCK, "creation of the tracking store"):
        get_or_create_experiment(tracking_uri, experiment)  # opening the store creates and migrates its schema


def _artifact_location(tracking_uri: str) -> str | None:
    # With a SQLite store MLflow would put artifacts under ./mlruns of whatever the cwd is; keep them beside the db.
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
    return None


def get_or_create_experiment(tracking_uri: str, name: str) -> str:
    """Return the id of experiment ``name``, creating it (with a local artifact root for SQLite) if needed."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_location(tracking_uri))
    except MlflowException as exc:  # pipelines starting together on a new server: another one created it first
        exp = client.get_experiment_by_name(name)
        if exp is None or exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return exp.experiment_id


@contextlib.contextmanager
def access_checked(tracking_uri: str) -> Iterator[None]:
    """Turn the tracking server's refusal (401/403) into a ``TrackingAccessDenied`` that says what to set."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        status = exc.get_http_status_code()
        if status not in (401, 403):
            raise
        who = os.environ.get("MLFLOW_TRACKING_USERNAME")
        if status == 403:
            hint = f"user {who!r} lacks the permission; an admin of the server can grant it"
        elif who:
            hint = f"user {who!r} was not accepted; check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        else:
            hint = "no credentials were sent; set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        parts = urllib.parse.urlsplit(tracking_uri)
        # never echo user:password@ of a URI that carries them
        server = (
            parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl() if "@" in parts.netloc else tracking_uri
        )
        raise TrackingAccessDenied(f"MLflow tracking server {server} refused access (HTTP {status}): {hint}") from exc


class RunTracker:
    """Logs params, metrics, images and files of one pipeline run to MLflow."""

    def __init__(self, tracking_uri: str, experiment: str, run_key: str, run_name: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        with access_checked(tracking_uri):
            self.experiment_id = get_or_create_experiment(tracking_uri, experiment)
        found = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'", max_results=1
        )
        if found:
            self.run_id = found[0].info.run_id
        else:
            run = self.client.create_run(self.experiment_id, run_name=run_name or run_key, tags={RUN_KEY_TAG: run_key})
            self.run_id = run.info.run_id
        self._beat = 0.0
        self.heartbeat()

    @classmethod
    def of(cls, tracking: dict[str, str]) -> RunTracker:
        """The tracker of a pipeline run described as ``{"tracking_uri", "experiment", "run_key"}``."""
        return cls(tracking["tracking_uri"], tracking["experiment"], tracking["run_key"])

    def heartbeat(self, force: bool = True) -> None:
        """Record that the run is alive (tag ``medgan.heartbeat``); unless ``force``, at most once a minute."""
        import time

        now = time.time()
        if force or now - self._beat >= HEARTBEAT_EVERY_S:
            self.client.set_tag(self.run_id, HEARTBEAT_TAG, str(now))
            self._beat = now

    def log_params(self, params: dict[str, Any]) -> None:
        """Log parameters (values are stringified; MLflow limits them to 6000 characters)."""
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        fresh = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
        for start in range(0, len(fresh), 100):
            self.client.log_batch(self.run_id, params=fresh[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log numeric metrics at ``step``; non-finite values are skipped, as MLflow rejects them in some stores."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(step or 0)) for k, v in metrics.items() if np.isfinite(v)]
        for start in range(0, len(batch), 500):
            self.client.log_batch(self.run_id, metrics=batch[start : start + 500])
        self.heartbeat(force=False)

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Set run tags."""
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Upload a file or a folder."""
        p = Path(path)
        if p.is_dir():
            self.client.log_artifacts(self.run_id, str(p), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(p), artifact_path)

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        """Upload ``data`` as a JSON file."""
        self._log_bytes(json.dumps(data, indent=2, sort_keys=True, default=str).encode(), artifact_file)

    def log_image(self, image: np.ndarray, artifact_file: str) -> None:
        """Upload a uint8 HxW or HxWx3 array as a PNG."""
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
        self._log_bytes(buf.getvalue(), artifact_file)

    def _log_bytes(self, data: bytes, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / Path(artifact_file).name
            target.write_bytes(data)
            parent = str(Path(artifact_file).parent)
            self.client.log_artifact(self.run_id, str(target), None if parent == "." else parent)

    def close(self, status: str | None = None) -> None:
        """Mark the run finished (or ``FAILED``/``KILLED``) when ``status`` is given; otherwise leave it open."""
        if status:
            self.client.set_terminated(self.run_id, status)


class NullTracker:
    """Same interface, logs nothing: for ranks other than 0 and for library use without MLflow."""

    run_id = ""

    def log_params(self, params: dict[str, Any]) -> None:  # noqa: D102
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:  # noqa: D102
        pass

    def set_tags(self, tags: dict[str, Any]) -> None:  # noqa: D102
        pass

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:  # noqa: D102
        pass

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:  # noqa: D102
        pass

    def log_image(self, image: np.ndarray, artifact_file: str) -> None:  # noqa: D102
        pass

    def close(self, status: str | None = None) -> None:  # noqa: D102
        pass


Tracker = RunTracker | NullTracker
