"""Precision, recall, density and coverage: fidelity and diversity read separately from the k-NN manifolds.

FID mixes two failures into one number: samples that look wrong (low fidelity) and samples that are right but all
alike (low diversity, mode collapse). The k-nearest-neighbour estimators split them. Each real feature vector gets a
ball reaching its k-th nearest real neighbour (each synthetic one, for recall, its k-th nearest synthetic
neighbour); then

- **precision** (Kynkäänniemi et al. 2019): share of synthetic samples inside some real ball (fidelity);
- **recall** (same paper): share of real samples inside some synthetic ball (diversity);
- **density** (Naeem et al. 2020): how many real balls a synthetic sample falls in, over k, averaged; ~1 when the
  two sets are alike, robust to real outliers (unlike precision);
- **coverage** (same paper): share of real samples whose own ball holds a synthetic sample; robust to synthetic
  outliers (unlike recall), and the one that falls when a class collapses onto a few modes.

All four are 1 for two large samples of one distribution (density ~1) and fall towards 0 as the synthetic set
misses the real one. They depend on k and on the sample sizes, so compare runs at equal ``eval.manifold_k`` and
``eval.fid_samples``. At most :data:`MAX_SAMPLES` rows per side are used (a seeded subset; memory is quadratic).

The bootstrap resamples rows with replacement (real rows patient by patient when their patients are given, as in
:func:`components.metrics.bootstrap.row_sampler`); a repeated row would otherwise shrink the k-NN radii to 0, so the
balls are built on a resample's distinct rows and the repeats act as weights in the averages (over synthetic rows
for precision and density, over real rows for recall and coverage).
"""

from __future__ import annotations

import hashlib

import numpy as np

from components.metrics.bootstrap import centred_interval, n_groups, row_sampler

NAMES = ("precision", "recall", "density", "coverage")
MAX_SAMPLES = 2048

_cache: dict[str, dict[str, dict[str, float]]] = {}  # the last call's results: the four metrics share one pass


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def _radii(d_within: np.ndarray, k: int) -> np.ndarray:
    """Squared distance of each row to its k-th nearest *other* row (column 0 of a sorted row is the row itself)."""
    return np.partition(d_within, k, axis=1)[:, k]


def _estimate(
    d_rr: np.ndarray, d_ff: np.ndarray, d_rf: np.ndarray, real_idx: np.ndarray, fake_idx: np.ndarray, k: int
) -> dict[str, float]:
    """The four metrics of the rows ``real_idx`` / ``fake_idx`` (with repeats) of the full distance matrices."""
    ur, wr = np.unique(real_idx, return_counts=True)
    uf, wf = np.unique(fake_idx, return_counts=True)
    if len(ur) <= k or len(uf) <= k:
        return dict.fromkeys(NAMES, float("nan"))
    wr, wf = wr.astype(np.float64), wf.astype(np.float64)
    r_real = _radii(d_rr[np.ix_(ur, ur)], k)
    r_fake = _radii(d_ff[np.ix_(uf, uf)], k)
    d = d_rf[np.ix_(ur, uf)]  # (real, fake)
    in_real_ball = d <= r_real[:, None]
    return {
        "precision": float(wf @ in_real_ball.any(axis=0) / wf.sum()),
        "recall": float(wr @ (d <= r_fake[None, :]).any(axis=1) / wr.sum()),
        "density": float(in_real_ball.sum(axis=0) @ wf / (k * wf.sum())),  # counts distinct balls
        "coverage": float(wr @ in_real_ball.any(axis=1) / wr.sum()),
    }


def _digest(*arrays: np.ndarray, extra: tuple = ()) -> str:
    h = hashlib.blake2b(repr(extra).encode(), digest_size=16)
    for a in arrays:
        h.update(repr((a.shape, a.dtype.str)).encode())
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


def manifold_metrics(
    real: np.ndarray,
    fake: np.ndarray,
    k: int = 5,
    resamples: int = 0,
    seed: int = 0,
    real_groups: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """All four metrics with centred bootstrap intervals: ``{name: {"value", "ci_low", "ci_high"}}`` (a new dict).

    ``nan`` where a side has at most ``k`` distinct rows (no k-th neighbour). ``real_groups`` (the patient of each
    real row) makes the real side of the bootstrap a cluster bootstrap; fewer than 2 patients give no interval.
    """
    if k < 1:
        raise ValueError(f"eval.manifold_k must be at least 1, got {k}")
    real, fake = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    groups = None if real_groups is None else np.asarray(real_groups).astype(str)
    key = _digest(real, fake, extra=(k, resamples, seed, None if groups is None else tuple(groups)))
    if key not in _cache:
        _cache.clear()
        _cache[key] = _compute(real, fake, k, resamples, seed, groups)
    return {name: dict(res) for name, res in _cache[key].items()}  # callers may change theirs


def _compute(
    real: np.ndarray, fake: np.ndarray, k: int, resamples: int, seed: int, groups: np.ndarray | None = None
) -> dict[str, dict[str, float]]:
    """:func:`manifold_metrics` without the cache."""
    rng = np.random.default_rng(seed)
    if len(real) > MAX_SAMPLES:
        keep = np.sort(rng.choice(len(real), MAX_SAMPLES, replace=False))
        real, groups = real[keep], None if groups is None else groups[keep]
    if len(fake) > MAX_SAMPLES:
        fake = fake[np.sort(rng.choice(len(fake), MAX_SAMPLES, replace=False))]
    d_rr, d_ff, d_rf = _sq_distances(real, real), _sq_distances(fake, fake), _sq_distances(real, fake)
    n, m = len(real), len(fake)
    point = _estimate(d_rr, d_ff, d_rf, np.arange(n), np.arange(m), k)
    draw_real, draw_fake = row_sampler(n, groups), row_sampler(m)
    draws = (
        [_estimate(d_rr, d_ff, d_rf, draw_real(rng), draw_fake(rng), k) for _ in range(resamples)]
        if resamples > 0 and n > 0 and m > 0 and n_groups(groups, n) >= 2
        else []
    )
    out = {}
    for name in NAMES:
        low, high = centred_interval([d[name] for d in draws], point[name], resamples) if draws else (float("nan"),) * 2
        out[name] = {"value": point[name], "ci_low": low, "ci_high": high}
    return out


def _registry_entry(name: str):
    def metric(
        real: np.ndarray,
        fake: np.ndarray,
        resamples: int = 0,
        seed: int = 0,
        manifold_k: int = 5,
        real_groups: np.ndarray | None = None,
        **_: object,
    ) -> dict[str, float]:
        return manifold_metrics(real, fake, manifold_k, resamples, seed, real_groups)[name]

    metric.__name__ = f"{name}_metric"
    metric.__doc__ = f"Registry entry: k-NN {name} with a bootstrap confidence interval (see the module docstring)."
    return metric


precision_metric, recall_metric, density_metric, coverage_metric = (_registry_entry(n) for n in NAMES)
