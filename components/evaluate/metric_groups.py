"""The report's metric tables: the flat ``metrics.json`` keys sorted into what a reviewer asks of a generator.

Groups (:data:`GROUPS`): **fidelity** (do the samples look real), **diversity** (do they cover the real variety),
**utility** (do they help a segmenter on real patients), **privacy** (do they copy) and **training health** (was the
right snapshot kept); counts and steps are not metrics and go to a table of their own (:data:`COUNTS`), shown as
integers. Every row has the value, its 95 % interval, which direction is better, the held-out real reference (the val
split's real images scored as if synthetic), the champion's value where the gate had one, the sample counts and the
source: the feature space's name, weights fingerprint and reference-set hash for the distribution metrics, so two
numbers from different extractors never sit in one row. Per-class values get a table per feature space, with each
class's sample counts; a class below the minimum count (:data:`components.evaluate.provenance.MIN_CLASS_SAMPLES`) is
flagged, not hidden. A key no group knows lands in *other*, so nothing in ``metrics.json`` goes unseen.
"""

from __future__ import annotations

from typing import Any

from components.evaluate.formatting import count, short
from components.evaluate.provenance import MIN_CLASS_SAMPLES
from components.evaluate.spaces import EXTRACTORS_KEY, HOLDOUT, scope_name

LOWER, HIGHER, NEAR_ONE, REFERENCE = "lower", "higher", "\u2248 1 (as real)", "reference"

# group -> (title, what it answers, base metric names in display order)
GROUPS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "fidelity": (
        "Fidelity",
        "Do the synthetic pairs look like real ones? Distances between the real and synthetic feature distributions "
        "(FID, KID: lower is better), the share of synthetic samples on the real manifold (precision) and how densely "
        "they sit there (density, 1 as real data), whether a classifier of real data recognises each class, and "
        "whether the masks sit on lesion-like contrast.",
        (
            "fid",
            "kid",
            "precision",
            "density",
            "fid_improvement",
            "champion_fid",
            "class_accuracy",
            "mask_contrast_gap",
            "mask_label_mismatch",
        ),
    ),
    "diversity": (
        "Diversity",
        "Do the synthetic pairs cover the real variety, or did classes collapse onto a few modes? Recall and coverage "
        "(share of real samples the synthetic ones reach) in feature space; pixel spread and lesion-position spread of "
        "each class, synthetic over real (1 as real, near 0 collapsed, well above 1 noise).",
        (
            "recall",
            "coverage",
            "diversity_ratio_weighted",
            "diversity_ratio",
            "min_class_diversity_ratio",
            "max_class_diversity_ratio",
            "lesion_spread_ratio",
        ),
    ),
    "utility": (
        "Utility",
        "Does synthetic data help a segmentation model on real test patients? Dice of each training arm, the gain over "
        "the real-only arm and false positives on lesion-free slices (per class: Downstream segmentation below).",
        (),
    ),
    "privacy": (
        "Privacy",
        "Do synthetic samples copy training images? Cosine similarity of each synthetic sample to its nearest real "
        "training sample, against the real images' own nearest-neighbour similarity (per class: Per-class trust).",
        ("nn_copy_fraction", "nn_similarity_max", "nn_similarity_mean", "nn_real_baseline_median"),
    ),
    "training": (
        "Training health",
        "Was the right generator kept? The snapshot selection's FID advantage over the final model, paired over the "
        "same latents with val patients resampled (positive: the selected snapshot is better); the FID and loss "
        "curves are under Details.",
        ("selection_fid_gap",),
    ),
}
UTILITY_PREFIXES = ("dice_", "seg_fp_rate_", "topup_acceptance_rate")
# Not metrics: counts, steps, versions and yes/no flags (shown as such, never with a direction)
COUNTS = (
    "n_synthetic",
    "n_real_train",
    "selected_step",
    "final_step",
    "champion_version",
    "topup_n",
    "topup_shortfall",
    "topup_kept",
    "dice_baseline_ok",
)
FLAGS = ("dice_baseline_ok",)
# Per-class values that a dedicated section shows (Dice, trust, consistency, top-up)
SHOWN_ELSEWHERE = (
    "dice_",
    "seg_fp_rate_",
    "class_accuracy",
    "holdout_class_accuracy",
    "nn_",
    "mask_contrast_",
    "topup_",
)
DIRECTIONS = {
    **dict.fromkeys(("fid", "kid", "nn_copy_fraction", "nn_similarity_max", "mask_contrast_gap"), LOWER),
    **dict.fromkeys(("mask_label_mismatch",), LOWER),
    **dict.fromkeys(("precision", "recall", "coverage", "class_accuracy", "fid_improvement"), HIGHER),
    **dict.fromkeys(("selection_fid_gap", "topup_acceptance_rate"), HIGHER),
    **dict.fromkeys(
        (
            "density",
            "diversity_ratio",
            "diversity_ratio_weighted",
            "min_class_diversity_ratio",
            "max_class_diversity_ratio",
            "lesion_spread_ratio",
        ),
        NEAR_ONE,
    ),
    "nn_similarity_mean": "\u2248 real baseline",
    "nn_real_baseline_median": REFERENCE,
    "champion_fid": REFERENCE,
}


