"""The committed data.dvc must describe exactly what `medgan phantom --out data` generates, on any machine."""

import subprocess
import sys
from pathlib import Path

import yaml

from components.phantom import write_phantom

REPO = Path(__file__).resolve().parents[2]


def _md5(dvc_file: Path) -> str:
    return yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]


def test_committed_data_dvc_matches_the_generated_sample_data(tmp_path):
    write_phantom(tmp_path / "data")  # the defaults `make data` uses
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    subprocess.run([dvc, "config", "core.analytics", "false"], cwd=tmp_path, check=True)
    subprocess.run([dvc, "add", "data", "-q"], cwd=tmp_path, check=True)
    assert _md5(tmp_path / "data.dvc") == _md5(REPO / "data.dvc")
