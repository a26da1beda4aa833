"""Bootstrap confidence intervals for metrics that compare a real and a synthetic sample.

Plug-in metrics such as FID are biased, and more so on a resample with replacement (only ~63% of its rows are
distinct), so a plain percentile interval can miss the point estimate altogether. The interval is therefore centred:
the percentiles of the resampled values minus their mean, added to the point estimate (the spread comes from the
bootstrap, the location from the full-sample estimate).

Real samples are slices, and the slices of one patient are correlated: resampling them as if independent gives
intervals that are too narrow. Given each real row's patient (``real_groups``), the real side is a **cluster
bootstrap**: patients are drawn with replacement and bring all their slices (:func:`row_sampler`); fewer than two
patients give no interval. Synthetic samples are independent draws and are resampled row by row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Sampler = Callable[[np.random.Generator], np.ndarray]


def row_sampler(n: int, groups: Sequence | np.ndarray | None = None) -> Sampler:
    """``draw(rng)``: row indices of one bootstrap resample of ``n`` rows.

    Without ``groups`` the rows are drawn with replacement (``n`` of them). With ``groups`` (one label per row, e.g.
    the patient) whole groups are drawn with replacement, as many as there are groups, each bringing all its rows, so
    a resample's size varies (the cluster bootstrap).
    """
    if groups is None:
        return lambda rng: rng.integers(0, n, n)
    labels = np.asarray(groups).astype(str)
    if len(labels) != n:
        raise ValueError(f"real_groups has {len(labels)} labels for {n} rows")
    _, inverse = np.unique(labels, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(int(inverse.max()) + 1)] if n else []

    def draw(rng: np.random.Generator) -> np.ndarray:
        pick = rng.integers(0, len(members), len(members))
        return np.concatenate([members[g] for g in pick])

    return draw


def n_groups(groups: Sequence | np.ndarray | None, n: int) -> int:
    """Independent units among ``n`` rows: the distinct ``groups`` (patients), or ``n`` without groups."""
    return n if groups is None else len(set(np.asarray(groups).astype(str).tolist()))


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
    real_groups: Sequence | np.ndarray | None = None,
) -> tuple[float, float]:
    """Centred percentile interval around ``estimate`` of ``statistic(real_idx, fake_idx)`` over resamples.

    Rows are drawn with replacement, from both samples independently: the uncertainty comes from the finite real
    set as much as from the finite synthetic set; with ``real_groups`` (the patient of each real row) the real side
    is drawn patient by patient (:func:`row_sampler`). ``statistic`` receives index arrays so that each metric can
    use them as suits it (row selection, multiplicity weights). Returns ``(nan, nan)`` when ``resamples`` is 0,
    when ``real_groups`` holds fewer than 2 patients, or when more than half of the resamples failed.
    """
    if resamples <= 0 or n_real < 1 or n_fake < 1 or n_groups(real_groups, n_real) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draw_real, draw_fake = row_sampler(n_real, real_groups), row_sampler(n_fake)
    values = [statistic(draw_real(rng), draw_fake(rng)) for _ in range(resamples)]
    return centred_interval(values, estimate, resamples, level)
