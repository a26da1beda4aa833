"""The challenger against the current champion, both scored in the challenger's evaluation.

The registry's stored metrics of the champion were measured on its own run's training split, possibly with another
extractor or sample budget, so they cannot decide a promotion. Here the champion's generator is loaded from the
registry and scored exactly like the challenger: the same real train features, feature extractor, label plan and
latent seed (common random numbers). That seed is one of its own, not the headline's: the challenger's snapshot was
chosen on the headline's latents, and reusing them would favour it. The FID improvement (champion minus challenger:
positive means the challenger is better) gets a paired bootstrap interval
(:func:`components.metrics.paired.paired_improvement`), which a gate rule of mode ``improves`` reads
(:mod:`components.register.gate`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from components.metrics.features import FeatureExtractor, extract_features
from components.metrics.fid import fid_from_features
from components.metrics.paired import paired_improvement


def load_champion(
    tracking_uri: str | None, model_name: str, classes: list[str], image_size: int, device: str
) -> tuple[Any, dict[str, Any]] | tuple[None, str]:
    """``(generator, info)`` of the registry's ``champion``, or ``(None, reason)`` when it cannot be compared.

    No tracking, no champion yet, or a champion trained on other classes or another image size: the reason says
    which. A champion that exists but cannot be read raises, since a gate must not mistake it for "no champion".
    """
    from mlflow.tracking import MlflowClient

    from components.export import resolve_model
    from components.gan.sampling import load_generator
    from components.registry import champion_version

    if not tracking_uri:
        return None, "no MLflow tracking: no champion to compare with"
    version = champion_version(MlflowClient(tracking_uri), model_name)
    if version is None:
        return None, f"no champion version of {model_name!r} in the registry yet"
    with tempfile.TemporaryDirectory() as tmp:
        source = resolve_model(f"models:/{model_name}/{version.version}", tracking_uri, Path(tmp))
        generator, meta = load_generator(source.path, device=device)
    if list(meta.get("classes", [])) != list(classes):
        return None, f"champion v{version.version} was trained on classes {meta.get('classes')}, not {classes}"
    size = int(generator.image_size)
    if size != image_size:
        return None, f"champion v{version.version} draws {size} px images, this evaluation {image_size} px"
    info = {"version": str(version.version), "step": meta.get("step"), "sha256": source.sha256}
    return generator, info


def champion_comparison(
    champion: tuple[Any, dict[str, Any]] | tuple[None, str],
    challenger: Any,
    real_feats: np.ndarray,
    fake_labels: np.ndarray,
    extractor: FeatureExtractor,
    seed: int,
    resamples: int,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Metrics and report section of the paired champion comparison (none when ``champion`` holds a reason).

    Both generators (``challenger``: the selected one) draw ``fake_labels`` at ``seed``. Metrics: ``champion_fid``
    (the champion's FID here),
    ``fid_improvement`` with ``_ci_low`` / ``_ci_high``, and ``champion_version``.
    """
    from components.gan.sampling import generate

    generator, info = champion
    if generator is None:
        return {}, {"compared": False, "reason": info}
    feats = [
        extract_features(extractor, generate(g, fake_labels, seed=seed)[0], progress=False)
        for g in (generator, challenger)
    ]
    res = paired_improvement(fid_from_features, real_feats, *feats, resamples, seed)
    metrics = {
        "champion_fid": res["reference"],
        "fid_improvement": res["improvement"],
        "fid_improvement_ci_low": res["ci_low"],
        "fid_improvement_ci_high": res["ci_high"],
        "champion_version": float(info["version"]),
    }
    low, high = res["ci_low"], res["ci_high"]
    if not (np.isfinite(low) and np.isfinite(high)):
        verdict = "no interval"
    elif low > 0:
        verdict = "challenger better"
    elif high < 0:
        verdict = "champion better"
    else:
        verdict = "within noise"
    section = {
        "compared": True,
        **info,
        "champion_fid": res["reference"],
        "challenger_fid": res["candidate"],
        "improvement": res["improvement"],
        "ci": [low, high],
        "verdict": verdict,
        "n_synthetic": int(len(fake_labels)),
        "n_real": int(len(real_feats)),
        "resamples": int(resamples),
        "extractor": {"name": extractor.name, "fingerprint": extractor.fingerprint},
    }
    return metrics, section
