"""Where every value comes from, so that two numbers are compared only when they are comparable.

A distribution metric depends on the feature extractor (its weights), on the real set it is scored against and on the
sample sizes: a ``pixels``-space FID of 9 and an Inception FID of 218 are different quantities, and an FID of 128
samples is biased upwards against one of 1000. Every feature space's identity in ``metrics.json``
(:data:`components.evaluate.spaces.EXTRACTORS_KEY`) therefore carries, beside the weights fingerprint and the overall
counts, what :func:`space_provenance` adds: the content hash of the real reference set (``reference_sha256``, the
train split's images) and of the held-out set (``holdout_sha256``), the patients behind the real rows and how
intervals resample them (``resampling``), the per-class sample counts and the minimum count below which a per-class
value is flagged (:data:`MIN_CLASS_SAMPLES`). MLflow run tags and registry version tags repeat the main fields
(:data:`components.evaluate.spaces.TAG_FIELDS`).

:func:`champion_spaces` reads the same identity back from the registry's champion version, so the report can warn
when the champion's stored metrics come from another extractor or reference set.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Per-class distribution metrics on fewer samples (real or synthetic) than this are flagged in the report: FID and KID
# of a few images in 2048 dimensions say little (FID is biased upwards at small n, the k-NN metrics are coarse).
MIN_CLASS_SAMPLES = 20
# Overall: below this many samples on either side the headline values fail the report's sanity check.
MIN_HEADLINE_SAMPLES = 50
RESAMPLING_PATIENTS = "patients (cluster bootstrap of the real side; synthetic samples row by row)"
TAG_PREFIX = "extractor."  # the registry version tags of components.register.core


def counts_per_class(labels: np.ndarray, classes: list[str]) -> dict[str, int]:
    """Samples per class name of label indices ``labels``."""
    n = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    return {c: int(n[k]) for k, c in enumerate(classes)}


def space_provenance(
    real: tuple[np.ndarray, np.ndarray, np.ndarray],
    fake_labels: np.ndarray,
    holdout: np.ndarray | None,
    classes: list[str],
) -> dict[str, Any]:
    """The identity fields every feature space of one evaluation shares (its metrics' real and synthetic sides).

    ``real`` is (images, label indices, patients) of the real reference set, ``fake_labels`` the synthetic samples'
    label indices and ``holdout`` the held-out real images (None: fewer than 2).
    """
    from components.metrics.features import array_fingerprint  # torch-free callers (the report) import this module

    images, labels, patients = real
    return {
        "reference_sha256": array_fingerprint(np.asarray(images)),
        "holdout_sha256": array_fingerprint(np.asarray(holdout)) if holdout is not None else None,
        "n_patients": len(set(np.asarray(patients).astype(str).tolist())),
        "resampling": RESAMPLING_PATIENTS,
        "n_real_per_class": counts_per_class(labels, classes),
        "n_fake_per_class": counts_per_class(fake_labels, classes),
        "min_class_samples": MIN_CLASS_SAMPLES,
    }


def champion_spaces(tracking_uri: str | None, model_name: str) -> dict[str, Any] | None:
    """The registry champion's version and feature-space identities (its ``extractor.<space>.<field>`` tags).

    None without tracking or without a champion. A champion registered before its versions carried the identity has
    ``spaces`` empty: the report says its metrics cannot be checked for comparability.
    """
    if not tracking_uri:
        return None
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        version = MlflowClient(tracking_uri).get_model_version_by_alias(model_name, "champion")
    except MlflowException:  # no such model or no champion alias yet
        return None
    spaces: dict[str, dict[str, str]] = {}
    for key, value in (version.tags or {}).items():
        if key.startswith(TAG_PREFIX) and key.count(".") >= 2:
            space, field = key[len(TAG_PREFIX) :].rsplit(".", 1)
            spaces.setdefault(space, {})[field] = value
    return {"version": str(version.version), "spaces": spaces}
