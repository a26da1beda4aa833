"""The cluster pipeline's data step against a real DVC remote (a local folder stands in for the S3 bucket)."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

from components import dataversion
from components.errors import DataError
from components.pull.core import pull_dataset


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True, timeout=300)


def _dvc(*args: str, cwd: Path) -> None:
    _run(sys.executable, "-m", "dvc", *args, cwd=cwd)


def _write_dataset(data: Path, version: str) -> None:
    (data / "dicom").mkdir(parents=True, exist_ok=True)
    (data / "labels.csv").write_text(f"file,label\ndicom/a.dcm,normal\ndicom/b.dcm,{version}\n")
    (data / "dicom/a.dcm").write_bytes(b"\x00" * 128 + b"DICM" + version.encode())
    (data / "dicom/b.dcm").write_bytes(b"\x01" * 64)


def _commit(project: Path, message: str) -> str:
    _run("git", "add", "-A", cwd=project)
    _run("git", "commit", "-q", "-m", message, cwd=project)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def project(tmp_path):
    """A git + DVC project whose `data/` is tracked and pushed to a local remote."""
    proj, remote = tmp_path / "project", tmp_path / "remote"
    proj.mkdir()
    _run("git", "init", "-q", cwd=proj)
    _run("git", "config", "user.email", "ci@example.org", cwd=proj)
    _run("git", "config", "user.name", "ci", cwd=proj)
    _dvc("init", "-q", cwd=proj)
    _dvc("config", "core.analytics", "false", cwd=proj)
    _dvc("remote", "add", "-d", "storage", str(remote), cwd=proj)
    _write_dataset(proj / "data", "benign")
    _dvc("add", "-q", "data", cwd=proj)
    _dvc("push", "-q", cwd=proj)
    first = _commit(proj, "data v1")
    return proj, remote, first


def _same_tree(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return all(filecmp.cmp(a / f, b / f, shallow=False) for f in files)


def test_a_pinned_dataset_is_pulled_exactly_and_its_lineage_recorded(project, tmp_path):
    proj, remote, first = project
    lineage = dataversion.describe(proj / "data")
    assert lineage["tracked"] and lineage["rev"] == first
    dest = tmp_path / "volume/pipeline-runs/run-1/dicom"
    recorded = pull_dataset(lineage, dest, remote=str(remote))
    assert _same_tree(proj / "data", dest)
    assert {k: recorded[k] for k in lineage} == lineage and recorded["nfiles_pulled"] == 3
    # a retried task finds the complete copy and its lineage (no remote needed), and nothing half-made is left
    assert pull_dataset(lineage, dest, remote=str(tmp_path / "gone")) == recorded
    assert sorted(p.name for p in dest.parent.iterdir()) == ["dicom", "dicom.lineage.yaml"]


def test_a_version_the_remote_does_not_hold_fails_and_leaves_nothing(project, tmp_path):
    proj, remote, _ = project
    lineage = {**dataversion.describe(proj / "data"), "md5": "0" * 32 + ".dir"}
    dest = tmp_path / "volume/run-2/dicom"
    with pytest.raises(DataError, match="dvc pull of 0+.dir .* failed"):
        pull_dataset(lineage, dest, remote=str(remote))
    assert not dest.exists() and list(dest.parent.iterdir()) == []


@pytest.mark.parametrize("lineage", [{}, {"tracked": False, "path": "data"}, {"tracked": True, "md5": "abc"}])
def test_a_run_without_a_dvc_dataset_is_refused_with_what_to_do(lineage, tmp_path):
    with pytest.raises(DataError, match="medgan submit --data DIR"):
        pull_dataset(lineage, tmp_path / "dicom", remote=str(tmp_path))


def test_from_a_repository_the_requested_revision_is_pulled_with_its_commit(project, tmp_path):
    proj, remote, first = project
    _write_dataset(proj / "data", "malignant")
    _dvc("add", "-q", "data", cwd=proj)
    _dvc("push", "-q", cwd=proj)
    second = _commit(proj, "data v2")
    latest = pull_dataset({}, tmp_path / "a/dicom", repo=str(proj), rev="HEAD")
    assert latest["rev"] == second and latest["md5"] == dataversion.describe(proj / "data")["md5"]
    assert latest["repo"] == str(proj) and "malignant" in (tmp_path / "a/dicom/labels.csv").read_text()
    old = pull_dataset({}, tmp_path / "b/dicom", repo=str(proj), rev=first)
    assert old["rev"] == first and "benign" in (tmp_path / "b/dicom/labels.csv").read_text()
    with pytest.raises(DataError, match="has no images.dvc"):
        pull_dataset({}, tmp_path / "c/dicom", repo=str(proj), rev="HEAD", path="images")
