"""An ingest that dies half-way leaves nothing that later stages would accept, and a rerun succeeds."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from components.archive import ArchiveWriter, open_archive, sweep_stale
from components.config import resolve
from components.errors import DataError
from components.ingest import decode
from components.ingest.core import ingest
from components.phantom import write_phantom

SALT = "interrupted-salt"


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return write_phantom(tmp_path_factory.mktemp("ph") / "data", seed=3, n_patients=6, slices_per_patient=6, size=64)


def leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".archive.tmp-"))


def test_exception_mid_stream_leaves_no_archive_and_no_temp_folder(phantom, tmp_path, monkeypatch):
    calls = []
    real = decode.read_frames

    def dies_on_the_fifth(path, cfg, **kw):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt  # not an ImageRejected: the run must stop, not quarantine
        return real(path, cfg, **kw)

    monkeypatch.setattr(decode, "read_frames", dies_on_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        ingest(phantom, tmp_path / "archive", resolve("tiny"), salt=SALT)
    assert not (tmp_path / "archive").exists() and leftovers(tmp_path) == []
    monkeypatch.setattr(decode, "read_frames", real)
    summary = ingest(phantom, tmp_path / "archive", resolve("tiny"), salt=SALT)
    assert len(open_archive(summary["archive"])) == summary["n_ok"] == 36


CHILD = textwrap.dedent(
    """
    import sys, time
    from components.config import resolve
    from components.ingest import core, decode

    real = decode.read_frames
    def slow(path, cfg, **kw):  # a slow disk: the parent has time to kill us mid-way
        time.sleep(0.1)
        return real(path, cfg, **kw)
    decode.read_frames = slow
    core.ingest(sys.argv[1], sys.argv[2], resolve("tiny"), salt="interrupted-salt")
    print("finished", flush=True)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_sigkill_mid_ingest_leaves_nothing_open_archive_accepts(phantom, tmp_path):
    out = tmp_path / "archive"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(phantom), str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not leftovers(tmp_path) and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
        time.sleep(0.5)  # a few files into the stream (36 files x 0.1 s)
        assert child.poll() is None, child.communicate()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    assert not out.exists()
    with pytest.raises(DataError, match="not a dataset archive"):
        open_archive(out)
    stale = leftovers(tmp_path)
    assert len(stale) == 1  # the half-written temporary folder: hidden, never accepted as an archive
    with pytest.raises(DataError):
        open_archive(tmp_path / stale[0])

    summary = ingest(phantom, out, resolve("tiny"), salt=SALT)
    archive = open_archive(out)
    assert len(archive) == summary["n_ok"] == 36
    assert leftovers(tmp_path) == []  # the next writer swept the dead one's folder away


def test_a_live_writers_folder_is_not_swept(tmp_path):
    out = tmp_path / "archive"
    with ArchiveWriter(out, capacity=2, image_size=4) as first:
        with ArchiveWriter(out, capacity=2, image_size=4) as second:  # e.g. a second ingest of the same folder
            assert len(leftovers(tmp_path)) == 2
            second.add(np.zeros((4, 4), np.float32), np.zeros((4, 4), np.uint8), {})
            second.commit({})
        assert leftovers(tmp_path) == [first._tmp.name]  # still there, still locked
        assert sweep_stale(out) == []
    assert leftovers(tmp_path) == []  # its own exit cleans up
    assert sorted(p.name for p in out.iterdir()) == [
        "archive.json",
        "images.npy",
        "manifest.parquet",
        "masks.npy",
        "quarantine.csv",
    ]  # no lock file in the committed archive
