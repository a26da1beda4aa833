"""An exclusive ``fcntl.flock`` held for a block, and the back-off wait shared by every lock of the project.

Used by the project-folder locks (:mod:`components.projectlock`) and the file flavour of the promotion lock
(:mod:`components.promotion_lock`), whose PostgreSQL flavour shares :func:`wait_for`. The kernel drops a flock with
its holder's last descriptor, so a killed holder never leaves a stale lock behind. POSIX only (``fcntl``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

FIRST_DELAY_S = 0.02  # first pause between two attempts; doubled after each, up to MAX_DELAY_S
MAX_DELAY_S = 0.5


def wait_for(
    attempt: Callable[[], bool],
    timeout_s: float,
    give_up: Callable[[], Exception],
    on_wait: Callable[[], None] | None = None,
) -> None:
    """Call ``attempt`` until it returns True, backing off between calls; raise ``give_up()`` after ``timeout_s``.

    ``on_wait`` is called once, after the first failed attempt (to say what is waited for); an attempt that succeeds
    at once waits and says nothing.
    """
    deadline = time.monotonic() + timeout_s
    delay, said = FIRST_DELAY_S, False
    while not attempt():
        if on_wait is not None and not said:
            on_wait()
            said = True
        if time.monotonic() > deadline:
            raise give_up()
        time.sleep(delay)
        delay = min(delay * 2, MAX_DELAY_S)


@contextlib.contextmanager
def flock(
    path: str | os.PathLike[str],
    timeout_s: float,
    give_up: Callable[[], Exception],
    on_wait: Callable[[], None] | None = None,
) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created with its folder) for the block, waiting as :func:`wait_for` does."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:

        def attempt() -> bool:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        wait_for(attempt, timeout_s, give_up, on_wait)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)  # the kernel drops a flock with its last descriptor: a killed holder never blocks others
