"""Promotion against a real MLflow server on PostgreSQL: concurrency, compare-and-set, crashes, operator commands."""

import importlib.util
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from components.errors import RegistryError
from components.promotion_lock import UnlockedPromotionWarning, lock_target, promotion_lock
from components.register.promotion import decide_and_promote
from components.registry import CHAMPION, FINAL, audit_trail, champion_version, version_trail
from components.runstate import close_run, find_orphans
from components.tracking import HEARTBEAT_TAG, RunTracker
from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[3]
WORKERS = Path(__file__).with_name("registry_workers.py")
_spec = importlib.util.spec_from_file_location("registry_workers", WORKERS)
workers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(workers)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _spawn(mode: str, args: dict) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        [sys.executable, str(WORKERS), mode, json.dumps(args)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_files(paths, timeout=90.0, procs=()):
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        dead = [p for p in procs if p.poll() not in (None, 0)]
        assert not dead, f"a worker died: {dead[0].communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {[str(p) for p in paths if not p.exists()]}"
        time.sleep(0.02)


def _check_trail(client, name, fids):
    """Replay the model's audit trail: every final decision was taken against the champion of its moment."""
    trail = audit_trail(client, name)
    champion = None
    finals = {}
    for rec in trail:
        if rec["action"] == "re-taken":
            assert rec["champion_version"] != str(champion), rec  # it was re-taken because the champion had moved
            continue
        assert rec["action"] in FINAL, rec
        assert rec["champion_version"] == (str(champion) if champion else None), rec  # compare-and-set held
        if rec["action"] == "promoted":
            assert rec["previous_champion"] == (str(champion) if champion else None)
            champion = rec["new_champion"]
        finals.setdefault(rec["version"], []).append(rec)
    assert sorted(finals, key=int) == sorted(fids, key=int)
    assert all(len(v) == 1 for v in finals.values()), finals  # exactly one decision record per version
    for version in fids:  # and the same on the version itself
        mv = client.get_model_version(name, version)
        assert [r["action"] for r in version_trail(mv) if r["action"] in FINAL] == [finals[version][0]["action"]]
        assert mv.tags["gate.decision"] == finals[version][0]["action"]
    return champion, trail


def test_concurrent_gates_end_with_the_best_as_champion(mlflow_stack, tmp_path):
    url, started = mlflow_stack.url, time.monotonic()
    first, second = _name("conc"), _name("conc")
    # Per round, four pipelines register and reach the gate at the same moment. Rounds 2 and 4 continue the model of
    # rounds 1 and 3 (a champion exists); 150 misses the floor (fid <= 100); in round 4 nobody beats the champion.
    rounds = [
        (first, [5.0, 8.0, 3.0, 9.0]),
        (first, [4.0, 2.5, 7.0, 2.9]),
        (second, [50.0, 20.0, 150.0, 30.0]),
        (second, [25.0, 21.0, 22.0, 20.5]),
    ]
    n = 4
    procs = [
        _spawn(
            "concurrent",
            {
                "url": url,
                "lock_uri": mlflow_stack.backend_uri,
                "sync": str(tmp_path),
                "worker": w,
                "rounds": [
                    {"name": name, "fid": fids[w], "key": f"{name}-r{r}-w{w}"} for r, (name, fids) in enumerate(rounds)
                ],
            },
        )
        for w in range(n)
    ]
    try:
        _wait_files([tmp_path / f"up-{w}" for w in range(n)], procs=procs)
        for r in range(len(rounds)):
            (tmp_path / f"go-{r}").touch()
            _wait_files([tmp_path / f"ready-{r}-{w}" for w in range(n)], procs=procs)
            (tmp_path / f"gate-{r}").touch()  # all four gates start together
            _wait_files([tmp_path / f"done-{r}-{w}" for w in range(n)], procs=procs)
        outputs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outputs]
    results = [json.loads(line) for out, _ in outputs for line in out.splitlines() if line.startswith("{")]
    assert len(results) == n * len(rounds)

    client = MlflowClient(url)
    for name, expected_fid in ((first, 2.5), (second, 20.0)):
        fids = {r["version"]: r["fid"] for r in results if rounds[r["round"]][0] == name}
        champion, trail = _check_trail(client, name, fids)
        assert fids[champion] == expected_fid
        assert str(champion_version(client, name).version) == champion
        over_floor = [v for v, f in fids.items() if f > 100]
        assert all(client.get_model_version(name, v).tags["gate.decision"] == "rejected" for v in over_floor)
        assert all("postgresql advisory lock" in rec["lock"] for rec in trail)
    assert time.monotonic() - started < 150


