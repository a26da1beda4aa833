"""The champion/challenger gate's rules: a pure function of both metric sets, so every caller decides the same way.

Two kinds of rule (:class:`components.config.GateMetric`):

- **absolute** (``at_least`` / ``at_most``): the challenger's own value against the rule's ``margin`` used as a
  bound, whatever the champion scored and also when there is none. ``registry.floor`` holds only such rules: the
  floor a model must clear to become champion at all, so a useless first model is not promoted by default;
- **relative** (``min`` / ``max``): the challenger must beat the champion's value by more than ``margin`` (lower /
  higher is better). Without a champion there is nothing to beat and only the absolute rules decide.
- **paired** (``improves``): the challenger's evaluation scored the champion too, on the same data, extractor,
  labels and latents (:mod:`components.evaluate.champion`); the lower end of the improvement's paired bootstrap
  interval (``<name>_improvement_ci_low``) must exceed ``margin``, so a difference within noise keeps the champion.
  The comparison must have been made against the version that is champion when the gate decides.

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
    champion_version: str | None = None,
    not_comparable: str | None = None,
) -> tuple[bool, str]:
    """Promote when the challenger clears every absolute rule (the floor included) and beats the champion on the rest.

    ``champion_version`` is the current champion's version (paired rules check that the challenger was compared
    with it); ``not_comparable`` says why the two versions' registered metrics were measured differently
    (:func:`comparability`), which fails every relative rule. Returns ``(promote, reason)``; the reason lists every
    rule with both values.
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
        if rule.mode == "improves":
            meets, why = _improves(challenger, rule, champion_version)
            reasons.append(why)
            ok = ok and meets
            continue
        if not_comparable:
            reasons.append(
                f"{rule.name}: the registered values are not comparable ({not_comparable}); use mode improves"
            )
            ok = False
            continue
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


def _improves(challenger: dict[str, float], rule: GateMetric, champion_version: str | None) -> tuple[bool, str]:
    """A paired rule: the improvement over the champion, measured in the challenger's evaluation, beyond noise."""
    compared = _defined(challenger.get("champion_version"))
    if compared is None:
        return False, (
            f"{rule.name}: the challenger's evaluation did not score a champion (there was none then, or "
            "eval.compare_champion was off): no paired comparison to decide on"
        )
    if champion_version is not None and str(int(compared)) != str(champion_version):
        return False, (
            f"{rule.name}: compared with champion v{int(compared)}, but the champion is now v{champion_version}: "
            "evaluate again against it"
        )
    gain, low, high = (_defined(challenger.get(f"{rule.name}_improvement{s}")) for s in ("", "_ci_low", "_ci_high"))
    if gain is None or low is None or high is None:
        return False, f"{rule.name}: no interval for the improvement over champion v{int(compared)} (eval.bootstrap 0?)"
    meets = low > rule.margin
    return meets, (
        f"{rule.name}: improvement over champion v{int(compared)} {gain:+.4g} (95% CI {low:+.4g}..{high:+.4g}, paired) "
        f"{'clears' if meets else 'does not clear'} > {rule.margin:g}"
        + ("" if meets else ": within noise, the champion stays" if high >= rule.margin else ": the champion is better")
    )


# Fields of a feature space's identity that must agree for two registered values of it to be compared: the network
# (weights), the sample budget and the real reference set the values were measured against.
COMPARED_FIELDS = ("fingerprint", "n_fake", "n_real", "reference_sha256", "resampling")


def comparability(challenger_tags: dict[str, str], champion_tags: dict[str, str]) -> str | None:
    """Why two versions' registered metrics cannot be compared, from their ``extractor.<space>.<field>`` tags, or None.

    The primary feature spaces (``role`` primary) must be the same space with the same :data:`COMPARED_FIELDS`; a
    field only one version records (registered before it existed) is not held against it.
    """

    def primary(tags: dict[str, str]) -> tuple[str | None, dict[str, str]]:
        for key, value in tags.items():
            if key.startswith("extractor.") and key.endswith(".role") and value == "primary":
                space = key[len("extractor.") : -len(".role")]
                return space, {
                    f: tags[f"extractor.{space}.{f}"] for f in COMPARED_FIELDS if f"extractor.{space}.{f}" in tags
                }
        return None, {}

    (new_space, new), (old_space, old) = primary(challenger_tags), primary(champion_tags)
    if new_space is None or old_space is None:
        return None  # a version registered before the identity was recorded: nothing to hold against it
    if new_space != old_space:
        return f"feature space {new_space} vs the champion's {old_space}"
    differ = [f for f in COMPARED_FIELDS if f in new and f in old and new[f] != old[f]]
    if differ:
        return ", ".join(f"{f} {new[f][:16]} vs the champion's {old[f][:16]}" for f in differ) + f" ({new_space})"
    return None
