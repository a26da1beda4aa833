"""Shared fixtures: tiny phantom data, an ingested archive, and a real MLflow tracking server on PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import types
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MEDGAN_PATIENT_SALT", "test-salt-not-secret")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

PG_HOST = os.environ.get("MEDGAN_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("MEDGAN_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("MEDGAN_TEST_PG_USER", "postgres")


@pytest.fixture(scope="session")
def tiny_cfg():
    from components.config import resolve

    return resolve("tiny")


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """A small phantom DICOM set: 9 patients (4 malignant, 4 benign, 1 normal), 6 slices each, 64 px."""
    from components.phantom import write_phantom

    return write_phantom(
        tmp_path_factory.mktemp("phantom") / "data", seed=1, n_patients=9, slices_per_patient=6, size=64
    )


@pytest.fixture(scope="session")
def archive_dir(phantom_dir, tiny_cfg, tmp_path_factory) -> Path:
    from components.ingest.core import ingest

    out = tmp_path_factory.mktemp("archive") / "archive"
    ingest(phantom_dir, out, tiny_cfg, dataset_version={"tracked": False})
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_stack(tmp_path_factory):
    """A real MLflow tracking server with a fresh PostgreSQL database as its backend store: ``.url``, ``.backend_uri``.

    ``backend_uri`` (the database) is what the pipeline's ``registry.lock_uri`` names in the documented deployment.
    """
    psycopg2 = pytest.importorskip("psycopg2")
    dbname = f"medgan_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=5)
    except psycopg2.OperationalError as exc:  # the service is part of the test environment: fail loudly
        pytest.fail(f"PostgreSQL at {PG_HOST}:{PG_PORT} is not reachable ({exc}); the registry tests need it")
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{dbname}"')
    port = _free_port()
    backend = f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{dbname}"
    artifacts = tmp_path_factory.mktemp("mlflow-artifacts")
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend,
        "--artifacts-destination",
        str(artifacts),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    try:
        log = tmp_path_factory.mktemp("mlflow-log") / "server.log"
        with serving(command, dict(os.environ), log, f"http://127.0.0.1:{port}", "mlflow server") as url:
            yield types.SimpleNamespace(url=url, backend_uri=backend)
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        admin.close()


@contextlib.contextmanager
def serving(command: list[str], env: dict[str, str], log_path: Path, url: str, what: str) -> Iterator[str]:
    """Run a server ``command`` until ``url``/health answers (``what`` names it in errors); yield ``url``; stop it.

    MLflow's GenAI job workers (seven processes nothing here uses) are switched off.
    """
    env = {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(f"{what} did not start: {log_path.read_text()[-3000:]}")
                time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="session")
def server_runner():
    """:func:`serving`, for test modules that start a server of their own."""
    return serving


@pytest.fixture(scope="session")
def mlflow_server(mlflow_stack) -> str:
    """The URL of the real MLflow tracking server of :func:`mlflow_stack`."""
    return mlflow_stack.url


def write_synthetic_archive(
    path: Path,
    labels: list[str],
    patients: list[str],
    size: int = 16,
    classes: tuple[str, ...] = ("normal", "benign", "malignant"),
    seed: int = 0,
    masked: tuple[str, ...] = ("benign", "malignant"),
) -> Path:
    """An archive of random blobs (lesion classes get a square mask), written through the real ArchiveWriter."""
    import numpy as np

    from components.archive import ArchiveWriter

    rng = np.random.default_rng(seed)
    with ArchiveWriter(path, len(labels), size) as writer:
        for i, (label, patient) in enumerate(zip(labels, patients, strict=True)):
            image = rng.uniform(-1, 1, (size, size)).astype(np.float32)
            mask = np.zeros((size, size), np.uint8)
            if label in masked:
                mask[size // 4 : size // 2, size // 4 : size // 2] = 1
            writer.add(
                image,
                mask,
                {
                    "source_file": f"f{i}.dcm",
                    "source_sha256": f"{i:064x}",
                    "patient": patient,
                    "label": label,
                    "label_idx": classes.index(label),
                    "modality": "CT",
                    "pixel_spacing_row": 1.0,
                    "pixel_spacing_col": 1.0,
                    "orig_rows": size,
                    "orig_cols": size,
                },
            )
        writer.commit(
            {
                "classes": list(classes),
                "lesion_classes": [c for c in classes if c != "normal"],
                "dataset_version": {"tracked": False},
            }
        )
    return path


@pytest.fixture
def synthetic_archive(tmp_path):
    """Factory: synthetic_archive(labels, patients, **kw) -> archive path."""
    counter = iter(range(1000))

    def make(labels, patients, **kw):
        return write_synthetic_archive(tmp_path / f"archive{next(counter)}", labels, patients, **kw)

    return make


@pytest.fixture(scope="session")
def split_dir(archive_dir, tiny_cfg, tmp_path_factory) -> Path:
    from components.rebalance.core import rebalance

    out = tmp_path_factory.mktemp("split") / "split"
    rebalance(archive_dir, out, tiny_cfg)
    return out


@pytest.fixture(scope="session")
def model_dir(archive_dir, split_dir, tiny_cfg, tmp_path_factory) -> Path:
    """A generator trained for the tiny preset's few steps (real training, tiny sizes)."""
    from components.train.core import train

    out = tmp_path_factory.mktemp("model") / "model"
    train(archive_dir, split_dir, out, tiny_cfg, None)
    return out