def test_compare_and_set_retakes_the_decision_when_the_champion_moves(mlflow_server, tmp_path):
    client = MlflowClient(mlflow_server)
    name = _name("cas")
    tracker = RunTracker(mlflow_server, workers.EXPERIMENT, name)
    v_old, v_better, v_new = (
        workers.tiny_version(client, name, fid, tracker.run_id, f"{name}-{i}") for i, fid in enumerate((10.0, 4.0, 6.0))
    )
    client.set_registered_model_alias(name, CHAMPION, v_old)
    target = lock_target(mlflow_server, name, f"file://{tmp_path}/{name}.lock")

    def someone_moves_champion():  # outside the lock, e.g. in the MLflow UI: to a better model than v_new
        client.set_registered_model_alias(name, CHAMPION, v_better)

    record = decide_and_promote(
        client,
        name,
        v_new,
        {"fid": 6.0},
        workers.RULES,
        [],
        target,
        {"actor": "test"},
        proposed_against=v_old,
        before_move=someone_moves_champion,
    )
    assert (
        record["action"] == "rejected" and record["champion_version"] == v_better and "6 misses < 4" in record["reason"]
    )
    assert str(champion_version(client, name).version) == v_better  # the better model was not overwritten
    actions = [(r["action"], r["champion_version"]) for r in version_trail(client.get_model_version(name, v_new))]
    assert actions == [("re-taken", v_old), ("rejected", v_better)]
    # a retried gate step finds the decision and does not decide again
    again = decide_and_promote(client, name, v_new, {"fid": 6.0}, workers.RULES, [], target, {"actor": "test"})
    assert again["stamp"] == record["stamp"]
    assert len(version_trail(client.get_model_version(name, v_new))) == 2


def test_a_proposal_against_an_old_champion_is_retaken_and_promoted(mlflow_server, tmp_path):
    client = MlflowClient(mlflow_server)
    name = _name("retake")
    tracker = RunTracker(mlflow_server, workers.EXPERIMENT, name)
    v1, v2 = (
        workers.tiny_version(client, name, fid, tracker.run_id, f"{name}-{i}") for i, fid in enumerate((9.0, 5.0))
    )
    client.set_registered_model_alias(name, CHAMPION, v1)
    target = lock_target(f"sqlite:///{tmp_path}/mlflow.db", name)  # a lock file beside a SQLite store
    assert target.kind == "file" and target.where.endswith(f"mlflow.db.{name}.promotion.lock")
    record = decide_and_promote(
        client, name, v2, {"fid": 5.0}, workers.RULES, [], target, {"actor": "test"}, proposed_against="None"
    )
    assert record["action"] == "promoted" and record["previous_champion"] == v1
    assert [r["action"] for r in audit_trail(client, name)] == ["re-taken", "promoted"]


def test_without_a_lock_an_http_store_warns_and_still_compares_and_sets(mlflow_server):
    client = MlflowClient(mlflow_server)
    name = _name("optimistic")
    tracker = RunTracker(mlflow_server, workers.EXPERIMENT, name)
    v1 = workers.tiny_version(client, name, 7.0, tracker.run_id, name)
    target = lock_target(mlflow_server, name)
    assert target.kind == "none"
    with pytest.warns(UnlockedPromotionWarning, match="not serialized"):
        record = decide_and_promote(client, name, v1, {"fid": 7.0}, workers.RULES, workers.FLOOR, target, {})
    assert record["action"] == "promoted" and "optimistic" in record["lock"]


def test_the_locks_exclude_a_second_holder(mlflow_stack, tmp_path):
    for target in (
        lock_target("http://server", "m", mlflow_stack.backend_uri),
        lock_target(f"sqlite:///{tmp_path}/mlflow.db", "m"),
    ):
        with promotion_lock(target):
            with pytest.raises(RegistryError, match="timed out after 0.3 s waiting for the promotion lock"):
                with promotion_lock(target, timeout_s=0.3):
                    pass
        with promotion_lock(target, timeout_s=1):  # released on exit
            pass


