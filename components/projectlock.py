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
from collections.abc import Iterator
from pathlib import Path

from components.errors import MedganError
from components.filelock import flock

TRACKING_INIT_LOCK = ".mlflow-init.lock"
DVC_LOCK = ".dvc.lock"


class ProjectBusy(MedganError):
    """Another run held a lock on the project's shared state for longer than this run was willing to wait."""


@contextlib.contextmanager
def project_lock(path: str | os.PathLike[str], what: str, timeout_s: float = 600.0) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` for the block; ``what`` names the guarded step in the wait message."""
    path = Path(path)

    def say() -> None:
        print(f"medgan: waiting for the other run's {what} (lock {path})", file=sys.stderr, flush=True)

    def give_up() -> ProjectBusy:
        return ProjectBusy(
            f"gave up after {timeout_s:g} s waiting for the other run's {what} (lock {path}); "
            "is a run of this project folder hanging?"
        )

    with flock(path, timeout_s, give_up, on_wait=say):
        yield
