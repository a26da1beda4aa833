"""Which generator the evaluate stage scores and register registers: the best EMA snapshot by FID, or the last.

The FID curve is not monotonic (quickstart, three seeds: the final model is often not the lowest point, by more than
a 64-sample point's ±2 FID noise), so with ``eval.select_snapshot=best_fid`` the evaluation keeps, as StyleGAN
practice does, the candidate of lowest **selection FID**: the snapshots the FID curve scores (those before the final
step) and the final model, each on the curve's samples (:func:`components.evaluate.curve.candidate_features`: no
extra generation), against the **val** split's real images. The headline FID uses the train split's, so the choice
is not made on the real set the headline metrics are computed against; the curve's samples are a subset
(``eval.fid_curve_samples``) of the headline's latents. A candidate with a collapsed class (worst class's diversity
ratio below ``eval.select_min_diversity``) is passed over while another candidate is not collapsed: the lowest FID
alone can sit on a snapshot that lost a class's variety.
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


def eligible(worst: list[float | None], floor: float) -> list[int]:
    """Indices of the candidates whose worst-class diversity ratio reaches ``floor``; all of them when none does.

    An undefined ratio (None or NaN: no collapse statistics) never excludes a candidate; ``floor`` 0 excludes none.
    """
    keep = [i for i, v in enumerate(worst) if not (v is not None and v < floor)]  # NaN < floor is False: kept
    return keep or list(range(len(worst)))


def choose_generator(
    candidates: Candidates,
    section: dict[str, Any],
    real_feats: dict[str, np.ndarray | None],
    min_diversity: float = 0.0,
) -> Path | None:
    """The generator file of lowest selection FID (None: no candidate, keep the final model); fills ``section``.

    ``candidates`` are the FID curve's (:func:`components.evaluate.curve.candidate_features`); ``real_feats`` maps
    ``val`` and ``train`` to the features of their real images (``val`` may be None). The selection FID is against
    the val split (the train split's, with a note, when val has fewer than 2 images, too few for an FID). Candidates
    whose worst class's diversity ratio (``Candidates.collapse``) is below ``min_diversity`` are passed over while
    another one reaches it (:func:`eligible`); ``section["passed_over"]`` lists their steps.
    """
    if len(candidates.steps) < 2:
        section["notes"].append("no snapshot before the final step: the final model is kept")
        return candidates.paths[-1] if candidates.paths else None
    real_split = "val"
    n_val = 0 if real_feats.get("val") is None else len(real_feats["val"])
    if n_val < 2:
        real_split = "train"
        section["notes"].append(
            f"the val split has {n_val} sample(s), too few for an FID: the selection FID used the "
            "train split's real images (the headline FID's real set)"
        )
    real = real_feats[real_split]
    fids = candidates.fids(real)
    worst = [c.get("min_class_diversity_ratio") for c in candidates.collapse] or [None] * len(fids)
    keep = eligible(worst, min_diversity)
    best = keep[choose([fids[i] for i in keep])]
    passed = [i for i in range(len(fids)) if i not in keep]
    if passed:
        section["notes"].append(
            f"passed over for a class below eval.select_min_diversity={min_diversity:g} of the real variety: "
            + ", ".join(f"step {candidates.steps[i]} ({worst[i]:.2f})" for i in passed)
        )
    elif any(v is not None and v < min_diversity for v in worst):  # every candidate below: eligible kept them all
        section["notes"].append(
            f"no candidate has every class at eval.select_min_diversity={min_diversity:g} of the real variety or more: "
            "the selection FID alone decided"
        )
    section.update(
        passed_over=[candidates.steps[i] for i in passed],
        min_class_diversity=[v if v is not None and math.isfinite(v) else None for v in worst],
        steps=list(candidates.steps),
        fid=[v if math.isfinite(v) else None for v in fids],
        selected_step=candidates.steps[best],
        n_samples=candidates.n_samples,
        real_split=real_split,
        n_real=len(real),
    )
    return candidates.paths[best]
