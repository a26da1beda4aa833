"""Locks on a project folder's shared local state, so that two runs started at once in one folder both finish.

A run that finds the lock held says on stderr what it waits for, then waits; ``fcntl.flock`` is dropped by the
kernel with its holder's last descriptor, so a killed run never leaves a stale lock behind. Which state is guarded
by which lock file (all under ``<project>/runs``):

- ``.mlflow-init.lock``: creating or migrating the SQLite tracking store
  (:func:`components.tracking.prepare_local_store`); MLflow's schema creation is not safe when two processes run it
  on one new database;
- ``.dvc.lock``: ``dvc add``/``dvc push`` of a top-up to the project's DVC remote
  (:func:`components.topup.core.version_with_dvc`).

Feature caches and model weights under ``runs/cache`` need no lock: each entry is written to a temporary name and
renamed, and two runs computing the same entry write the same content. Run folders are per run key.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from components.errors import MedganError

TRACKING_INIT_LOCK = ".mlflow-init.lock"
DVC_LOCK = ".dvc.lock"


class ProjectBusy(MedganError):
    """Another run held a lock on the project's shared state for longer than this run was willing to wait."""


@contextlib.contextmanager
def project_lock(path: str | os.PathLike[str], what: str, timeout_s: float = 600.0) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` for the block; ``what`` names the guarded step in the wait message."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        delay, said = 0.02, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not said:
                    print(f"medgan: waiting for the other run's {what} (lock {path})", file=sys.stderr, flush=True)
                    said = True
                if time.monotonic() > deadline:
                    raise ProjectBusy(
                        f"gave up after {timeout_s:g} s waiting for the other run's {what} (lock {path}); "
                        "is a run of this project folder hanging?"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
