"""atomic_write: all or nothing, durable (file fsynced before the rename, folder after it), no temporary file left."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from components.fsio import atomic_write


@pytest.fixture
def events(monkeypatch):
    """Record fsync (of a file or a folder, by inode) and os.replace calls, in order, then do them for real."""
    log: list[tuple[str, int]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        info = os.fstat(fd)
        log.append(("fsync_dir" if stat.S_ISDIR(info.st_mode) else "fsync_file", info.st_ino))
        real_fsync(fd)

    def replace(src, dst):
        log.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return log


def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path, events):
    path = tmp_path / "out.bin"
    atomic_write(path, lambda p: p.write_bytes(b"new"))
    assert path.read_bytes() == b"new" and sorted(os.listdir(tmp_path)) == ["out.bin"]
    file_ino, dir_ino = path.stat().st_ino, tmp_path.stat().st_ino
    assert events == [("fsync_file", file_ino), ("replace", file_ino), ("fsync_dir", dir_ino)]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path, events):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def half_then_fail(p):
        p.write_bytes(b"ha")
        raise OSError(errno.ENOSPC, "disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["out.bin"]
    assert events == []  # nothing renamed, nothing made durable


def test_a_failed_fsync_is_raised_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    def broken(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="I/O error"):
        atomic_write(tmp_path / "out.bin", lambda p: p.write_bytes(b"new"))
    assert os.listdir(tmp_path) == []


def test_folders_that_cannot_be_opened_or_fsynced_are_skipped(tmp_path, monkeypatch):
    real_open, real_fsync = os.open, os.fsync

    def no_dir_open(path, flags, *args):  # Windows: a folder cannot be opened with os.open
        if os.path.isdir(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_dir_open)
    atomic_write(tmp_path / "a.bin", lambda p: p.write_bytes(b"a"))
    monkeypatch.setattr(os, "open", real_open)

    def no_dir_fsync(fd):  # file systems that refuse fsync on a folder
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", no_dir_fsync)
    atomic_write(tmp_path / "b.bin", lambda p: p.write_bytes(b"b"))
    assert (tmp_path / "a.bin").read_bytes() == b"a" and (tmp_path / "b.bin").read_bytes() == b"b"
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "b.bin"]
