"""Kernel Inception Distance: unbiased MMD^2 with the cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3``.

Unlike FID it has an unbiased estimator, so it is comparable across sample sizes and ~0 for two samples of the
same distribution (it can come out slightly negative). The point estimate follows Bińkowski et al. / StyleGAN2-ADA:
the mean over random subsets of ``subset_size`` samples per side. The bootstrap interval reuses one pair of kernel
matrices and weighs each resample by its multiplicities, leaving out pairs of a sample with itself (or its own
duplicates), which would otherwise bias the U-statistic upwards.
"""

from __future__ import annotations

import numpy as np

from components.metrics.bootstrap import bootstrap_ci

# Kernel matrices for the bootstrap are built on at most this many samples per side (memory is quadratic).
BOOTSTRAP_MAX_SAMPLES = 2000


def _kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def kid_from_features(
    real: np.ndarray, fake: np.ndarray, subset_size: int = 1000, subsets: int = 100, seed: int = 0
) -> float:
    """Unbiased KID averaged over ``subsets`` random subsets; ``nan`` when either side has fewer than 2 rows."""
    x = np.asarray(fake, dtype=np.float64)
    y = np.asarray(real, dtype=np.float64)
    m = min(len(x), len(y), subset_size)
    if m < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(max(subsets, 1)):
        xs = x[rng.choice(len(x), m, replace=False)]
        ys = y[rng.choice(len(y), m, replace=False)]
        a = _kernel(xs, xs) + _kernel(ys, ys)
        b = _kernel(xs, ys)
        total += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2.0 / m
    return float(total / max(subsets, 1) / m)


def _weighted_mmd2(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray, wx: np.ndarray, wy: np.ndarray) -> float:
    """MMD^2 U-statistic of weighted samples, excluding pairs that share an original sample."""

    def within(k: np.ndarray, w: np.ndarray) -> float:
        pairs = w.sum() ** 2 - (w * w).sum()
        return float((w @ k @ w - (w * w * np.diag(k)).sum()) / pairs) if pairs > 0 else float("nan")

    return within(kxx, wx) + within(kyy, wy) - 2.0 * float(wx @ kxy @ wy / (wx.sum() * wy.sum()))


def kid_metric(
    real: np.ndarray,
    fake: np.ndarray,
    resamples: int = 0,
    seed: int = 0,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    real_groups: np.ndarray | None = None,
    **_: object,
) -> dict[str, float]:
    """Registry entry: KID with a bootstrap confidence interval (``value``, ``ci_low``, ``ci_high``).

    ``real_groups`` (the patient of each real row) makes the real side a cluster bootstrap.
    """
    value = kid_from_features(real, fake, kid_subset_size, kid_subsets, seed)
    rng = np.random.default_rng(seed + 1)
    x = np.asarray(fake, dtype=np.float64)
    y = np.asarray(real, dtype=np.float64)
    groups = None if real_groups is None else np.asarray(real_groups)
    if len(x) > BOOTSTRAP_MAX_SAMPLES:
        x = x[rng.choice(len(x), BOOTSTRAP_MAX_SAMPLES, replace=False)]
    if len(y) > BOOTSTRAP_MAX_SAMPLES:
        keep = rng.choice(len(y), BOOTSTRAP_MAX_SAMPLES, replace=False)
        y, groups = y[keep], None if groups is None else groups[keep]
    low = high = float("nan")
    if len(x) >= 2 and len(y) >= 2:
        kxx, kyy, kxy = _kernel(x, x), _kernel(y, y), _kernel(x, y)

        def statistic(i: np.ndarray, j: np.ndarray) -> float:
            wy = np.bincount(i, minlength=len(y)).astype(np.float64)
            wx = np.bincount(j, minlength=len(x)).astype(np.float64)
            return _weighted_mmd2(kxx, kyy, kxy, wx, wy)

        low, high = bootstrap_ci(statistic, len(y), len(x), resamples, seed, value, real_groups=groups)
    return {"value": value, "ci_low": low, "ci_high": high}
