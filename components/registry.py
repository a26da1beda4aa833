"""The MLflow model registry as stages and commands share it: aliases, versions, metrics and the audit trail.

A shared building block like :mod:`components.tracking`, so that no stage imports another: validate reads the
champion here, register writes versions and gate decisions here, and the operator commands (``medgan promote``,
``rollback``, ``models``, ``runs --repair``) use the same functions.

**Audit trail.** Every decision about a version (the gate's ``promoted`` / ``rejected`` / ``re-taken`` /
``refused``, an operator's ``operator-promoted`` / ``rolled-back``) is one record, written by
:func:`record_decision` in four places, none of them ever overwritten:

- a registered-model tag ``audit.<stamp>`` (the model's history, compact: the rule metrics only; a registered
  model's tag value holds 5000 characters in the SQL stores), which :func:`champion_history` replays for rollback;
- a version tag ``audit.<stamp>`` on the version decided about (the whole record, both metric sets);
- the version's ``gate.*`` tags (the latest decision, for ``medgan models`` and the MLflow UI);
- the JSON artifact ``gate/audit/<stamp>-<action>.json`` in the version's MLflow run.

``<stamp>`` is a UTC time to the microsecond plus a random suffix: sortable, and unique without a counter.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import socket
import time
from typing import Any

CHALLENGER, CHAMPION = "challenger", "champion"
METRIC_TAG = "metrics."  # version tags holding the evaluate stage's metrics (full precision, repr of the float)
RUN_KEY_TAG = "pipeline.run_key"  # version tag: the pipeline run that registered the version
AUDIT_TAG = "audit."
# Actions that move the champion alias (replayed by champion_history), and those that end a version's gate.
MOVES = ("promoted", "operator-promoted", "rolled-back")
FINAL = ("promoted", "rejected", "refused")
MODEL_TAG_LIMIT = 5000  # registered_model_tags.value is VARCHAR(5000) in MLflow's SQL schema


def champion_version(client: Any, model_name: str) -> Any | None:
    """The version the ``champion`` alias points at, or None."""
    return alias_version(client, model_name, CHAMPION)


def alias_version(client: Any, model_name: str, alias: str) -> Any | None:
    """The version ``alias`` points at, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def version_metrics(version: Any | None) -> dict[str, float]:
    """The metrics a version was registered with (its ``metrics.*`` tags); empty for None."""
    if version is None:
        return {}
    return {k[len(METRIC_TAG) :]: float(v) for k, v in version.tags.items() if k.startswith(METRIC_TAG)}


