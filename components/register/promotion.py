"""Deciding and moving ``champion``: one critical section, compare-and-set, and an audit record for every decision.

The register step proposes a decision (it drives the DAG's visible ``dsl.If``); the binding one is taken here, by
the gate step, under the model's promotion lock (:mod:`components.promotion_lock`):

1. read the current champion and decide against it (:func:`components.register.gate.gate_decision`); when the
   proposal was taken against another champion, record ``re-taken`` first;
2. compare-and-set: re-read the champion right before moving the alias and move it only if it still points at the
   version the decision was taken against; if it moved (someone set it outside the lock, e.g. in the MLflow UI),
   record ``re-taken`` and decide again against the new champion, up to :data:`MAX_ATTEMPTS` times;
3. record the outcome: ``promoted`` or ``rejected``; ``refused`` when no decision could be taken (lock timeout,
   champion still moving after every attempt), and the gate step then fails.

Operators move the alias through the same lock, compare-and-set and audit (:func:`operator_promote`,
:func:`rollback`). A retried gate step finds its version's final record and returns it instead of deciding twice.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from components.config import GateMetric
from components.errors import RegistryError
from components.promotion_lock import LockTarget, promotion_lock
from components.register.gate import comparability, gate_decision
from components.registry import (
    CHAMPION,
    FINAL,
    audit_trail,
    champion_history,
    champion_version,
    record_decision,
    version_metrics,
    version_trail,
)

MAX_ATTEMPTS = 5


def decide_and_promote(
    client: Any,
    model_name: str,
    version: str,
    challenger_metrics: dict[str, Any],
    rules: list[GateMetric],
    floor: list[GateMetric],
    target: LockTarget,
    context: dict[str, Any],
    timeout_s: float = 300.0,
    proposed_against: str | None = None,
    before_move: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Take the gate decision for ``version`` under the lock, move ``champion`` on promotion; return the final record.

    ``context``: ``actor``, ``via``, ``pipeline_run_key``, ``mlflow_run_id`` for the audit records.
    ``proposed_against``: the champion version the register step's proposal was taken against (``"none"`` for none).
    ``before_move``: called between the decision and the compare-and-set (tests use it to move the alias there).
    """
    version = str(version)
    base = {
        **context,
        "model_name": model_name,
        "version": version,
        "rules": [asdict(r) for r in rules],
        "floor": [asdict(r) for r in floor],
        "lock": target.describe(),
        "challenger_metrics": _scalars(challenger_metrics),
    }
    try:
        with promotion_lock(target, timeout_s):
            done = _final_record(client, model_name, version)
            if done is not None:
                return done
            against = proposed_against
            for attempt in range(1, MAX_ATTEMPTS + 1):
                champ = champion_version(client, model_name)
                champ_v = str(champ.version) if champ is not None else None
                if against is not None and against != str(champ_v):
                    record_decision(
                        client,
                        {
                            **base,
                            "action": "re-taken",
                            "attempt": attempt,
                            "champion_version": against,
                            "reason": f"decided against champion {against}, but champion is now {champ_v}: "
                            "the decision is taken again against it",
                        },
                    )
                if champ_v == version:  # the alias moved before a crash: the gate step is being retried
                    return record_decision(
                        client,
                        {
                            **base,
                            "action": "promoted",
                            "attempt": attempt,
                            "champion_version": champ_v,
                            "new_champion": version,
                            "reason": "champion already points at this version (gate step retried after the move)",
                        },
                    )
                champ_metrics = version_metrics(champ) if champ is not None else None
                promote, reason = gate_decision(
                    challenger_metrics,
                    champ_metrics,
                    rules,
                    floor,
                    champ_v,
                    _comparability(client, model_name, version, champ),
                )
                decided = {
                    **base,
                    "attempt": attempt,
                    "champion_version": champ_v,
                    "champion_metrics": champ_metrics,
                    "reason": reason,
                }
                if not promote:
                    return record_decision(client, {**decided, "action": "rejected", "new_champion": champ_v})
                if before_move is not None:
                    before_move()
                moved = _compare_and_set(client, model_name, champ_v, version, optimistic=target.kind == "none")
                if moved is None:
                    return record_decision(
                        client,
                        {**decided, "action": "promoted", "previous_champion": champ_v, "new_champion": version},
                    )
                against = str(champ_v)  # the next attempt records the re-take against the champion it finds
            raise RegistryError(
                f"champion of {model_name!r} kept moving during {MAX_ATTEMPTS} attempts to decide on version {version}"
            )
    except RegistryError as exc:
        record_decision(client, {**base, "action": "refused", "reason": f"no decision: {exc}"})
        raise


def _compare_and_set(client: Any, name: str, expected: str | None, version: str, optimistic: bool) -> str | None:
    """Point ``champion`` at ``version`` if it still points at ``expected``; None when moved, else what it found."""
    now = champion_version(client, name)
    found = str(now.version) if now is not None else None
    if found != expected:
        return str(found)
    client.set_registered_model_alias(name, CHAMPION, version)
    if optimistic:  # no lock: give a concurrent writer time to land, then check that the move stuck
        time.sleep(random.uniform(0.2, 0.6))
        after = champion_version(client, name)
        if after is None or str(after.version) != version:
            return str(after.version) if after is not None else "None"
    return None


