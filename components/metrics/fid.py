"""Fréchet distance between Gaussian fits of real and synthetic features (FID when the features are Inception's).

``FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))``. The trace of the matrix square root is computed
exactly without ``scipy.linalg.sqrtm`` (slow, and complex-valued from round-off):

- from statistics: ``S1 S2`` is similar to the symmetric PSD ``S1^(1/2) S2 S1^(1/2)``, so the trace is the sum of
  the square roots of that matrix's eigenvalues (two ``eigh`` calls);
- from features, when there are fewer samples than dimensions (the usual case, and every bootstrap resample):
  with centred feature matrices ``X1, X2`` the nonzero eigenvalues of ``S1 S2`` are the squared singular values of
  ``X1 X2^T / sqrt((n1-1)(n2-1))``, so the trace is a nuclear norm of an ``n1 x n2`` matrix.
"""

from __future__ import annotations

import numpy as np

from components.metrics.bootstrap import bootstrap_ci


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of ``(N, D)`` features, in float64."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _sym_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr((sigma1 sigma2)^(1/2))`` for symmetric PSD matrices, via eigendecompositions."""
    root1 = _sym_sqrt(np.asarray(sigma1, dtype=np.float64))
    m = root1 @ np.asarray(sigma2, dtype=np.float64) @ root1
    eig = np.linalg.eigvalsh((m + m.T) / 2.0)
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``."""
    diff = np.asarray(mu1, dtype=np.float64) - np.asarray(mu2, dtype=np.float64)
    tr = float(np.trace(sigma1) + np.trace(sigma2))
    return float(diff @ diff + tr - 2.0 * trace_sqrt_product(sigma1, sigma2))


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two feature sets ``(N1, D)`` and ``(N2, D)``; ``nan`` when either has fewer than 2 rows."""
    x1 = np.asarray(real, dtype=np.float64)
    x2 = np.asarray(fake, dtype=np.float64)
    n1, n2, d = len(x1), len(x2), x1.shape[1]
    if n1 < 2 or n2 < 2:
        return float("nan")
    if min(n1, n2) >= d:
        return frechet_distance(*gaussian_stats(x1), *gaussian_stats(x2))
    mu1, mu2 = x1.mean(axis=0), x2.mean(axis=0)
    c1, c2 = x1 - mu1, x2 - mu2
    diff = mu1 - mu2
    tr = (c1 * c1).sum() / (n1 - 1) + (c2 * c2).sum() / (n2 - 1)
    nuclear = np.linalg.svd(c1 @ c2.T, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    return float(diff @ diff + tr - 2.0 * nuclear)


def fid_metric(
    real: np.ndarray,
    fake: np.ndarray,
    resamples: int = 0,
    seed: int = 0,
    real_groups: np.ndarray | None = None,
    **_: object,
) -> dict[str, float]:
    """Registry entry: FID with a bootstrap confidence interval (``value``, ``ci_low``, ``ci_high``).

    ``real_groups`` (the patient of each real row) makes the real side a cluster bootstrap.
    """
    value = fid_from_features(real, fake)
    low, high = bootstrap_ci(
        lambda i, j: fid_from_features(real[i], fake[j]),
        len(real),
        len(fake),
        resamples,
        seed,
        value,
        real_groups=real_groups,
    )
    return {"value": value, "ci_low": max(low, 0.0), "ci_high": high}