def all_versions(client: Any, model_name: str) -> list[Any]:
    """Every version of ``model_name``, oldest first (paged through, as a server caps a page)."""
    out, token = [], None
    while True:
        page = client.search_model_versions(f"name = '{_quote(model_name)}'", page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            break
    return sorted(out, key=lambda v: int(v.version))


def version_for_run(client: Any, model_name: str, run_key: str) -> Any | None:
    """The version a pipeline run already registered (tag ``pipeline.run_key``), the newest usable one, or None."""
    found = client.search_model_versions(
        f"name = '{_quote(model_name)}' and tags.`{RUN_KEY_TAG}` = '{_quote(run_key)}'"
    )
    usable = [v for v in found if v.status != "FAILED_REGISTRATION"]
    return max(usable, key=lambda v: int(v.version)) if usable else None


def model_exists(client: Any, model_name: str) -> bool:
    """Whether the registered model exists."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(model_name)
    except MlflowException:
        return False
    return True


def actor(explicit: str | None = None) -> str:
    """Who acts: ``explicit`` when given, else ``$USER@host`` of this process."""
    if explicit:
        return explicit
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid (containers)
        user = os.environ.get("USER", "unknown")
    return f"{user}@{socket.gethostname()}"


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the millisecond."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


def record_decision(client: Any, record: dict[str, Any]) -> dict[str, Any]:
    """Write one audit record (see the module docstring); returns it with its ``stamp``.

    ``record`` needs ``model_name``, ``version`` (the version decided about), ``action`` and ``reason``; the
    version's run gets the JSON artifact when the version has a run.
    """
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now * 1e6) % 1_000_000:06d}Z-"
    stamp += secrets.token_hex(2)
    record = {"at": utc_now(), **record, "stamp": stamp}
    name, version, action = record["model_name"], str(record["version"]), record["action"]
    full = json.dumps(record, sort_keys=True, default=str)
    client.set_model_version_tag(name, version, AUDIT_TAG + stamp, full)
    client.set_registered_model_tag(name, AUDIT_TAG + stamp, _compact(record))
    for key, value in {
        "gate.decision": action,
        "gate.reason": str(record.get("reason", ""))[:5000],
        "gate.at": record["at"],
        "gate.actor": record.get("actor", ""),
        "gate.champion_version": str(record.get("champion_version")),
    }.items():
        client.set_model_version_tag(name, version, key, value)
    summary = f"{action} {record['at']}: {record.get('reason', '')}"
    client.update_model_version(name, version, description=summary[:5000])
    run_id = client.get_model_version(name, version).run_id
    if run_id:
        client.log_text(run_id, json.dumps(record, indent=2, sort_keys=True, default=str), audit_artifact(record))
    return record


def audit_artifact(record: dict[str, Any]) -> str:
    """Where :func:`record_decision` put a record in the version's run."""
    return f"gate/audit/{record['stamp']}-{record['action']}.json"


def _compact(record: dict[str, Any]) -> str:
    """The model-level form of a record: everything but the metric sets, plus the metrics the rules name."""
    names = {r["name"] for r in [*record.get("rules", []), *record.get("floor", [])] if isinstance(r, dict)}
    keys = {n + s for n in names for s in ("", "_ci_low", "_ci_high")}
    small = {k: v for k, v in record.items() if k not in ("challenger_metrics", "champion_metrics", "rules", "floor")}
    for side in ("challenger_metrics", "champion_metrics"):
        if isinstance(record.get(side), dict):
            small[side] = {k: v for k, v in record[side].items() if k in keys}
    text = json.dumps(small, sort_keys=True, default=str)
    if len(text) > MODEL_TAG_LIMIT:  # a long reason: the version's own record keeps all of it
        small["reason"] = str(small.get("reason", ""))[: max(0, len(small.get("reason", "")) - len(text) + 4900)]
        small["truncated"] = True
        text = json.dumps(small, sort_keys=True, default=str)
    return text[:MODEL_TAG_LIMIT]


def audit_trail(client: Any, model_name: str) -> list[dict[str, Any]]:
    """The model's audit records, oldest first (empty when the model does not exist)."""
    from mlflow.exceptions import MlflowException

    try:
        tags = client.get_registered_model(model_name).tags
    except MlflowException:
        return []
    records = []
    for key in sorted(k for k in tags if k.startswith(AUDIT_TAG)):
        try:
            records.append(json.loads(tags[key]))
        except ValueError:
            records.append({"stamp": key[len(AUDIT_TAG) :], "action": "unreadable", "raw": tags[key][:200]})
    return records


def version_trail(version: Any) -> list[dict[str, Any]]:
    """The audit records kept on one version, oldest first."""
    return [json.loads(version.tags[k]) for k in sorted(version.tags) if k.startswith(AUDIT_TAG)]


def champion_history(trail: list[dict[str, Any]]) -> list[str]:
    """The champion stack the audit trail describes: every move pushes its version, a rollback pops one.

    The last entry is the version the trail says is champion; the one before it is where a rollback goes.
    """
    stack: list[str] = []
    for rec in trail:
        if rec.get("action") not in MOVES:
            continue
        new = str(rec.get("new_champion"))
        if rec["action"] == "rolled-back":
            if stack:
                stack.pop()
            if not stack or stack[-1] != new:  # a trail that starts mid-history
                stack.append(new)
        else:
            stack.append(new)
    return stack


def _quote(value: str) -> str:
    return value.replace("'", "''")
