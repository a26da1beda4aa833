"""Two local runs started a second apart in one project folder: both finish, both models judged (issue 18).

Each run is ``medgan run --preset tiny`` in its own process, as a user (or a scheduler) would start it; a pair is
bounded by ``PAIR_TIMEOUT_S``. The pair on a fresh folder races the creation of the SQLite tracking store; the pair
on that same, now existing, folder races at the gate with a champion in place.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from components.config import resolve
from components.registry import FINAL, audit_trail, champion_version
from components.tracking import default_tracking_uri

PAIR_TIMEOUT_S = 1200  # one tiny run takes about 100 s alone on two busy cores
ROOT = Path(__file__).resolve().parents[2]


def run_two_at_once(data: Path, project: Path) -> list[str]:
    """Start two ``medgan run`` a second apart; wait for both; return their outputs (asserting both exited 0)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "--preset", "tiny", "--data", str(data)]
    procs = []
    for i in range(2):
        if i:
            time.sleep(1.0)
        procs.append(
            subprocess.Popen(
                [*cmd, "--project-dir", str(project)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    deadline = time.monotonic() + PAIR_TIMEOUT_S
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outputs.append(out)
    except subprocess.TimeoutExpired:
        pytest.fail(f"two overlapping runs did not finish within {PAIR_TIMEOUT_S} s")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for i, (proc, out) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"run {i + 1} exited {proc.returncode}:\n{out[-4000:]}"
    return outputs


def check_judged(project: Path, new_versions: set[str]) -> list[dict]:
    """Every version in ``new_versions`` has exactly one final gate record, none refused, each decided against the
    champion the previous decision left; the champion alias is where the last decision put it."""
    cfg = resolve("tiny")
    name = cfg.registry.model_name
    client = MlflowClient(default_tracking_uri(project))
    registered = {str(v.version) for v in client.search_model_versions(f"name = '{name}'")}
    assert new_versions <= registered, registered
    final = [r for r in audit_trail(client, name) if r["action"] in FINAL]
    assert [r["action"] for r in final if r["action"] == "refused"] == []
    counts = {v: sum(str(r["version"]) == v for r in final) for v in registered}
    assert counts == dict.fromkeys(registered, 1), counts  # one gate decision each, none lost or taken twice
    champ = None
    for record in final:  # serialized: each decision saw the champion the one before it left
        assert (str(record["champion_version"]) if record.get("champion_version") else None) == champ, final
        champ = str(record["new_champion"]) if record.get("new_champion") else None
    alias = champion_version(client, name)
    assert (str(alias.version) if alias is not None else None) == champ
    return final


@pytest.fixture(scope="module")
def overlapped_project(phantom_dir, tmp_path_factory):
    """A fresh project folder after two overlapping runs: (folder, their outputs)."""
    project = tmp_path_factory.mktemp("overlap")
    return project, run_two_at_once(phantom_dir, project)


def test_two_runs_at_once_on_a_fresh_project_both_finish_and_are_judged(overlapped_project):
    project, outputs = overlapped_project
    final = check_judged(project, {"1", "2"})
    assert len(final) == 2
    assert "Traceback" not in "".join(outputs)
    assert not list((project / "runs").glob("*/error.json"))


def test_two_runs_at_once_on_an_existing_project_both_finish_and_are_judged(phantom_dir, overlapped_project):
    project, _ = overlapped_project
    run_two_at_once(phantom_dir, project)
    final = check_judged(project, {"1", "2", "3", "4"})
    assert len(final) == 4
    # the two later runs each were judged against a champion in place (when the fresh pair left one)
    if final[1]["new_champion"]:
        assert all(r["champion_version"] for r in final[2:])
