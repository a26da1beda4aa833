"""Durable file writes shared by the stages: a file is either absent, the old version or the complete new one.

Stages do not import each other, so what more than one of them writes with lives here.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

# What fsync on a directory answers where the platform or file system does not support it (nothing to make durable
# that way there); any other error, an I/O error above all, is raised.
_DIR_FSYNC_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EACCES, errno.EPERM}


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the entries of directory ``path`` (a rename, a new or removed file) durable; a no-op where unsupported.

    POSIX only: Windows cannot open a directory with :func:`os.open`, and some file systems refuse the fsync.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        if exc.errno in _DIR_FSYNC_UNSUPPORTED or os.name == "nt":
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _DIR_FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    # Opened for writing: Windows' fsync (_commit) needs a writable descriptor, POSIX accepts either.
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> None:
    """Write a file via ``write(temporary sibling)``, fsync it, ``os.replace`` it onto ``path``, fsync the folder.

    Readers never see a half-written file, and after a crash or power loss ``path`` holds either its old content or
    the complete new one (the data is on disk before the rename, the rename is on disk when this returns). The
    temporary file is removed when ``write`` or anything after it fails.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
