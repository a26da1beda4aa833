"""Generator collapse, class by class: whether a class's synthetic pairs are as varied as its real ones.

Two views, each compared as a ratio synthetic / real per class (1: as varied as the real pairs; near 0: the class
collapsed onto few modes; above 1: more varied, usually noise):

- **pixel spread** (:func:`spread`): each pixel's standard deviation across the class's images, averaged over pixels;
- **lesion-position spread** (:func:`centroid_spread`, lesion classes only): where the lesions sit. Each non-empty
  mask's centroid ``(y, x)`` in pixels; the spread is the square root of the trace of their covariance, i.e. the
  root-mean-square distance of a centroid from the mean centroid. A generator that paints every lesion of a class in
  one place scores ~0 however varied its images are otherwise.

Summaries (:func:`collapse_ratios`): ``diversity_ratio``, the mean of the per-class pixel-spread ratios (kept as it
was); ``min_class_diversity_ratio``, the worst class's, so a single collapsed class shows even when the mean hides
it; ``max_class_diversity_ratio``, the most spread class's, since a ratio well above 1 is a failure as well (a class
degenerated into noise: the quickstart's rare class under a strong mode-seeking term reached 4.6 with no mask left,
and lifted the mean); ``lesion_spread_ratio``, the **worst** lesion class's position-spread ratio (the minimum, not
the mean: one class whose lesions all sit in one spot is a failure the other classes cannot make up for). A class's
spreads need at least 2 of its samples; a lesion class of which fewer than 2 samples carry a lesion has lesion
spread 0 (no variety of positions; ``label_mismatch`` says that the masks are missing). A class enters a ratio only
when both sides define it and the real spread is above 0. With few samples per class (the FID curve's rare classes)
the ratios are noisy: read them as a trend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# collapse_ratios' summary keys
SUMMARIES = ("diversity_ratio", "min_class_diversity_ratio", "max_class_diversity_ratio", "lesion_spread_ratio")


def spread(images: np.ndarray) -> float:
    """Within-set diversity: each pixel's standard deviation across the images, averaged over pixels.

    Near 0 when the images are alike (a class collapsed onto one mode); ``nan`` for fewer than 2 images.
    """
    if len(images) < 2:
        return float("nan")
    return float(np.asarray(images, dtype=np.float64).reshape(len(images), -1).std(axis=0).mean())


def mask_centroids(masks: np.ndarray) -> np.ndarray:
    """Centroid ``(y, x)`` in pixels of every mask's non-zero pixels, ``(N, 2)``; ``nan`` rows for empty masks."""
    m = np.asarray(masks) > 0
    if m.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {m.shape}")
    area = m.sum(axis=(1, 2)).astype(np.float64)
    ys = m.sum(axis=2) @ np.arange(m.shape[1], dtype=np.float64)
    xs = m.sum(axis=1) @ np.arange(m.shape[2], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.stack([ys / area, xs / area], axis=1)
    out[area == 0] = np.nan
    return out


def centroid_spread(masks: np.ndarray) -> float:
    """Square root of the trace of the covariance of the non-empty masks' centroids, in pixels.

    The root-mean-square distance of a lesion's centroid from the mean centroid (unbiased covariance, so a small set
    is not read as less varied than a large one); ``nan`` for fewer than 2 non-empty masks.
    """
    c = mask_centroids(masks)
    c = c[np.isfinite(c).all(axis=1)]
    if len(c) < 2:
        return float("nan")
    return float(np.sqrt(c.var(axis=0, ddof=1).sum()))


def class_statistics(
    images: np.ndarray,
    masks: np.ndarray,
    labels: Sequence[str],
    classes: Sequence[str],
    lesion_classes: Sequence[str],
) -> dict[str, dict[str, float]]:
    """Per class present: ``spread`` (:func:`spread`) and ``n``; for lesion classes also ``lesion_spread``.

    ``lesion_spread`` is :func:`centroid_spread` of the class's masks (0 when fewer than 2 of at least 2 samples carry
    a lesion, nan for a single sample), ``n_lesions`` its non-empty masks; ``labels`` are class names.
    """
    labels, images, masks = np.asarray(labels).astype(str), np.asarray(images), np.asarray(masks)
    out: dict[str, dict[str, float]] = {}
    for cls in classes:
        sel = labels == cls
        if not sel.any():
            continue
        stats: dict[str, float] = {"spread": spread(images[sel]), "n": int(sel.sum())}
        if cls in lesion_classes:
            n_lesions = int((masks[sel].reshape(int(sel.sum()), -1) > 0).any(axis=1).sum())
            stats["n_lesions"] = n_lesions
            if n_lesions >= 2:
                stats["lesion_spread"] = centroid_spread(masks[sel])
            else:
                stats["lesion_spread"] = 0.0 if sel.sum() >= 2 else float("nan")
        out[cls] = stats
    return out


def _ratio(synth: float | None, real: float | None) -> float:
    if synth is None or real is None or not np.isfinite(synth) or not np.isfinite(real) or real <= 0:
        return float("nan")
    return float(synth / real)


def collapse_ratios(real: dict[str, dict[str, float]], synth: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Synthetic over real spreads per class and their summaries, from two :func:`class_statistics` results.

    ``diversity_ratio`` (mean over classes), ``min_class_diversity_ratio`` (worst class), ``max_class_diversity_ratio``
    (most spread class), ``lesion_spread_ratio``
    (worst lesion class), each ``nan`` when no class defines it, and ``per_class``: ``{class: {"diversity_ratio",
    "lesion_spread_ratio"}}`` (the latter for lesion classes).
    """
    per_class: dict[str, dict[str, float]] = {}
    for cls, s in synth.items():
        r = real.get(cls)
        if r is None:
            continue
        entry = {"diversity_ratio": _ratio(s.get("spread"), r.get("spread"))}
        if "lesion_spread" in s or "lesion_spread" in r:
            entry["lesion_spread_ratio"] = _ratio(s.get("lesion_spread"), r.get("lesion_spread"))
        per_class[cls] = entry
    diversity = [v["diversity_ratio"] for v in per_class.values() if np.isfinite(v["diversity_ratio"])]
    lesion = [v["lesion_spread_ratio"] for v in per_class.values() if np.isfinite(v.get("lesion_spread_ratio", np.nan))]
    return {
        "diversity_ratio": float(np.mean(diversity)) if diversity else float("nan"),
        "min_class_diversity_ratio": float(np.min(diversity)) if diversity else float("nan"),
        "max_class_diversity_ratio": float(np.max(diversity)) if diversity else float("nan"),
        "lesion_spread_ratio": float(np.min(lesion)) if lesion else float("nan"),
        "per_class": per_class,
    }
