"""The champion/challenger gate's rules: a pure function of both metric sets, so every caller decides the same way.

Two kinds of rule (:class:`components.config.GateMetric`):

- **absolute** (``at_least`` / ``at_most``): the challenger's own value against the rule's ``margin`` used as a
  bound, whatever the champion scored and also when there is none. ``registry.floor`` holds only such rules: the
  floor a model must clear to become champion at all, so a useless first model is not promoted by default;
- **relative** (``min`` / ``max``): the challenger must beat the champion's value by more than ``margin`` (lower /
  higher is better). Without a champion there is nothing to beat and only the absolute rules decide.

An undefined value (missing, NaN) fails an absolute rule and a relative one; a champion without a value for a
relative rule's metric accepts the challenger's (the champion was registered before the metric existed).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from components.config import ABSOLUTE_MODES, GateMetric


def gate_decision(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    rules: Iterable[GateMetric],
    floor: Iterable[GateMetric] = (),
) -> tuple[bool, str]:
    """Promote when the challenger clears every absolute rule (the floor included) and beats the champion on the rest.

    Returns ``(promote, reason)``; the reason lists every rule with both values.
    """
    rules, floor = list(rules), list(floor)
    reasons, ok = [], True
    for source, rule in [("floor ", r) for r in floor] + [("", r) for r in rules if r.mode in ABSOLUTE_MODES]:
        meets, why = _absolute(challenger.get(rule.name), rule)
        reasons.append(source + why)
        ok = ok and meets
    if champion is None:
        first = "no champion to beat: the first model becomes champion" if ok else "no champion, but a rule fails"
        return ok, "; ".join([first, *reasons])
    for rule in (r for r in rules if r.mode not in ABSOLUTE_MODES):
        new, old = _defined(challenger.get(rule.name)), _defined(champion.get(rule.name))
        if new is None:
            reasons.append(f"{rule.name}: undefined for the challenger")
            ok = False
            continue
        if old is None:
            reasons.append(f"{rule.name}: champion has no value, challenger {new:.4g} accepted")
            continue
        if rule.mode not in ("min", "max"):  # a mode added to the config but not here must not read as "max"
            raise ValueError(f"gate rule {rule.name!r}: mode {rule.mode!r} has no decision rule")
        # Strictly better: a tie keeps the champion, so identical retrains do not churn the alias.
        better = new < old - rule.margin if rule.mode == "min" else new > old + rule.margin
        sign = "<" if rule.mode == "min" else ">"
        target = old - rule.margin if rule.mode == "min" else old + rule.margin
        reasons.append(
            f"{rule.name}: {new:.4g} {'meets' if better else 'misses'} {sign} {target:.4g} "
            f"(champion {old:.4g}, margin {rule.margin:g})"
        )
        ok = ok and better
    return ok, "; ".join(reasons)


def _defined(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def _absolute(value: float | None, rule: GateMetric) -> tuple[bool, str]:
    sign = ">=" if rule.mode == "at_least" else "<="
    value = _defined(value)
    if value is None:
        return False, (
            f"{rule.name}: undefined for the challenger, required {sign} {rule.margin:g} (e.g. a Dice baseline below "
            "eval.seg_min_baseline_dice, or too few test patients for an interval)"
        )
    meets = value >= rule.margin if rule.mode == "at_least" else value <= rule.margin
    return meets, f"{rule.name}: {value:.4g} {'meets' if meets else 'misses'} {sign} {rule.margin:g}"
