"""Two runs of one project folder version their top-ups one at a time: the other run's DVC step is waited for."""

import threading

from components.projectlock import DVC_LOCK, project_lock
from components.topup.core import version_with_dvc


def test_the_dvc_step_waits_for_the_other_runs_then_pushes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDGAN_PROJECT_DIR", str(tmp_path / "project"))
    folder = tmp_path / "topup"
    folder.mkdir()
    (folder / "a.txt").write_text("one")
    result = {}
    with project_lock(tmp_path / "project" / "runs" / DVC_LOCK, "DVC step"):  # the other run is pushing
        worker = threading.Thread(target=lambda: result.update(version_with_dvc(folder, str(tmp_path / "remote"))))
        worker.start()
        worker.join(timeout=3.0)
        assert worker.is_alive() and not result  # waiting, not failing with DVC's "Unable to acquire lock"
    worker.join(timeout=120.0)
    assert result["tracked"] and result["nfiles"] == 1
    assert "waiting for the other run's DVC step" in capsys.readouterr().err
