"""Paired comparison of two generators on one evaluation: the improvement of a new model over a reference.

Two FIDs measured on different data, extractors or sample counts are not comparable, and even two measured alike
carry sampling noise of a few points each. The paired comparison scores both models in one place — the same real
features, the same extractor, the same label plan and latent seeds (common random numbers) — and bootstraps the
*difference*: every resample draws one set of real rows and one set of synthetic row positions and applies both to
both models, so the noise the two share (which real images, which classes and latents) cancels and the interval
describes the difference itself (Efron & Tibshirani 1993, ch. 10; the same design as the segmenter arms' patient
bootstrap in :mod:`components.metrics.dice`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from components.metrics.bootstrap import centred_interval

Statistic = Callable[[np.ndarray, np.ndarray], float]


def paired_improvement(
    statistic: Statistic,
    real: np.ndarray,
    reference: np.ndarray,
    candidate: np.ndarray,
    resamples: int,
    seed: int,
    level: float = 0.95,
) -> dict[str, float]:
    """A lower-is-better ``statistic(real, fake)`` of both models and the improvement ``reference - candidate``.

    ``reference`` and ``candidate`` are the two models' synthetic features, row ``k`` of each drawn for the same
    class (and latent seed), so resamples pick the same positions from both. Returns ``reference``, ``candidate``,
    ``improvement`` (positive: the candidate is better) and its centred percentile interval ``ci_low`` /
    ``ci_high`` (:func:`components.metrics.bootstrap.centred_interval`; nan without resamples).
    """
    real, reference, candidate = (np.asarray(a, dtype=np.float64) for a in (real, reference, candidate))
    if reference.shape != candidate.shape:
        raise ValueError(f"paired features must match: reference {reference.shape}, candidate {candidate.shape}")
    ref, new = statistic(real, reference), statistic(real, candidate)
    gap = ref - new
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(max(resamples, 0)):
        i = rng.integers(0, len(real), len(real))
        j = rng.integers(0, len(candidate), len(candidate))
        values.append(statistic(real[i], reference[j]) - statistic(real[i], candidate[j]))
    low, high = centred_interval(values, gap, resamples, level) if resamples > 0 else (float("nan"), float("nan"))
    return {"reference": ref, "candidate": new, "improvement": gap, "ci_low": low, "ci_high": high}
