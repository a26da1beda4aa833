"""Mask-image consistency of generated pairs: whether a mask sits on a lesion and agrees with the class.

A lesion shows as an intensity difference between the pixels inside its mask and those outside. For every class
the same statistics are computed on real and on synthetic pairs; a generator whose masks are unrelated to its
images shows a contrast near 0 where the real data has a clear one. Label consistency is checked too: lesion
classes should come with a non-empty mask, other classes without. The per-class diversity figures (pixel spread,
lesion-position spread) and their ratios come from :mod:`components.metrics.collapse`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from components.metrics.collapse import class_statistics, collapse_ratios


def mask_contrast(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Mean intensity inside minus outside the mask, per sample; ``nan`` for an empty or full mask."""
    imgs = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    m = np.asarray(masks).reshape(len(masks), -1) > 0
    inside = m.sum(axis=1)
    outside = m.shape[1] - inside
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_in = (imgs * m).sum(axis=1) / inside
        mean_out = (imgs * ~m).sum(axis=1) / outside
    out = mean_in - mean_out
    out[(inside == 0) | (outside == 0)] = np.nan
    return out


def pair_statistics(
    images: np.ndarray, masks: np.ndarray, labels: Sequence[str], classes: Sequence[str], lesion_classes: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Per-class pair statistics.

    ``contrast``: mean of :func:`mask_contrast`; ``mask_area``: mean mask fraction; ``label_mismatch``: fraction
    of lesion-class samples without a mask, or of other samples with one; ``spread``, ``n`` and, for lesion classes,
    ``lesion_spread`` and ``n_lesions``: :func:`components.metrics.collapse.class_statistics`.
    """
    labels, images = np.asarray(labels).astype(str), np.asarray(images)
    contrast = mask_contrast(images, masks)
    area = np.asarray(masks).reshape(len(masks), -1).astype(bool).mean(axis=1) if len(masks) else np.zeros(0)
    diversity = class_statistics(images, masks, labels, classes, lesion_classes)
    out: dict[str, dict[str, float]] = {}
    for cls, extra in diversity.items():
        sel = labels == cls
        has_mask = area[sel] > 0
        c = contrast[sel][np.isfinite(contrast[sel])]
        out[cls] = {
            "contrast": float(c.mean()) if len(c) else float("nan"),
            "mask_area": float(area[sel].mean()),
            "label_mismatch": float((~has_mask if cls in lesion_classes else has_mask).mean()),
            **extra,
        }
    return out


def consistency_report(real: dict[str, dict[str, float]], synth: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Compare :func:`pair_statistics` of real and synthetic pairs.

    ``contrast_gap`` is the mean absolute difference of the per-class contrasts (lower is better),
    ``label_mismatch`` the mean over classes of the synthetic label mismatch; ``diversity_ratio`` (mean over classes
    of the synthetic spread over the real one: 1 as varied as the real images, near 0 mode collapse),
    ``min_class_diversity_ratio`` (the worst class), ``lesion_spread_ratio`` (worst lesion class's lesion-position
    spread ratio) and ``per_class`` ratios come from :func:`components.metrics.collapse.collapse_ratios`.
    """
    gaps = [abs(synth[c]["contrast"] - real[c]["contrast"]) for c in synth if c in real]
    gaps = [g for g in gaps if np.isfinite(g)]
    mismatch = [v["label_mismatch"] for v in synth.values()]
    return {
        "contrast_gap": float(np.mean(gaps)) if gaps else float("nan"),
        "label_mismatch": float(np.mean(mismatch)) if mismatch else float("nan"),
        **collapse_ratios(real, synth),
        "real": real,
        "synthetic": synth,
    }
