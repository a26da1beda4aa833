"""The shared flock and back-off wait behind the project-folder locks and the file promotion lock."""

import pytest

from components.filelock import flock, wait_for


class Busy(Exception):
    pass


def test_a_second_holder_says_it_waits_once_then_gives_up(tmp_path):
    path, said = tmp_path / "new" / "x.lock", []
    with flock(path, 1.0, Busy):
        with pytest.raises(Busy), flock(path, 0.2, Busy, on_wait=lambda: said.append(1)):
            pass
    assert said == [1] and path.is_file()
    with flock(path, 0.0, Busy, on_wait=lambda: said.append(2)):  # released on exit: taken at once, silently
        pass
    assert said == [1]


def test_wait_for_retries_until_the_attempt_succeeds():
    calls = iter([False, False, True])
    said = []
    wait_for(lambda: next(calls), 5.0, Busy, on_wait=lambda: said.append(1))
    assert said == [1] and next(calls, None) is None
