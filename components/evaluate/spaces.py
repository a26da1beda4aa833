"""How the metrics of several feature spaces share one flat ``metrics.json`` and say which space produced them.

The primary space (``eval.feature_extractor``) keeps the plain keys (``fid``, ``precision.<class>``, ...); every
``eval.extra_extractors`` space gets its name as a key prefix (``medical_fid``), its held-out reference
``holdout_medical_fid``. ``metrics.json`` carries, under :data:`EXTRACTORS_KEY`, each space's identity (role, key
prefix, weights fingerprint, dimension, real / synthetic / held-out sample counts, the reference sets' content hashes
and how intervals resample (:mod:`components.evaluate.provenance`), and for a fitted extractor its training
provenance); MLflow run tags and registry version tags repeat the main fields (:func:`extractor_tags`).
Kept free of torch so that the register stage can use it.
"""

from __future__ import annotations

import re
from typing import Any

EXTRACTORS_KEY = "extractors"  # the one non-scalar entry of metrics.json
HOLDOUT = "holdout_"  # prefix of the held-out real reference of a metric (evaluate.core.holdout_metrics)
TAG_FIELDS = (
    "role",
    "prefix",
    "fingerprint",
    "dim",
    "n_real",
    "n_fake",
    "n_holdout",
    "n_patients",
    "reference_sha256",
    "holdout_sha256",
    "resampling",
    "rows_sha256",
    "data_sha256",
)


def scope_name(cls: str) -> str:
    """A class name as it appears in per-class metric keys (``fid.<class>``): sanitised for MLflow."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", cls)


def space_prefix(name: str) -> str:
    """Key prefix of an ``eval.extra_extractors`` space's metrics (the primary space's keys have none)."""
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', name)}_"


def prefixed(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """Keys of a secondary feature space: ``<prefix><key>``; the held-out reference ``holdout_<prefix><name>``."""
    return {
        HOLDOUT + prefix + k[len(HOLDOUT) :] if k.startswith(HOLDOUT) else prefix + k: v for k, v in metrics.items()
    }


def extractor_tags(metrics: dict[str, Any], prefix: str) -> dict[str, str]:
    """Tags ``<prefix><space>.<field>`` naming every feature space of ``metrics`` (metrics.json's content)."""
    spaces = metrics.get(EXTRACTORS_KEY) or {}
    return {
        f"{prefix}{name}.{field}": str(identity[field])
        for name, identity in spaces.items()
        if isinstance(identity, dict)
        for field in TAG_FIELDS
        if identity.get(field) is not None
    }
