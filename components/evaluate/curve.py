"""FID over training: the EMA-generator snapshots the trainer kept, scored against the final FID's real features.

Every point uses the same synthetic labels and latents (an evenly spaced subset of the headline FID's, so the class
mix is kept) and the same real features, so the points differ only by the weights behind them. The final model is
always the last point and costs nothing: its features are the headline FID's, already computed (a snapshot at the
final step holds the very weights of ``generator.pt``). Only the point values are computed, no bootstrap intervals:
the curve shows a trend, the headline FID carries the intervals.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from components.errors import ConfigError
from components.metrics.features import FeatureExtractor, extract_features
from components.metrics.fid import fid_from_features


def curve_subset(total: int, wanted: int) -> np.ndarray:
    """Evenly spaced indices of ``wanted`` of ``total`` samples (all for ``wanted`` 0 or at least ``total``).

    The synthetic label plan is sorted by class, so even spacing keeps its class proportions.
    """
    if wanted == 1 or wanted < 0:
        raise ConfigError(f"eval.fid_curve_samples must be 0 (all) or at least 2 for an FID, got {wanted}")
    if wanted == 0 or wanted >= total:
        return np.arange(total)
    return np.unique(np.linspace(0, total - 1, wanted).round().astype(np.int64))


def fid_curve(
    model_dir: str | os.PathLike[str],
    final_step: int,
    real_feats: np.ndarray,
    fake_labels: np.ndarray,
    fake_feats: np.ndarray,
    seed: int,
    wanted: int,
    extractor: FeatureExtractor,
    device: str = "cpu",
) -> dict[str, Any]:
    """FID of each snapshot in ``model_dir`` and of the final model, by training step.

    ``fake_labels``/``fake_feats``/``seed`` are those of the headline FID (``fake_feats`` from the model of
    ``final_step``); ``wanted`` is ``eval.fid_curve_samples``. Returns ``steps``, ``fid`` (one per step, ``None``
    where undefined), ``n_samples`` and ``notes``; empty lists when the trainer kept no snapshot.
    """
    from components.gan.sampling import generate, list_snapshots, load_generator

    snapshots = list_snapshots(model_dir)
    pick = curve_subset(len(fake_labels), wanted)
    out: dict[str, Any] = {"steps": [], "fid": [], "n_samples": int(len(pick)), "notes": []}
    if not snapshots:
        return out
    later = [step for step, _ in snapshots if step > final_step]
    if later:  # left by a crashed run whose resume stopped earlier: not part of this model's history
        out["notes"].append(f"ignored snapshots of steps {later}, after the final model's step {final_step}")
    for step, path in snapshots:
        if step >= final_step:
            continue
        generator, _ = load_generator(path, device=device)
        images, _ = generate(generator, fake_labels, seed=seed)  # all latents drawn, so the subset's are the same
        out["steps"].append(step)
        out["fid"].append(fid_from_features(real_feats, extract_features(extractor, images[pick])))
    out["steps"].append(int(final_step))
    out["fid"].append(fid_from_features(real_feats, fake_feats[pick]))
    out["fid"] = [v if np.isfinite(v) else None for v in out["fid"]]
    return out