def test_a_crash_between_register_and_gate_is_reported_and_repaired(mlflow_server, tmp_path, capsys):
    client = MlflowClient(mlflow_server)
    name = _name("crash")
    tracker = RunTracker(mlflow_server, workers.EXPERIMENT, f"{name}-champion")
    champ = workers.tiny_version(client, name, 9.0, tracker.run_id, f"{name}-champion")
    client.set_registered_model_alias(name, CHAMPION, champ)
    proc = _spawn("crash", {"url": mlflow_server, "name": name, "fid": 3.0, "key": f"{name}-crashed"})
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -9, err[-2000:]
    crashed = json.loads(out.splitlines()[-1])

    # consistent: the champion did not move, the new version waits undecided, the run still says RUNNING
    assert str(champion_version(client, name).version) == champ
    version = client.get_model_version(name, crashed["version"])
    assert "gate.decision" not in version.tags
    assert client.get_run(crashed["run_id"]).info.status == "RUNNING"
    orphans = find_orphans(client, workers.EXPERIMENT)
    assert [o.run_id for o in orphans if o.run_id == crashed["run_id"]] == [crashed["run_id"]]
    assert "is gone" in next(o.why for o in orphans if o.run_id == crashed["run_id"])

    args = ["--tracking-uri", mlflow_server, "--set", f"tracking.experiment={workers.EXPERIMENT}"]
    assert main(["runs", *args]) == 0
    listed = capsys.readouterr().out
    assert f"{name}-crashed" in listed and "medgan runs --repair" in listed
    assert main(["runs", "--repair", "--actor", "ops@test", *args]) == 0
    assert f"closed {name}-crashed" in capsys.readouterr().out
    assert client.get_run(crashed["run_id"]).info.status == "KILLED"
    version = client.get_model_version(name, crashed["version"])
    assert version.tags["gate.decision"] == "refused" and version.tags["gate.actor"] == "ops@test"
    assert [r["action"] for r in audit_trail(client, name)] == ["refused"]
    assert str(champion_version(client, name).version) == champ
    assert all(o.run_id != crashed["run_id"] for o in find_orphans(client, workers.EXPERIMENT))
    assert close_run(client, crashed["run_id"], "KILLED", "again") == []  # a second repair writes nothing


def test_a_run_without_an_owner_is_an_orphan_once_its_heartbeat_is_stale(mlflow_server):
    client = MlflowClient(mlflow_server)
    tracker = RunTracker(mlflow_server, "heartbeat-test", _name("remote"))  # e.g. a Kubeflow run: no owner tags
    client.set_tag(tracker.run_id, "medgan.owner.host", "some-node")  # not this host: its process cannot be checked
    assert find_orphans(client, "heartbeat-test", stale_after_s=2) == []
    client.set_tag(tracker.run_id, HEARTBEAT_TAG, str(time.time() - 7200))  # older than the run's start
    time.sleep(2.2)  # the later of heartbeat and start is now older than 2 s
    (orphan,) = find_orphans(client, "heartbeat-test", stale_after_s=2)
    assert orphan.run_id == tracker.run_id and "no heartbeat for 0.0 h (host some-node)" in orphan.why
    tracker.heartbeat()
    assert find_orphans(client, "heartbeat-test", stale_after_s=2) == []


def test_promote_rollback_and_models_round_trip(mlflow_server, capsys):
    client = MlflowClient(mlflow_server)
    name = _name("ops")
    tracker = RunTracker(mlflow_server, workers.EXPERIMENT, name)
    v1, v2, v3 = (
        workers.tiny_version(client, name, fid, tracker.run_id, f"{name}-{i}") for i, fid in enumerate((9.0, 5.0, 7.0))
    )
    args = ["--tracking-uri", mlflow_server, "--set", f"registry.model_name={name}", "--actor", "alice@ops"]

    assert main(["rollback", "--reason", "nothing yet", *args]) == 2
    assert "nothing to roll back to" in capsys.readouterr().err
    assert main(["promote", "--version", v1, "--reason", "first reviewed model", *args]) == 0
    assert main(["promote", "--version", v2, "--reason", "better on review", *args]) == 0
    assert main(["promote", "--version", v3, "--reason", "radiologist preferred it", *args]) == 0
    assert str(champion_version(client, name).version) == v3
    assert main(["rollback", "--reason", "v3 draws artefacts", *args]) == 0
    assert str(champion_version(client, name).version) == v2
    assert main(["rollback", "--reason", "back to the first", *args]) == 0
    assert str(champion_version(client, name).version) == v1
    assert main(["rollback", "--reason", "no more", *args]) == 2
    capsys.readouterr()

    trail = audit_trail(client, name)
    assert [(r["action"], r["previous_champion"], r["new_champion"]) for r in trail] == [
        ("operator-promoted", None, v1),
        ("operator-promoted", v1, v2),
        ("operator-promoted", v2, v3),
        ("rolled-back", v3, v2),
        ("rolled-back", v2, v1),
    ]
    assert {r["actor"] for r in trail} == {"alice@ops"}
    assert trail[2]["reason"] == "radiologist preferred it" and "would not promote" in trail[2]["gate_verdict"]
    run_audit = client.list_artifacts(tracker.run_id, "gate/audit")
    assert len(run_audit) == 5  # one JSON artifact per decision in the versions' run

    assert main(["promote", "--version", "99", "--reason", "typo", *args]) == 2
    assert "has no version 99" in capsys.readouterr().err
    assert main(["promote", "--version", v1, "--reason", "", *args]) == 2
    assert "needs a --reason" in capsys.readouterr().err

    assert main(["models", "--tracking-uri", mlflow_server, "--set", f"registry.model_name={name}"]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.split()[:1] == [v1])
    assert "champion" in row and "rolled-back" in row and "9" in row
