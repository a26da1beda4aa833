"""Memorization audit (privacy): flag synthetic samples that are near copies of real training samples.

Each synthetic sample is matched to its nearest real training sample by cosine similarity in feature space, and
pairs above a threshold are flagged. Features are centred on the real mean first: Inception features are
non-negative averages of ReLU maps, so the raw cosine similarity of *any* two grayscale scans is 0.85-0.98 and a
fixed threshold would flag everything; centring removes that shared component. The similarity of each real sample
to its nearest *other* real sample is reported as a baseline: a generator that copies sits above it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

CHUNK = 1024


def _unit(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    c = np.asarray(x, dtype=np.float64) - mean
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)


def nearest_real(fake: np.ndarray, real: np.ndarray, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Index of and cosine similarity to the nearest ``real`` row for every ``fake`` row (centred on real mean).

    With ``exclude_self`` (``fake`` is ``real``), a row is not matched with itself.
    """
    mean = np.asarray(real, dtype=np.float64).mean(axis=0)
    r, f = _unit(real, mean), _unit(fake, mean)
    idx = np.zeros(len(f), dtype=np.int64)
    sim = np.zeros(len(f), dtype=np.float64)
    for start in range(0, len(f), CHUNK):
        s = f[start : start + CHUNK] @ r.T
        if exclude_self:
            rows = np.arange(len(s))
            s[rows, rows + start] = -np.inf
        idx[start : start + len(s)] = s.argmax(axis=1)
        sim[start : start + len(s)] = s.max(axis=1)
    return idx, sim


def memorization_audit(fake: np.ndarray, real: np.ndarray, threshold: float, top_k: int = 8) -> dict[str, Any]:
    """Nearest-real-neighbour audit of synthetic features ``fake`` against real training features ``real``.

    Returns the fraction and number flagged (similarity > ``threshold``), summary statistics, the real-to-real
    baseline, per-sample ``nn_index``/``similarity`` lists, and the ``top_k`` most similar pairs
    (``{"fake", "real", "similarity", "flagged"}``, most similar first) for the report.
    """
    if len(fake) == 0 or len(real) == 0:
        raise ValueError("memorization audit needs synthetic and real features")
    idx, sim = nearest_real(fake, real)
    flagged = sim > threshold
    baseline = nearest_real(real, real, exclude_self=True)[1] if len(real) > 1 else np.array([np.nan])
    order = np.argsort(-sim, kind="stable")[:top_k]
    return {
        "threshold": float(threshold),
        "copy_fraction": float(flagged.mean()),
        "n_flagged": int(flagged.sum()),
        "similarity_mean": float(sim.mean()),
        "similarity_max": float(sim.max()),
        "real_baseline_median": float(np.median(baseline)),
        "real_baseline_p95": float(np.percentile(baseline, 95)),
        "nn_index": idx.tolist(),
        "similarity": sim.tolist(),
        "top": [
            {"fake": int(i), "real": int(idx[i]), "similarity": float(sim[i]), "flagged": bool(flagged[i])}
            for i in order
        ],
    }