def _final_record(client: Any, name: str, version: str) -> dict[str, Any] | None:
    """The final gate record of ``version`` (promoted / rejected / refused by a gate), if it has one."""
    mv = client.get_model_version(name, version)
    if mv.tags.get("gate.decision") not in FINAL:
        return None
    finals = [r for r in version_trail(mv) if r.get("action") in FINAL]
    return finals[-1] if finals else None


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sorted(metrics.items()) if not isinstance(v, (dict, list))}


def operator_promote(
    client: Any,
    model_name: str,
    version: str,
    reason: str,
    who: str,
    target: LockTarget,
    rules: list[GateMetric],
    floor: list[GateMetric],
    timeout_s: float = 300.0,
) -> dict[str, Any]:
    """Move ``champion`` to ``version`` by an operator's decision; the gate's verdict is recorded, not enforced."""

    def chosen(champ_v: str | None, trail: list[dict[str, Any]]) -> str:
        return str(version)

    return _operator_move(
        client, model_name, chosen, "operator-promoted", reason, who, target, rules, floor, timeout_s, "medgan promote"
    )


def rollback(
    client: Any,
    model_name: str,
    reason: str,
    who: str,
    target: LockTarget,
    rules: list[GateMetric],
    floor: list[GateMetric],
    timeout_s: float = 300.0,
) -> dict[str, Any]:
    """Move ``champion`` back to the previous champion, found by replaying the audit trail."""

    def previous(champ_v: str | None, trail: list[dict[str, Any]]) -> str:
        stack = champion_history(trail)
        if champ_v is None:
            raise RegistryError(f"{model_name!r} has no champion: nothing to roll back to")
        if not stack or stack[-1] != champ_v:
            raise RegistryError(
                f"champion of {model_name!r} is version {champ_v} but its audit trail ends at "
                f"{stack[-1] if stack else 'no champion'}: the alias was moved outside medgan; choose the version "
                "with `medgan promote --version V`"
            )
        if len(stack) < 2:
            raise RegistryError(f"{model_name!r} has had no champion before version {champ_v}: nothing to roll back to")
        return stack[-2]

    return _operator_move(
        client, model_name, previous, "rolled-back", reason, who, target, rules, floor, timeout_s, "medgan rollback"
    )


def _operator_move(
    client: Any,
    name: str,
    choose: Callable[[str | None, list[dict[str, Any]]], str],
    action: str,
    reason: str,
    who: str,
    target: LockTarget,
    rules: list[GateMetric],
    floor: list[GateMetric],
    timeout_s: float,
    via: str,
) -> dict[str, Any]:
    from mlflow.exceptions import MlflowException

    if not reason.strip():
        raise RegistryError(f"{via} needs a --reason: it goes into the audit record")
    with promotion_lock(target, timeout_s):
        for attempt in range(1, MAX_ATTEMPTS + 1):
            champ = champion_version(client, name)
            champ_v = str(champ.version) if champ is not None else None
            version = choose(champ_v, audit_trail(client, name))
            try:
                mv = client.get_model_version(name, version)
            except MlflowException:
                raise RegistryError(f"{name!r} has no version {version}") from None
            if mv.status != "READY":
                raise RegistryError(f"version {version} of {name!r} is {mv.status}, not READY")
            if champ_v == version:
                raise RegistryError(f"version {version} is already the champion of {name!r}")
            champ_metrics = version_metrics(champ) if champ is not None else None
            verdict, why = gate_decision(
                version_metrics(mv),
                champ_metrics,
                rules,
                floor,
                champ_v,
                comparability(mv.tags, champ.tags) if champ else None,
            )
            moved = _compare_and_set(client, name, champ_v, version, optimistic=target.kind == "none")
            if moved is not None:
                continue  # moved under us outside the lock: choose again against the new champion
            return record_decision(
                client,
                {
                    "model_name": name,
                    "version": version,
                    "action": action,
                    "reason": reason,
                    "actor": who,
                    "via": via,
                    "attempt": attempt,
                    "lock": target.describe(),
                    "champion_version": champ_v,
                    "previous_champion": champ_v,
                    "new_champion": version,
                    "gate_verdict": ("the gate would promote it: " if verdict else "the gate would not promote it: ")
                    + why,
                    "rules": [asdict(r) for r in rules],
                    "floor": [asdict(r) for r in floor],
                    "challenger_metrics": version_metrics(mv),
                    "champion_metrics": champ_metrics,
                },
            )
    raise RegistryError(f"champion of {name!r} kept moving during {MAX_ATTEMPTS} attempts; nothing changed")


def _comparability(client: Any, model_name: str, version: str, champ: Any | None) -> str | None:
    """:func:`components.register.gate.comparability` of ``version`` and the champion ``champ`` (None: no champion)."""
    if champ is None:
        return None
    return comparability(client.get_model_version(model_name, version).tags, champ.tags)
