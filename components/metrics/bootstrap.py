"""Bootstrap confidence intervals for metrics that compare a real and a synthetic sample.

Plug-in metrics such as FID are biased, and more so on a resample with replacement (only ~63% of its rows are
distinct), so a plain percentile interval can miss the point estimate altogether. The interval is therefore centred:
the percentiles of the resampled values minus their mean, added to the point estimate (the spread comes from the
bootstrap, the location from the full-sample estimate).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def centred_interval(
    values: Sequence[float], estimate: float, resamples: int, level: float = 0.95
) -> tuple[float, float]:
    """Interval ``estimate + percentiles(values - mean(values))``; ``(nan, nan)`` if too few values are finite.

    Resamples can fail (nan), e.g. when a tiny class keeps a single distinct sample; when more than half of the
    ``resamples`` did, the survivors say little and no interval is given.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) < max(2, resamples // 2) or not np.isfinite(estimate):
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(v - v.mean(), [tail, 100.0 - tail]) + estimate
    return float(low), float(high)


def bootstrap_ci(
    statistic: Callable[[np.ndarray, np.ndarray], float],
    n_real: int,
    n_fake: int,
    resamples: int,
    seed: int,
    estimate: float,
    level: float = 0.95,
) -> tuple[float, float]:
    """Centred percentile interval around ``estimate`` of ``statistic(real_idx, fake_idx)`` over resamples.

    Rows are drawn with replacement, from both samples independently: the uncertainty comes from the finite real
    set as much as from the finite synthetic set. ``statistic`` receives index arrays so that each metric can use
    them as suits it (row selection, multiplicity weights). Returns ``(nan, nan)`` when ``resamples`` is 0 or
    more than half of the resamples failed.
    """
    if resamples <= 0 or n_real < 1 or n_fake < 1:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = [statistic(rng.integers(0, n_real, n_real), rng.integers(0, n_fake, n_fake)) for _ in range(resamples)]
    return centred_interval(values, estimate, resamples, level)
