"""The report's first screen: the decision, the rule behind it, the deciding numbers and what makes them doubtful.

:func:`verdict` builds the panel from ``report.json`` (with the gate's audit record once the register stage added
it): the decision (``pending`` before the gate), each gate and floor rule with the challenger's value, its interval,
the champion's value and the rule's own outcome sentence from the gate, the headline numbers with their intervals,
held-out references and champion values, the paired comparison with the champion scored in this evaluation, and
whether the snapshot selection's winner is better than the final model beyond noise.

:func:`sanity_checks` lists what must make a reviewer doubt those numbers, as red (``fail``) or amber (``warn``)
banners: a Dice baseline that did not learn or is unstable across seeds, synthetic arms that were skipped, samples off
the real manifold (which also empties the memorization audit of meaning), too few samples, a feature extractor that
differs from the champion's or from the standard Inception network, near copies and collapsed classes. A promotion
with a failed check is shown amber, never green.
"""

from __future__ import annotations

from typing import Any

from components.evaluate.formatting import ci as ci_text
from components.evaluate.formatting import finite, fmt, short
from components.evaluate.metric_groups import direction, spaces_of, split_key
from components.evaluate.provenance import MIN_CLASS_SAMPLES, MIN_HEADLINE_SAMPLES
from components.evaluate.spaces import HOLDOUT
from components.metric_names import HEADLINE_DISTRIBUTION

OFF_MANIFOLD = 0.05  # precision (or coverage) at most this: the samples are off the real manifold
COLLAPSED = 0.3  # a class's diversity or lesion-spread ratio below this: collapsed
DICE_SEED_SPREAD = 0.25  # the real arm's Dice varying more than this between segmenter seeds: unstable
STANDARD_EXTRACTOR = "inception"
HEADLINE = (  # the numbers a reviewer reads first, when present
    *HEADLINE_DISTRIBUTION,
    "min_class_diversity_ratio",
    "dice_gain",
    "class_accuracy",
    "nn_copy_fraction",
)
MODE_TEXT = {
    "min": "lower than the champion's by more than {m:g}",
    "max": "higher than the champion's by more than {m:g}",
    "at_least": "at least {m:g}",
    "at_most": "at most {m:g}",
    "improves": "paired improvement over the champion, interval above {m:g}",
}


def _check(level: str, key: str, title: str, text: str) -> dict[str, str]:
    return {"level": level, "key": key, "title": title, "text": text}


