"""Which exact data a run used: the DVC pointer of the data folder and the git commit that holds it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml


def find_dvc_file(data_dir: str | os.PathLike[str]) -> Path | None:
    """The ``<folder>.dvc`` pointer beside the data folder (as written by ``dvc add <folder>``), if any."""
    folder = Path(data_dir).resolve()
    candidate = folder.parent / f"{folder.name}.dvc"
    return candidate if candidate.is_file() else None


def describe(data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Lineage of ``data_dir``: DVC md5/size/file count, the git rev of the pointer file, and whether it is clean.

    Returns ``{"tracked": False}`` for a folder DVC does not track; the run still records the archive's own content
    hash, so it stays identifiable.
    """
    dvc_file = find_dvc_file(data_dir)
    if dvc_file is None:
        return {"tracked": False, "path": Path(data_dir).name}
    spec = yaml.safe_load(dvc_file.read_text()) or {}
    out = (spec.get("outs") or [{}])[0]
    info: dict[str, Any] = {
        "tracked": True,
        "path": out.get("path", Path(data_dir).name),
        "dvc_file": dvc_file.name,
        "md5": str(out.get("md5", "")),
        "size": int(out.get("size", 0) or 0),
        "nfiles": int(out.get("nfiles", 0) or 0),
        "rev": "unknown",
    }
    try:
        rev = subprocess.run(
            ["git", "log", "-n", "1", "--format=%H", "--", dvc_file.name],
            cwd=dvc_file.parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", dvc_file.name],
            cwd=dvc_file.parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if rev.returncode == 0 and rev.stdout.strip():
            info["rev"] = rev.stdout.strip() + ("-modified" if status.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return info
