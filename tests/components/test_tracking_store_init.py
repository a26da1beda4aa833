"""Processes opening one new SQLite tracking store at once: created once, under the lock, no schema race (issue 18)."""

import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]


def test_three_processes_prepare_one_new_store_at_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    code = f"from components.tracking import prepare_local_store; prepare_local_store({uri!r}, 'medgan')"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE, text=True) for _ in range(3)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    assert [e.name for e in MlflowClient(uri).search_experiments()].count("medgan") == 1
    assert (tmp_path / "runs" / ".mlflow-init.lock").is_file()
