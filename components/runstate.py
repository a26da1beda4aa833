"""Whether a pipeline run's MLflow run is still alive, and closing the ones that are not.

An MLflow run only ends when someone ends it: a pipeline killed mid-way (SIGKILL, a lost node, a closed laptop)
leaves its run RUNNING forever, and a version it registered without a gate decision. A RUNNING run is an
**orphan** when:

- it carries the owner tags the local runner writes when it creates the run (``medgan.owner.host``,
  ``medgan.owner.pid`` and ``medgan.owner.proc``, the process's boot id and start time from ``/proc``), this is
  that host, and that process is gone or the PID now belongs to another process: certain, whatever the age;
- otherwise (another host, or a Kubeflow run, which has no single owning process): its last sign of life, the
  ``medgan.heartbeat`` tag (set when a stage opens the run and at most every :data:`HEARTBEAT_EVERY_S` while it
  logs metrics, e.g. every training log step), or the run's start when it has none, is older than
  ``stale_after_s`` (default 12 h: longer than any stage goes without logging at the shipped presets).

:func:`close_run` ends an orphan (``KILLED``) or a failed run (``FAILED``) and gives each version the run
registered without a gate decision an audit record: ``refused`` (the gate never decided; the version is not
promoted), or ``promoted`` when ``champion`` already points at it (the run died between moving the alias and
writing the record).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.registry import CHAMPION, FINAL, MOVES, actor, champion_version, record_decision
from components.tracking import HEARTBEAT_TAG, RUN_KEY_TAG

OWNER_HOST, OWNER_PID, OWNER_PROC = "medgan.owner.host", "medgan.owner.pid", "medgan.owner.proc"
CLOSED_TAG = "medgan.closed"  # why a run was closed by a failure handler or a repair
HEARTBEAT_EVERY_S = 60.0
STALE_AFTER_S = 12 * 3600.0


def process_identity(pid: int) -> str | None:
    """``<boot id>:<start time in clock ticks>`` of a process (Linux ``/proc``), or None where that is unknown."""
    found = _proc_stat(pid)
    return found[1] if found else None


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, identity) of a process from ``/proc``, None when there is no such entry."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name in (...) may hold spaces
    return fields[0], f"{boot}:{fields[19]}"  # fields[0] is stat's field 3 (state), fields[19] field 22 (starttime)


def owner_tags(pid: int | None = None) -> dict[str, str]:
    """Tags naming the process that runs a pipeline (this one by default), for :func:`find_orphans`."""
    pid = pid or os.getpid()
    return {
        OWNER_HOST: socket.gethostname(),
        OWNER_PID: str(pid),
        OWNER_PROC: process_identity(pid) or "",
        HEARTBEAT_TAG: str(time.time()),
    }


def claim_run(tracker: Any, pid: int | None = None) -> None:
    """Record in the run that this process (or ``pid``) runs the pipeline: the local runner calls it first."""
    tracker.set_tags(owner_tags(pid))


def process_alive(pid: int, identity: str = "") -> bool:
    """Whether process ``pid`` runs and, when ``identity`` is known, is still the same process (not a reused PID)."""
    found = _proc_stat(pid)
    if found is not None:
        state, current = found
        return state not in ("Z", "X") and (not identity or current == identity)  # a zombie has exited
    if Path("/proc").is_dir():  # Linux and no /proc/<pid>: gone
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@dataclass
class Orphan:
    """A RUNNING MLflow run whose pipeline is gone."""

    run_id: str
    run_key: str
    why: str
    last_seen: float  # seconds since the epoch


def find_orphans(client: Any, experiment: str, stale_after_s: float = STALE_AFTER_S) -> list[Orphan]:
    """The orphaned runs of experiment ``experiment`` (see the module docstring), oldest first."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    host, now = socket.gethostname(), time.time()
    out = []
    for run in client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        started = run.info.start_time / 1000 if run.info.start_time else now
        try:
            last = max(float(tags.get(HEARTBEAT_TAG) or 0.0), started)
        except ValueError:
            last = started
        key = tags.get(RUN_KEY_TAG, run.info.run_name or run.info.run_id)
        if tags.get(OWNER_HOST) == host and tags.get(OWNER_PID, "").isdigit():
            pid = int(tags[OWNER_PID])
            if not process_alive(pid, tags.get(OWNER_PROC, "")):
                out.append(Orphan(run.info.run_id, key, f"its process {pid} on {host} is gone", last))
        elif now - last > stale_after_s:
            where = f"host {tags[OWNER_HOST]}" if tags.get(OWNER_HOST) else "no owning process recorded"
            age = (now - last) / 3600
            out.append(Orphan(run.info.run_id, key, f"no heartbeat for {age:.1f} h ({where})", last))
    return sorted(out, key=lambda o: o.last_seen)


def close_run(
    client: Any, run_id: str, status: str, reason: str, who: str | None = None, via: str = "medgan runs --repair"
) -> list[dict[str, Any]]:
    """End run ``run_id`` with ``status`` (FAILED / KILLED) and settle the gate of every version it registered.

    Returns the audit records written (one per version left without a gate decision).
    """
    client.set_tag(run_id, CLOSED_TAG, f"{status} by {actor(who)} via {via}: {reason}"[:5000])
    client.set_terminated(run_id, status)
    run_key = client.get_run(run_id).data.tags.get(RUN_KEY_TAG, "")
    records = []
    for version in client.search_model_versions(f"run_id = '{run_id}'"):
        if version.tags.get("gate.decision") in (*FINAL, *MOVES):
            continue
        name = version.name
        champion = champion_version(client, name)
        moved = champion is not None and str(champion.version) == str(version.version)
        records.append(
            record_decision(
                client,
                {
                    "model_name": name,
                    "version": str(version.version),
                    "action": "promoted" if moved else "refused",
                    "reason": (
                        f"recovered: {CHAMPION} already points at version {version.version}; the pipeline run ended "
                        f"{status} ({reason}) before its gate wrote this record"
                        if moved
                        else f"the pipeline run ended {status} ({reason}) before its gate decided: not promoted"
                    ),
                    "actor": actor(who),
                    "via": via,
                    "pipeline_run_key": run_key,
                    "mlflow_run_id": run_id,
                    "champion_version": str(champion.version) if champion is not None else None,
                    "new_champion": str(champion.version) if champion is not None else None,
                },
            )
        )
    return records
