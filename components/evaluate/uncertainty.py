"""Is the snapshot selection's winner better than the final model, or only luckier? A paired cluster bootstrap.

The selection (:mod:`components.evaluate.selection`) keeps the candidate of lowest FID on the val split, and an FID of
64 samples moves by a few points from sampling alone, so a winner by 1 FID point may be noise. Both candidates drew
their curve samples from the same latents and labels and are scored against the same val images, so their FIDs are
compared **paired**: every resample draws val patients (all of a patient's slices together: the cluster bootstrap of
:func:`components.metrics.bootstrap.row_sampler`) and synthetic sample positions, the same for both models, and takes
the difference. The noise the two share cancels; what is left is the evidence that the winner is better.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from components.metrics.bootstrap import centred_interval, n_groups, row_sampler
from components.metrics.fid import fid_from_features

BEYOND_NOISE = "beats the final model beyond noise"
WITHIN_NOISE = "within noise of the final model"


def selection_gap(
    candidates: Any,
    selected_step: int,
    real_feats: np.ndarray | None,
    real_groups: np.ndarray | None,
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    """FID of the final model minus that of the selected candidate on the selection's real set, with a paired interval.

    ``candidates`` are the curve's (:class:`components.evaluate.curve.Candidates`, the final model last); positive
    gaps favour the selected snapshot. Returns ``compared`` (False with a ``reason`` when the final model was kept or
    there is nothing to compare), ``gap``, ``ci`` (95 %), ``verdict``, ``n_real``, ``n_patients``, ``n_synthetic`` and
    ``resamples``.
    """
    steps = list(getattr(candidates, "steps", []) or [])
    if not steps or selected_step == steps[-1]:
        return {"compared": False, "reason": "the final model was selected: no gap to test"}
    if real_feats is None or len(real_feats) < 2:
        return {"compared": False, "reason": "too few real images to score the selection"}
    final, chosen = candidates.feats[-1], candidates.feats[steps.index(selected_step)]
    gap = fid_from_features(real_feats, final) - fid_from_features(real_feats, chosen)
    n_real, m = len(real_feats), len(chosen)
    low = high = float("nan")
    if resamples > 0 and n_groups(real_groups, n_real) >= 2:
        rng = np.random.default_rng(seed)
        draw_real, draw_fake = row_sampler(n_real, real_groups), row_sampler(m)
        values = []
        for _ in range(resamples):
            i, j = draw_real(rng), draw_fake(rng)
            values.append(fid_from_features(real_feats[i], final[j]) - fid_from_features(real_feats[i], chosen[j]))
        low, high = centred_interval(values, gap, resamples)
    if not (np.isfinite(low) and np.isfinite(high)):
        verdict = "no interval"
    else:
        verdict = BEYOND_NOISE if low > 0 else WITHIN_NOISE
    return {
        "compared": True,
        "gap": float(gap),
        "ci": [low, high],
        "verdict": verdict,
        "n_real": int(n_real),
        "n_patients": n_groups(real_groups, n_real),
        "n_synthetic": int(m),
        "resamples": int(resamples),
    }
