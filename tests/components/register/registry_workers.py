"""Separate processes for the registry tests: concurrent gates and a crash between register and gate.

Run as a script (``python registry_workers.py MODE JSON``) with the project root on ``PYTHONPATH``; the tests load
:func:`tiny_version` and the rules from here too. A version made here is tiny (a text file in its run, registered
with ``create_model_version``): the gate reads only its ``metrics.*`` tags, and a real logged generator would cost
seconds per version.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from components.config import GateMetric

RULES = [GateMetric("fid", "min", 0.0)]
FLOOR = [GateMetric("fid", "at_most", 100.0)]
EXPERIMENT = "registry-workers"


def tiny_version(client, name: str, fid: float, run_id: str, run_key: str) -> str:
    """Register a tiny version of ``name`` with FID ``fid`` (and a +-1 interval) from run ``run_id``."""
    from mlflow.exceptions import MlflowException

    from components.registry import RUN_KEY_TAG

    client.log_text(run_id, f"tiny model, fid {fid}", "tiny/model.txt")
    try:
        client.create_registered_model(name)
    except MlflowException:  # another worker created it first
        pass
    tags = {
        "metrics.fid": repr(float(fid)),
        "metrics.fid_ci_low": repr(float(fid) - 1),
        "metrics.fid_ci_high": repr(float(fid) + 1),
        RUN_KEY_TAG: run_key,
    }
    version = client.create_model_version(name, f"runs:/{run_id}/tiny", run_id=run_id, tags=tags)
    return str(version.version)


def _wait_for(path: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {path}")
        time.sleep(0.01)


def concurrent(args: dict) -> None:
    """Per round: wait for ``go-R``, register, propose, report ready; wait for ``gate-R``, decide; print the result."""
    from components.promotion_lock import lock_target
    from components.register.gate import gate_decision
    from components.register.promotion import decide_and_promote
    from components.registry import champion_version, version_metrics
    from components.tracking import RunTracker

    sync = Path(args["sync"])
    (sync / f"up-{args['worker']}").touch()
    for r, job in enumerate(args["rounds"]):
        _wait_for(sync / f"go-{r}")
        tracker = RunTracker(args["url"], EXPERIMENT, job["key"])
        client = tracker.client
        version = tiny_version(client, job["name"], job["fid"], tracker.run_id, job["key"])
        champ = champion_version(client, job["name"])
        gate_decision({"fid": job["fid"]}, version_metrics(champ) if champ else None, RULES, FLOOR)  # the proposal
        (sync / f"ready-{r}-{args['worker']}").touch()
        _wait_for(sync / f"gate-{r}")
        record = decide_and_promote(
            client,
            job["name"],
            version,
            {"fid": job["fid"]},
            RULES,
            FLOOR,
            lock_target(args["url"], job["name"], args["lock_uri"]),
            {"actor": f"worker-{args['worker']}", "via": "test", "pipeline_run_key": job["key"]},
            timeout_s=60,
            proposed_against=str(champ.version) if champ else "None",
        )
        print(json.dumps({"round": r, "version": version, "fid": job["fid"], "action": record["action"]}), flush=True)
        (sync / f"done-{r}-{args['worker']}").touch()


def crash(args: dict) -> None:
    """Open a pipeline run as the local runner does, register a version, then die by SIGKILL before the gate."""
    from components.registry import CHALLENGER
    from components.runstate import claim_run
    from components.tracking import RunTracker

    tracker = RunTracker(args["url"], EXPERIMENT, args["key"])
    claim_run(tracker)
    version = tiny_version(tracker.client, args["name"], args["fid"], tracker.run_id, args["key"])
    tracker.client.set_registered_model_alias(args["name"], CHALLENGER, version)
    print(json.dumps({"version": version, "run_id": tracker.run_id}), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    {"concurrent": concurrent, "crash": crash}[sys.argv[1]](json.loads(sys.argv[2]))
