"""The data step of a pipeline run on a cluster: ``dvc pull`` of the dataset the run names into its folder.

On one machine the pipeline reads the DICOM folder in place. On a cluster nothing has it, so the first task pulls it
from the DVC remote onto the shared volume (``<train.data_mount_path>/pipeline-runs/<kfp run id>/dicom``), where
ingest reads it. Two ways to name the dataset:

- **pinned** (``medgan submit``): the lineage of the local ``data.dvc`` (md5 of the DVC directory object, size,
  file count, git rev) travels as ``dataset_version_json``; the step writes that pointer into an empty DVC project
  whose default remote is ``dvc_remote`` and pulls it. The data are exactly the submitted version or the step fails.
- **from a repository** (``medgan schedule``: a recurring run must see new data): ``dataset_repo`` (git URL) at
  ``dataset_rev`` (branch, tag or commit) is cloned, its ``<dataset_path>.dvc`` read, and the data pulled from the
  repository's own DVC remote (or ``dvc_remote`` when given). The lineage recorded is that of the clone: the
  pointer's md5 and the commit that last changed it.

Either way the step returns the lineage the run records (MLflow tags, the registered version's tags), so the
registry never says ``unknown`` for a cluster run. Credentials for S3-compatible remotes come from the environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``: the Secret ``kubernetes.dvc_secret``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from components import dataversion
from components.errors import DataError

DATA_FOLDER = "dicom"  # the pulled dataset's folder inside the run's folder on the shared volume
DVC_TIMEOUT_S = 6 * 3600


def _run(args: list[str], cwd: Path, what: str, timeout: float = DVC_TIMEOUT_S) -> str:
    try:
        done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise DataError(f"{what} did not finish within {timeout:g} s") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise DataError(f"{what} failed (exit {done.returncode}): {tail}")
    return done.stdout


def _dvc(*args: str, cwd: Path, what: str) -> str:
    return _run([sys.executable, "-m", "dvc", *args], cwd, what)


def pointer_text(lineage: dict[str, Any], path: str = "data") -> str:
    """The ``.dvc`` file of the dataset ``lineage`` describes (as :func:`components.dataversion.describe` gives)."""
    md5 = str(lineage.get("md5") or "")
    if not lineage.get("tracked") or not md5.endswith(".dir"):
        raise DataError(
            "the run names no DVC-tracked dataset (dataset_version_json has no directory md5): submit it with "
            "`medgan submit --data DIR` beside DIR.dvc, or give dataset_repo/dataset_rev"
        )
    out = {"md5": md5, "size": int(lineage.get("size") or 0), "nfiles": int(lineage.get("nfiles") or 0)}
    return yaml.safe_dump({"outs": [{**out, "hash": "md5", "path": path}]}, sort_keys=False)


def _add_remote(project: Path, remote: str) -> None:
    _dvc("remote", "add", "--force", "--default", "pipeline", remote, cwd=project, what="dvc remote add")
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    if remote.startswith("s3://") and endpoint:  # an S3-compatible store (MinIO, Ceph, ...)
        _dvc("remote", "modify", "pipeline", "endpointurl", endpoint, cwd=project, what="dvc remote modify")


def _pull_pinned(lineage: dict[str, Any], remote: str, work: Path) -> tuple[Path, dict[str, Any]]:
    if not remote:
        raise DataError("a pinned dataset needs dvc_remote, the URL of the DVC remote that holds it")
    project = work / "project"
    project.mkdir()
    _dvc("init", "--no-scm", "--quiet", cwd=project, what="dvc init")
    (project / "data.dvc").write_text(pointer_text(lineage))
    _add_remote(project, remote)
    _dvc("pull", "--quiet", "data.dvc", cwd=project, what=f"dvc pull of {lineage['md5']} from {remote}")
    return project / "data", dict(lineage)


def _pull_from_repo(repo: str, rev: str, path: str, remote: str, work: Path) -> tuple[Path, dict[str, Any]]:
    clone = work / "repo"
    _run(["git", "clone", "--quiet", "--no-checkout", repo, str(clone)], work, f"git clone of {repo}", 1800)
    _run(["git", "checkout", "--quiet", rev or "HEAD"], clone, f"git checkout of {rev or 'HEAD'} in {repo}", 600)
    pointer = clone / f"{path}.dvc"
    if not pointer.is_file():
        raise DataError(f"{repo} at {rev or 'HEAD'} has no {path}.dvc (dataset_path names the DVC-tracked folder)")
    if remote:
        _add_remote(clone, remote)
    _dvc("pull", "--quiet", f"{path}.dvc", cwd=clone, what=f"dvc pull of {path}.dvc at {rev or 'HEAD'} of {repo}")
    lineage = dataversion.describe(clone / path)
    return clone / path, {**lineage, "repo": repo, "requested_rev": rev or "HEAD"}


def pull_dataset(
    lineage: dict[str, Any],
    dest: str | os.PathLike[str],
    *,
    remote: str = "",
    repo: str = "",
    rev: str = "",
    path: str = "data",
) -> dict[str, Any]:
    """Pull the dataset into ``dest`` (created complete or not at all); return the lineage the run records.

    ``repo`` set: the dataset at ``rev`` of that repository; else the pinned ``lineage``. A ``dest`` left complete
    by an earlier attempt of the same run is reused (a retried task), its lineage kept beside it.
    """
    dest = Path(dest)
    record = dest.with_name(f"{dest.name}.lineage.yaml")
    if dest.is_dir() and record.is_file():
        return yaml.safe_load(record.read_text())
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pull-", dir=dest.parent) as tmp:
        work = Path(tmp)
        if repo:
            pulled, recorded = _pull_from_repo(repo, rev, path, remote, work)
        else:
            pulled, recorded = _pull_pinned(lineage, remote, work)
        if not (pulled / "labels.csv").is_file():
            raise DataError(f"the pulled dataset ({recorded.get('md5')}) has no labels.csv at its top level")
        recorded["nfiles_pulled"] = sum(1 for p in pulled.rglob("*") if p.is_file())
        if dest.exists():  # an attempt that died between the move and the record
            shutil.rmtree(dest)
        os.replace(pulled, dest)
    record.write_text(yaml.safe_dump(recorded, sort_keys=True))
    return recorded