def direction(base: str) -> str:
    """Which way a metric is better: ``lower``, ``higher``, ``≈ 1 (as real)``, ``reference``; '' when it has none."""
    if base in DIRECTIONS:
        return DIRECTIONS[base]
    if base.startswith("seg_fp_rate_"):
        return LOWER
    if base.startswith("dice_") and base != "dice_baseline_ok":  # every arm's Dice and gain
        return HIGHER
    return ""


def split_key(key: str) -> tuple[str, str, str]:
    """``name[_ci_low|_ci_high][.class]`` -> (name, part, class) with part ``value``, ``ci_low`` or ``ci_high``."""
    name, _, scope = key.partition(".")
    for part in ("ci_low", "ci_high"):
        if name.endswith("_" + part):
            return name[: -len(part) - 1], part, scope
    return name, "value", scope


def spaces_of(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The feature spaces behind the metrics (primary first), from ``extractors``; {} in old reports."""
    spaces = report.get(EXTRACTORS_KEY) or (report.get("metrics") or {}).get(EXTRACTORS_KEY) or {}
    if not isinstance(spaces, dict):
        return {}
    items = [(k, v) for k, v in spaces.items() if isinstance(v, dict)]
    return dict(sorted(items, key=lambda kv: kv[1].get("role") != "primary"))


def owner_map(spaces: dict[str, dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """Metric name -> (feature space, name within the space), from each identity's ``metrics`` and ``also`` lists."""
    return {
        f"{ident.get('prefix', '')}{m}": (space, m)
        for space, ident in spaces.items()
        for m in [*(ident.get("metrics") or []), *(ident.get("also") or [])]
    }


def group_of(base: str) -> str:
    """The group a metric (its name within its feature space) belongs to; ``counts``, or ``other`` when unknown."""
    if base in COUNTS or base.startswith("n_"):
        return "counts"
    for group, (_, _, names) in GROUPS.items():
        if base in names:
            return group
    if base.startswith(UTILITY_PREFIXES):
        return "utility"
    return "other"


def _order(group: str, base: str) -> int:
    names = GROUPS.get(group, ("", "", ()))[2]
    if base in names:
        return names.index(base)
    # utility: every arm's Dice, then the gains over the real arm, then the false-positive rates
    return len(names) + (1 if base.startswith("dice_gain") else 2 if base.startswith("seg_fp_rate_") else 0)


def source_of(space: str | None, ident: dict[str, Any], base: str, report: dict[str, Any]) -> dict[str, str]:
    """Where a value comes from: ``source`` (extractor + weights + reference hash, or the method) and ``n``."""
    if space:
        n = f"{count(ident.get('n_real'))} real"
        if ident.get("n_patients"):
            n += f" ({count(ident.get('n_patients'))} patients)"
        n += f" / {count(ident.get('n_fake'))} synthetic"
        src = f"{space} {short(ident.get('fingerprint'))}"
        if ident.get("reference_sha256"):
            src += f" \u00b7 ref {short(ident.get('reference_sha256'))}"
        return {"source": src, "n": n}
    if base.startswith(("dice_", "seg_fp_rate_")):
        d = report.get("dice") or {}
        slices = sum(int(c.get("n_test") or 0) for c in d.get("classes", []))
        patients = sum(int(c.get("n_patients") or 0) for c in d.get("classes", []))
        seeds = len(d.get("seeds") or [])
        return {
            "source": f"segmenter {d.get('model', '')}".strip(),
            "n": f"{slices} test slices, {patients} patients, {seeds} seeds" if d else "",
        }
    if base == "selection_fid_gap":
        gap = (report.get("selection") or {}).get("gap") or {}
        return {
            "source": f"primary space, {(report.get('selection') or {}).get('real_split', 'val')} split",
            "n": f"{count(gap.get('n_real'))} real ({count(gap.get('n_patients'))} patients) / "
            f"{count(gap.get('n_synthetic'))} synthetic"
            if gap
            else "",
        }
    if base in GROUPS["diversity"][2] or base.startswith("mask_"):
        return {"source": "image pixels and masks", "n": ""}
    if base.startswith("class_accuracy"):
        return {"source": str((report.get("trust") or {}).get("classifier") or "medical classifier"), "n": ""}
    return {"source": "", "n": ""}


def metric_groups(report: dict[str, Any]) -> dict[str, Any]:
    """The view of every metric: ``groups`` (each with ``rows`` and ``per_class`` tables), ``counts``, ``other``.

    A row: ``name`` (the flat key), ``space``, ``base``, ``value``, ``ci`` ([low, high] or None), ``better``,
    ``holdout``, ``champion``, ``source``, ``n``. A per-class table: ``space``, ``columns`` (metric names) and
    ``rows`` (``class``, ``n_real``, ``n_fake``, ``low_n``, ``cells``: value and interval per column).
    """
    metrics = {k: v for k, v in (report.get("metrics") or {}).items() if not isinstance(v, (dict, list))}
    spaces = spaces_of(report)
    owner = owner_map(spaces)
    gate = report.get("gate") if isinstance(report.get("gate"), dict) else {}
    champion = (gate or {}).get("champion_metrics") or {}
    primary = next(iter(spaces.values()), {})

    parts: dict[tuple[str, str], dict[str, Any]] = {}
    for key, value in metrics.items():
        name, part, scope = split_key(key)
        if name.startswith(HOLDOUT):  # a column beside the metric it is the reference of
            continue
        parts.setdefault((name, scope), {})[part] = value

    groups: dict[str, dict[str, Any]] = {
        g: {"key": g, "title": t, "blurb": b, "rows": [], "per_class": []} for g, (t, b, _) in GROUPS.items()
    }
    groups["other"] = {"key": "other", "title": "Other metrics", "blurb": "", "rows": [], "per_class": []}
    counts: list[dict[str, Any]] = []
    scoped: dict[tuple[str, str | None], dict[str, dict[str, Any]]] = {}  # (group, space) -> class -> base -> parts
    for (name, scope), p in sorted(parts.items()):
        space, base = owner.get(name, (None, name))
        group = group_of(base)
        if group == "counts":
            counts.append(
                {"name": name + (f".{scope}" if scope else ""), "value": p.get("value"), "flag": base in FLAGS}
            )
            continue
        if scope:
            if not base.startswith(SHOWN_ELSEWHERE):
                scoped.setdefault((group, space), {}).setdefault(scope, {})[base] = p
            continue
        ident = spaces.get(space, {}) if space else {}
        ci = [p.get("ci_low"), p.get("ci_high")] if ("ci_low" in p or "ci_high" in p) else None
        groups[group]["rows"].append(
            {
                "name": name,
                "space": space,
                "base": base,
                "value": p.get("value"),
                "ci": ci,
                "better": direction(base),
                "holdout": metrics.get(HOLDOUT + name, metrics.get(f"holdout_{base}") if not space else None),
                "champion": champion.get(name),
                **source_of(space, ident, base, report),
            }
        )
    space_order = {s: i for i, s in enumerate(spaces)}
    for g in groups.values():
        g["rows"].sort(key=lambda r: (_order(g["key"], r["base"]), space_order.get(r["space"], -1), r["name"]))
    for (group, space), per_class in sorted(scoped.items(), key=lambda kv: (kv[0][0], space_order.get(kv[0][1], -1))):
        ident = spaces.get(space, primary) if space else primary
        columns = sorted({b for bases in per_class.values() for b in bases}, key=lambda b: (_order(group, b), b))
        rows = []
        # the identity's counts are by class name, in the archive's order; metric keys carry the sanitised name
        n_real_of = {scope_name(c): n for c, n in (ident.get("n_real_per_class") or {}).items()}
        n_fake_of = {scope_name(c): n for c, n in (ident.get("n_fake_per_class") or {}).items()}
        order = list(n_real_of)
        for cls, bases in sorted(per_class.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99):
            n_real, n_fake = n_real_of.get(cls), n_fake_of.get(cls)
            low = [
                n for n in (n_real, n_fake) if n is not None and n < ident.get("min_class_samples", MIN_CLASS_SAMPLES)
            ]
            cells = [
                {
                    "value": bases.get(b, {}).get("value"),
                    "ci": [bases.get(b, {}).get("ci_low"), bases.get(b, {}).get("ci_high")],
                }
                for b in columns
            ]
            rows.append({"class": cls, "n_real": n_real, "n_fake": n_fake, "low_n": bool(low), "cells": cells})
        groups[group]["per_class"].append(
            {
                "space": space,
                "columns": columns,
                "better": [direction(b) for b in columns],
                "rows": rows,
                "min_class_samples": ident.get("min_class_samples", MIN_CLASS_SAMPLES),
            }
        )
    return {
        "groups": [g for g in groups.values() if g["rows"] or g["per_class"]],
        "counts": counts,
        "spaces": spaces,
    }
