"""Which generator the evaluate stage scores and register registers: the best EMA snapshot by FID, or the last.

The FID curve is not monotonic (quickstart, three seeds: the final model is often not the lowest point, by more than
a 64-sample point's ±2 FID noise), so with ``eval.select_snapshot=best_fid`` the evaluation keeps, as StyleGAN
practice does, the candidate of lowest **selection FID**: the snapshots the FID curve scores (those before the final
step) and the final model, each on the curve's samples (:func:`components.evaluate.curve.candidate_features`: no
extra generation), against the **val** split's real images. The headline FID uses the train split's, so the choice
is not made on the real set the headline metrics are computed against; the curve's samples are a subset
(``eval.fid_curve_samples``) of the headline's latents.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from components.evaluate.curve import Candidates


def choose(fids: list[float]) -> int:
    """Index of the lowest FID of candidates in step order; ties and undefined (NaN) values prefer the later step.

    A later candidate replaces the current choice unless its FID is strictly higher, so a NaN on either side of a
    comparison never makes the selection fall back to an earlier snapshot.
    """
    best = 0
    for i in range(1, len(fids)):
        if not fids[i] > fids[best]:  # False for NaN on either side, and for ties
            best = i
    return best


def select_generator(candidates: Candidates, real_feats: np.ndarray) -> tuple[Path, dict[str, Any]]:
    """The chosen candidate's generator file and the selection's ``steps``, ``fid`` and ``selected_step``.

    ``real_feats`` are the selection's real features (the val split's). ``candidates`` must not be empty.
    """
    fids = candidates.fids(real_feats)
    best = choose(fids)
    return candidates.paths[best], {
        "steps": list(candidates.steps),
        "fid": [v if math.isfinite(v) else None for v in fids],
        "selected_step": candidates.steps[best],
        "n_samples": candidates.n_samples,
    }
