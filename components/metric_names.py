"""The names of the metrics the evaluate stage writes to ``metrics.json``, as a grammar a gate rule is checked against.

A key is ``[holdout_]<base>[_ci_low|_ci_high][.<class>]``:

- ``<base>`` a registered distribution metric (:data:`components.metrics.METRICS`: ``fid``, ``kid``, ...) in the
  primary feature space, or prefixed ``<space>_`` for each ``eval.extra_extractors`` space (``medical_fid``);
  ``holdout_`` before either is the held-out real reference (overall only, no interval);
- the Dice evidence of the configured arms (``eval.seg_arms``): ``dice_<arm>``, ``dice_gain`` (real + synthetic
  minus real), ``dice_gain_<arm>``, ``seg_fp_rate_<arm>`` (no per-class value) and ``dice_baseline_ok``;
- the further families of :data:`FAMILIES` (collapse, mask consistency, memorization, class trust, top-up, counts);
- ``_ci_low`` / ``_ci_high``: the bootstrap interval's bounds, where the family has one; ``.<class>``: one class of
  ``data.classes`` (sanitised as the evaluate stage does), where the family is per class.

The distribution metrics and the spaces come from the registry and the config, so adding a metric there needs no
change here; a family written by new evaluate code needs a line in :data:`FAMILIES`, and a test checks every key of
a real evaluate run against this grammar so that a forgotten line fails the suite rather than a user's config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from components.evaluate.spaces import HOLDOUT, space_prefix

CI_SUFFIXES = ("_ci_low", "_ci_high")

# The distribution metrics a reader compares first: the primary feature space's, then the medical space's. The head
# of the review report's headline numbers (components/evaluate/verdict.py) and of the quality benchmark's columns
# (bench/quality.py), so that both read the same metrics in the same order.
HEADLINE_DISTRIBUTION = (
    "fid",
    "kid",
    "precision",
    "recall",
    "coverage",
    "medical_fid",
    "medical_precision",
    "medical_recall",
    "medical_coverage",
)


@dataclass(frozen=True)
class Family:
    """Metric bases written by one part of evaluate, and whether they come with an interval / per class."""

    bases: tuple[str, ...]
    ci: bool
    per_class: bool


FAMILIES = {
    "collapse (components/metrics/collapse.py)": Family(
        ("diversity_ratio", "lesion_spread_ratio"), ci=False, per_class=True
    ),
    "collapse summaries": Family(
        ("min_class_diversity_ratio", "max_class_diversity_ratio", "diversity_ratio_weighted"),
        ci=False,
        per_class=False,
    ),
    "mask consistency (components/metrics/consistency.py)": Family(
        ("mask_contrast_gap", "mask_label_mismatch"), ci=False, per_class=False
    ),
    "mask contrast per class": Family(("mask_contrast_synth", "mask_contrast_real"), ci=False, per_class=True),
    "memorization and class trust (components/metrics/trust.py)": Family(
        ("nn_copy_fraction", "nn_similarity_max", "class_accuracy", "holdout_class_accuracy"), ci=False, per_class=True
    ),
    "memorization summaries": Family(("nn_similarity_mean", "nn_real_baseline_median"), ci=False, per_class=False),
    "top-up (components/topup)": Family(("topup_n", "topup_shortfall"), ci=False, per_class=False),
    "top-up per class": Family(("topup_kept", "topup_acceptance_rate"), ci=False, per_class=True),
    "sample counts and the selected snapshot": Family(
        ("n_synthetic", "n_real_train", "selected_step", "final_step"), ci=False, per_class=False
    ),
    "Dice baseline check": Family(("dice_baseline_ok",), ci=False, per_class=True),
    "paired champion comparison (components/evaluate/champion.py)": Family(
        ("fid_improvement",), ci=True, per_class=False
    ),
    "champion scored here": Family(("champion_fid", "champion_version"), ci=False, per_class=False),
    "snapshot selection against the final model (components/evaluate/uncertainty.py)": Family(
        ("selection_fid_gap",), ci=True, per_class=False
    ),
}


def arm_key(arm: str) -> str:
    """An ``eval.seg_arms`` arm's name in metric keys (as the evaluate stage writes it)."""
    return {"real+synthetic": "real_synth", "synthetic": "synth"}.get(arm, arm.replace("-", "_"))


def known_families(extra_extractors: list[str], seg_arms: list[str]) -> list[Family]:
    """Every family a run with these feature spaces and Dice arms writes."""
    from components.metrics import METRICS

    spaces = ["", *(space_prefix(s) for s in extra_extractors)]
    distribution = tuple(p + m for p in spaces for m in METRICS)
    arms = [arm_key(a) for a in seg_arms]
    # gains over the real arm: dice_gain for real+synthetic (the top-up's), dice_gain_<arm> for the others
    gains = ["dice_gain" if a == "real+synthetic" else f"dice_gain_{arm_key(a)}" for a in seg_arms if a != "real"]
    dice = tuple(f"dice_{a}" for a in arms) + tuple(gains)
    return [
        Family(distribution, ci=True, per_class=True),
        Family(tuple(HOLDOUT + d for d in distribution), ci=False, per_class=False),
        Family(dice, ci=True, per_class=True),
        Family(tuple(f"seg_fp_rate_{a}" for a in arms), ci=True, per_class=False),
        *FAMILIES.values(),
    ]


def check_metric_name(name: str, classes: list[str], extra_extractors: list[str], seg_arms: list[str]) -> str | None:
    """None when the evaluate stage writes ``name`` under this config, else why not (for a ConfigError)."""
    base, dot, cls = name.partition(".")
    sanitised = {re.sub(r"[^A-Za-z0-9_-]", "_", c): c for c in classes}
    if dot and cls not in sanitised:
        return f"{name!r}: class {cls!r} is not one of data.classes ({', '.join(classes)})"
    bound = next((s for s in CI_SUFFIXES if base.endswith(s)), "")
    stem = base[: len(base) - len(bound)] if bound else base
    families = known_families(extra_extractors, seg_arms)
    family = next((f for f in families if stem in f.bases), None)
    if family is None:
        from components.config import SEG_ARMS

        if any(stem in f.bases for f in known_families(extra_extractors, list(SEG_ARMS))):
            return f"{name!r}: written only when eval.seg_arms (now {', '.join(seg_arms)}) includes its arm"
        close = _close(stem, [b for f in families for b in f.bases])
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return f"{name!r}: the evaluate stage writes no metric {stem!r}{hint}"
    if bound and not family.ci:
        return f"{name!r}: {stem} has no confidence interval"
    if dot and not family.per_class:
        return f"{name!r}: {stem} has no per-class value"
    return None


def _close(word: str, known: list[str]) -> list[str]:
    import difflib

    return difflib.get_close_matches(word, known, n=3)
