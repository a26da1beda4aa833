"""The project-folder lock: a second holder waits with a message, gives up with ``ProjectBusy``, never deadlocks."""

import pytest

from components.projectlock import ProjectBusy, project_lock


def test_a_held_lock_makes_the_other_wait_with_a_message_then_give_up(tmp_path, capsys):
    path = tmp_path / "runs" / ".dvc.lock"
    with project_lock(path, "DVC step"):
        with pytest.raises(ProjectBusy, match=r"waiting for the other run's DVC step \(lock .*\.dvc\.lock\)"):
            with project_lock(path, "DVC step", timeout_s=0.2):
                pass
    assert "medgan: waiting for the other run's DVC step" in capsys.readouterr().err


def test_a_released_lock_is_taken_at_once_and_silently(tmp_path, capsys):
    path = tmp_path / ".mlflow-init.lock"
    with project_lock(path, "creation of the tracking store"):
        pass
    with project_lock(path, "creation of the tracking store", timeout_s=0.0):
        pass
    assert capsys.readouterr().err == ""
