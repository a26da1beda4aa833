"""FID over training: the EMA-generator snapshots the trainer kept, scored against the final FID's real features.

Every point uses the same synthetic labels and latents (an evenly spaced subset of the headline FID's, so the class
mix is kept) and the same real features, so the points differ only by the weights behind them. The final model is
always the last point (a snapshot at the final step holds the very weights of ``generator.pt``); its samples are
the headline FID's when the headline scored the final model, else they are drawn like a snapshot's. Only the point
values are computed, no bootstrap intervals: the curve shows a trend, the headline FID carries the intervals.

The same samples' features serve the best-snapshot selection (:mod:`components.evaluate.selection`), scored there
against another real set: :func:`candidate_features` computes them once for both. From the same samples (no extra
generator pass) it can also compute collapse statistics per candidate (:mod:`components.metrics.collapse`: per-class
diversity ratio, worst class, lesion-position spread ratio), so collapse over training shows beside the FID.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.errors import ConfigError
from components.metrics.collapse import SUMMARIES
from components.metrics.features import FeatureExtractor, extract_features
from components.metrics.fid import fid_from_features

# collapse(images, masks, label indices) -> collapse_ratios(...) of those samples against the real ones
CollapseFn = Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, Any]]


def curve_subset(total: int, wanted: int) -> np.ndarray:
    """Evenly spaced indices of ``wanted`` of ``total`` samples (all for ``wanted`` 0 or at least ``total``).

    The synthetic label plan is sorted by class, so even spacing keeps its class proportions.
    """
    if wanted == 1 or wanted < 0:
        raise ConfigError(f"eval.fid_curve_samples must be 0 (all) or at least 2 for an FID, got {wanted}")
    if wanted == 0 or wanted >= total:
        return np.arange(total)
    return np.unique(np.linspace(0, total - 1, wanted).round().astype(np.int64))


def curve_models(model_dir: str | os.PathLike[str], final_step: int) -> tuple[list[tuple[int, Path]], list[int]]:
    """The snapshots the curve scores (``(step, path)`` before ``final_step``, by step) and the ignored later steps.

    Snapshots after the final step are left by a crashed run whose resume stopped earlier: not part of this model's
    history. The snapshot at the final step is the final model itself.
    """
    from components.gan.sampling import list_snapshots

    snapshots = list_snapshots(model_dir)
    return [(s, p) for s, p in snapshots if s < final_step], [s for s, _ in snapshots if s > final_step]


@dataclass
class Candidates:
    """The snapshots before the final step and the final model, by step, with the features of their curve samples."""

    steps: list[int] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    feats: list[np.ndarray] = field(default_factory=list)
    collapse: list[dict[str, Any]] = field(default_factory=list)  # per candidate, when candidate_features was asked
    n_samples: int = 0
    notes: list[str] = field(default_factory=list)

    def fids(self, real_feats: np.ndarray) -> list[float]:
        """Each candidate's FID against ``real_feats`` (NaN where undefined)."""
        return [fid_from_features(real_feats, f) for f in self.feats]


def candidate_features(
    model_dir: str | os.PathLike[str],
    final_step: int,
    fake_labels: np.ndarray,
    seed: int,
    wanted: int,
    extractor: FeatureExtractor,
    device: str = "cpu",
    final_feats: np.ndarray | None = None,
    collapse: CollapseFn | None = None,
    final_samples: tuple[np.ndarray, np.ndarray] | None = None,
) -> Candidates:
    """Features of the curve's samples of every snapshot before ``final_step`` and of the final model, by step.

    The samples are ``wanted`` (``eval.fid_curve_samples``) of the headline's ``fake_labels`` and latents ``seed``;
    ``final_feats`` are the headline's features of the final model (all of ``fake_labels``), reused when given (with
    ``collapse``, only together with ``final_samples``, the headline's images and masks). ``collapse`` is applied to
    all of ``fake_labels``' samples of every candidate (images, masks, labels; the curve's subset would leave a rare
    class a handful) into ``Candidates.collapse``. No candidate at all when the trainer kept no snapshot.
    """
    from components.gan.sampling import GENERATOR_FILE, generate, list_snapshots, load_generator

    pick = curve_subset(len(fake_labels), wanted)
    out = Candidates(n_samples=int(len(pick)))
    if not list_snapshots(model_dir):
        return out
    earlier, later = curve_models(model_dir, final_step)
    if later:
        out.notes.append(f"ignored snapshots of steps {later}, after the final model's step {final_step}")
    reuse = final_feats is not None and (collapse is None or final_samples is not None)
    for step, path in [*earlier, (int(final_step), Path(model_dir) / GENERATOR_FILE)]:
        out.steps.append(step)
        out.paths.append(path)
        if step == final_step and reuse:
            out.feats.append(final_feats[pick])
            images, masks = final_samples if final_samples is not None else (None, None)
        else:
            generator, _ = load_generator(path, device=device)
            images, masks = generate(generator, fake_labels, seed=seed)  # all latents drawn: the subset's are the same
            out.feats.append(extract_features(extractor, images[pick]))
        if collapse is not None:
            # every generated sample, not only the curve's subset: the statistics cost no Inception pass, and a
            # rare class has a handful of samples in the subset (selection.py reads them against a floor)
            out.collapse.append(collapse(images, masks, fake_labels))
    return out


def fid_curve(candidates: Candidates, real_feats: np.ndarray) -> dict[str, Any]:
    """FID of each candidate against ``real_feats`` (the headline's), by training step.

    Returns ``steps``, ``fid`` (one per step, ``None`` where undefined), ``n_samples`` and ``notes``; empty lists
    when the trainer kept no snapshot. With collapse statistics in ``candidates``, also one list per collapse summary
    (``diversity_ratio``, ``min_class_diversity_ratio``, ``lesion_spread_ratio``) and ``per_class``: ``{class:
    {ratio name: list}}``, aligned with ``steps``.
    """
    fids = candidates.fids(real_feats)
    out: dict[str, Any] = {
        "steps": list(candidates.steps),
        "fid": [_finite(v) for v in fids],
        "n_samples": candidates.n_samples,
        "notes": list(candidates.notes),
    }
    if candidates.collapse:
        for name in SUMMARIES:
            out[name] = [_finite(c.get(name)) for c in candidates.collapse]
        classes = dict.fromkeys(cls for c in candidates.collapse for cls in c.get("per_class", {}))
        out["per_class"] = {
            cls: {
                name: [_finite(c.get("per_class", {}).get(cls, {}).get(name)) for c in candidates.collapse]
                for name in ("diversity_ratio", "lesion_spread_ratio")
                if any(name in c.get("per_class", {}).get(cls, {}) for c in candidates.collapse)
            }
            for cls in classes
        }
    return out


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None