def _dice_checks(d: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    if "arms" not in d:
        return out
    if d.get("baseline_ok") is False:
        failed = [c for c in d.get("classes", []) if c.get("baseline_ok") is False]
        which = ", ".join(
            f"{c.get('class')} (Dice {fmt(c.get('baseline'), 3)}, worst seed {fmt(c.get('baseline_worst_seed'), 3)})"
            for c in failed
        )
        out.append(
            _check(
                "fail",
                "dice_baseline",
                "Dice baseline failed",
                f"the segmenter trained on real data alone did not learn {which or 'the lesions'}: below Dice "
                f"{fmt(d.get('min_baseline_dice'))} in at least one seed. Every Dice gain there is undefined; no "
                "synthetic-data effect can be read from this run.",
            )
        )
    real = next((a for a in d.get("arms", []) if a.get("arm") == "real"), None)
    seeds = [v for v in (real or {}).get("per_seed", []) if finite(v)]
    if len(seeds) >= 2 and max(seeds) - min(seeds) > DICE_SEED_SPREAD:
        out.append(
            _check(
                "warn",
                "dice_unstable",
                "Dice unstable across segmenter seeds",
                f"the real-only arm scored {' / '.join(fmt(v, 2) for v in seeds)} over {len(seeds)} seeds: the "
                "segmenter's own variance is as large as the effects being measured.",
            )
        )
    for k in d.get("skipped", []):
        out.append(
            _check(
                "fail",
                "dice_skipped",
                f"Dice arm {k.get('arm')} not trained",
                f"{k.get('reason')}; its Dice and gain are undefined.",
            )
        )
    few = [c.get("class") for c in d.get("classes", []) if (c.get("n_patients") or 0) < 2]
    if few:
        out.append(
            _check(
                "warn",
                "dice_patients",
                "Too few test patients",
                f"{', '.join(map(str, few))}: fewer than 2 test patients, so no interval for the Dice there.",
            )
        )
    return out


def _manifold_checks(metrics: dict[str, Any], spaces: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    off = []
    for name, ident in spaces.items():
        p = ident.get("prefix", "")
        values = {m: metrics.get(p + m) for m in ("precision", "recall", "coverage")}
        if any(finite(values[m]) and values[m] <= OFF_MANIFOLD for m in ("precision", "coverage")):
            held = metrics.get(f"{HOLDOUT}{p}precision")
            off.append(
                f"{name}: precision {fmt(values['precision'], 2)}, recall {fmt(values['recall'], 2)}, coverage "
                f"{fmt(values['coverage'], 2)} (held-out real precision {fmt(held, 2)})"
            )
    if not off:
        return []
    return [
        _check(
            "fail",
            "off_manifold",
            "Samples off the real manifold",
            "; ".join(off) + ". The synthetic samples fall outside the real data's k-NN balls: fidelity is poor, "
            "and the memorization audit's all-clear means nothing (samples this far from every real image cannot "
            "be copies).",
        )
    ]


def _sample_checks(spaces: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    out = []
    primary = next(iter(spaces.items()), None)
    if primary is None:
        return out
    name, ident = primary
    n_real, n_fake = ident.get("n_real"), ident.get("n_fake")
    if any(finite(n) and n < MIN_HEADLINE_SAMPLES for n in (n_real, n_fake)):
        out.append(
            _check(
                "fail",
                "few_samples",
                "Too few samples",
                f"the headline metrics rest on {fmt(n_real)} real and {fmt(n_fake)} synthetic samples (fewer than "
                f"{MIN_HEADLINE_SAMPLES}): FID is strongly biased at this size and the k-NN metrics are coarse; "
                "compare only with runs of the same sizes.",
            )
        )
    minimum = ident.get("min_class_samples", MIN_CLASS_SAMPLES)
    small = [
        f"{cls} ({fmt(ident.get('n_real_per_class', {}).get(cls))} real / {fmt(n)} synthetic)"
        for cls, n in (ident.get("n_fake_per_class") or {}).items()
        if min(n, (ident.get("n_real_per_class") or {}).get(cls, n)) < minimum
    ]
    if small:
        out.append(
            _check(
                "warn",
                "few_class_samples",
                "Per-class values on few samples",
                f"{', '.join(small)}: below {minimum} samples, so their per-class FID/KID/k-NN values are flagged in "
                "the tables; read them as rough indications only.",
            )
        )
    return out


def _extractor_checks(report: dict[str, Any], spaces: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    out = []
    primary = next(iter(spaces.items()), None)
    if primary is None:
        return out
    name, ident = primary
    if name != STANDARD_EXTRACTOR:
        out.append(
            _check(
                "warn",
                "nonstandard_extractor",
                "Not the standard FID network",
                f"the headline FID/KID are in the {name} feature space (weights "
                f"{short(ident.get('fingerprint'), 24)}): not comparable with Inception FIDs, published or of other "
                "runs.",
            )
        )
    registry = report.get("champion_registry") or {}
    if not registry:
        return out
    theirs = (registry.get("spaces") or {}).get(name)
    champion = f"champion v{registry.get('version')}"
    if not theirs:
        known = ", ".join(registry.get("spaces") or {}) or "none recorded"
        out.append(
            _check(
                "fail" if registry.get("spaces") else "warn",
                "extractor_mismatch",
                "Extractor mismatch with the champion" if registry.get("spaces") else "Champion's extractor unknown",
                f"{champion}'s registered metrics come from feature spaces: {known}; this run's headline is {name}. "
                "Its stored FID and KID are other quantities: a gate rule comparing them compares nothing "
                "(the paired comparison scored here, in one space, does not have this problem)."
                if registry.get("spaces")
                else f"{champion} was registered without its feature-space identity: whether its stored metrics "
                "compare with this run's cannot be checked.",
            )
        )
        return out
    if str(theirs.get("fingerprint")) != str(ident.get("fingerprint")):
        out.append(
            _check(
                "fail",
                "extractor_mismatch",
                "Extractor mismatch with the champion",
                f"{champion}'s {name} metrics were measured with weights {short(theirs.get('fingerprint'), 24)}, "
                f"this run's with {short(ident.get('fingerprint'), 24)}: the stored values are not comparable.",
            )
        )
    elif theirs.get("reference_sha256") and theirs.get("reference_sha256") != ident.get("reference_sha256"):
        out.append(
            _check(
                "warn",
                "reference_mismatch",
                "Champion scored against another reference set",
                f"{champion}'s stored metrics used real set {short(theirs.get('reference_sha256'))} "
                f"({theirs.get('n_real', '?')} real / {theirs.get('n_fake', '?')} synthetic), this run's "
                f"{short(ident.get('reference_sha256'))} ({fmt(ident.get('n_real'))} / {fmt(ident.get('n_fake'))}): "
                "compare them loosely; the paired comparison scored here is the like-for-like one.",
            )
        )
    return out


def _privacy_and_collapse_checks(report: dict[str, Any], metrics: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    mem = report.get("memorization") or {}
    if mem.get("n_flagged"):
        out.append(
            _check(
                "fail",
                "near_copies",
                "Near copies of training images",
                f"{fmt(mem.get('n_flagged'))} synthetic samples exceed cosine similarity {fmt(mem.get('threshold'))} "
                "to a real training image (Memorization audit).",
            )
        )
    summaries = (
        ("min_class_diversity_ratio", "diversity_ratio", "pixel spread"),
        ("lesion_spread_ratio", "lesion_spread_ratio", "lesion-position spread"),
    )
    for key, per_class, what in summaries:
        value = metrics.get(key)
        if finite(value) and value < COLLAPSED:
            worst = [
                scope
                for k, v in metrics.items()
                for name, part, scope in [split_key(k)]
                if name == per_class and part == "value" and scope and finite(v) and v < COLLAPSED
            ]
            out.append(
                _check(
                    "warn",
                    f"collapse_{key}",
                    "Class collapse",
                    f"{what} of the synthetic samples is {fmt(value, 2)} of the real one in the worst class"
                    + (f" ({', '.join(worst)})" if worst else "")
                    + ": the generator covers few modes there.",
                )
            )
    return out


def sanity_checks(report: dict[str, Any]) -> list[dict[str, str]]:
    """Every failed (``fail``) or doubtful (``warn``) check of the report: ``level``, ``key``, ``title``, ``text``."""
    metrics = report.get("metrics") or {}
    spaces = spaces_of(report)
    checks = [
        *_dice_checks(report.get("dice") or {}),
        *_manifold_checks(metrics, spaces),
        *_sample_checks(spaces),
        *_extractor_checks(report, spaces),
        *_privacy_and_collapse_checks(report, metrics),
    ]
    return sorted(checks, key=lambda c: c["level"] != "fail")


def _ci_of(name: str, metrics: dict[str, Any]) -> tuple[str, Any, list[Any] | None]:
    """The metric a rule (or headline) name reads, its value and interval; a rule on a CI bound shows the metric."""
    base, part, scope = split_key(name)
    value_key = base + (f".{scope}" if scope else "")
    low, high = f"{base}_ci_low" + (f".{scope}" if scope else ""), f"{base}_ci_high" + (f".{scope}" if scope else "")
    ci = [metrics.get(low), metrics.get(high)] if low in metrics or high in metrics else None
    return value_key, metrics.get(value_key), ci


def _rules(gate: dict[str, Any], metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per floor and gate rule: what it asks, the values it read and the gate's own sentence on it."""
    sentences = [s.strip() for s in str(gate.get("reason") or "").split("; ")]
    challenger = {**metrics, **(gate.get("challenger_metrics") or {})}
    champion = gate.get("champion_metrics") or {}
    rows = []
    for source, rules in (("floor", gate.get("floor") or []), ("gate", gate.get("rules") or [])):
        for rule in rules:
            if not isinstance(rule, dict):
                continue
            name, mode, margin = rule.get("name", ""), rule.get("mode", ""), rule.get("margin", 0.0)
            prefix = f"floor {name}:" if source == "floor" else f"{name}:"
            said = next((s for s in sentences if s.startswith(prefix)), "")
            met = None
            if said:
                met = "meets" in said and "misses" not in said and "undefined" not in said
            shown, value, ci = _ci_of(name, challenger)
            rows.append(
                {
                    "source": source,
                    "name": name,
                    "reads": shown if shown != name else "",
                    "rule": MODE_TEXT.get(mode, mode).format(m=float(margin) if finite(margin) else 0.0),
                    "value": challenger.get(name),
                    "metric_value": value,
                    "ci": ci,
                    "champion": champion.get(name),
                    "outcome": said,
                    "met": met,
                }
            )
    return rows


def _headline(report: dict[str, Any], metrics: dict[str, Any], champion: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name in HEADLINE:
        if name not in metrics:
            continue
        _, value, ci = _ci_of(name, metrics)
        base = name.split("_", 1)[1] if name.startswith("medical_") else name
        rows.append(
            {
                "name": name,
                "value": value,
                "ci": ci,
                "better": direction(base),
                "holdout": metrics.get(HOLDOUT + name, metrics.get(f"holdout_{name}")),
                "champion": champion.get(name),
            }
        )
    return rows


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    """The verdict panel's view of ``report``.

    Keys: ``decision``, ``css``, ``reason``, ``checks``, ``rules``, ``headline``, ``champion``, ``selection`` and
    ``sure`` (one sentence on how sure the decision is).
    """
    gate = report.get("gate")
    metrics = {k: v for k, v in (report.get("metrics") or {}).items() if not isinstance(v, (dict, list))}
    checks = sanity_checks(report)
    failed = [c for c in checks if c["level"] == "fail"]
    if isinstance(gate, dict) and gate:
        action = str(gate.get("action") or gate.get("decision") or "pending")
    elif gate and not isinstance(gate, dict):
        action = str(gate)
    else:
        action = "pending"
    promoted, rejected = action.startswith("promot"), action.startswith(("reject", "refus"))
    css = "bad" if rejected else ("warn" if (promoted and failed) or not promoted else "good")
    gate_dict = gate if isinstance(gate, dict) else {}
    view = {
        "decision": action,
        "css": css,
        "gated": bool(gate_dict),
        "reason": gate_dict.get("reason", ""),
        "proposed": gate_dict.get("proposed"),
        "version": gate_dict.get("version") or gate_dict.get("challenger_version"),
        "champion_version": gate_dict.get("champion_version"),
        "n_failed": len(failed),
        "checks": checks,
        "rules": _rules(gate_dict, metrics) if gate_dict else [],
        "headline": _headline(report, metrics, gate_dict.get("champion_metrics") or {}),
        "champion": report.get("champion") or {},
        "selection": (report.get("selection") or {}).get("gap") or {},
        "selected_step": (report.get("selection") or {}).get("selected_step"),
        "final_step": (report.get("selection") or {}).get("final_step"),
    }
    view["sure"] = _how_sure(view, metrics)
    return view


def _how_sure(view: dict[str, Any], metrics: dict[str, Any]) -> str:
    """One sentence: what the decision rests on and how wide its uncertainty is."""
    parts = []
    champ = view["champion"]
    if champ.get("compared"):
        parts.append(
            f"against champion v{champ.get('version')} scored here: FID improvement "
            f"{fmt(champ.get('improvement'), 3)} {ci_text(champ.get('ci'))} ({champ.get('verdict')})"
        )
    _, fid, fid_ci = _ci_of("fid", metrics)
    if finite(fid):
        parts.append(f"FID {fmt(fid, 4)} {ci_text(fid_ci)}")
    sel = view["selection"]
    if sel.get("compared"):
        parts.append(
            f"the selected snapshot {sel.get('verdict')} (FID gap {fmt(sel.get('gap'), 3)} {ci_text(sel.get('ci'))})"
        )
    if view["n_failed"]:
        parts.append(f"{view['n_failed']} sanity check(s) failed")
    return "; ".join(parts)
