"""Per-sample numbers of the dataset archive: content hash and statistics of a normalised image and its mask.

Apart from :mod:`components.archive` (which needs pandas) so that ingest's decoding workers can compute them next to
the decoding, with nothing heavier than numpy to import.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np


def sample_stats(image: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """Per-image statistics stored in the manifest and checked by the validation suite."""
    return {
        "img_min": float(image.min()),
        "img_max": float(image.max()),
        "img_mean": float(image.mean()),
        "img_std": float(image.std()),
        "mask_fraction": float(mask.mean()),
        "mask_binary": _binary(mask),
    }


def _binary(mask: np.ndarray) -> bool:
    """Whether every value of ``mask`` is 0 or 1 (for unsigned integers a max, much cheaper than ``np.isin``)."""
    if mask.size and np.issubdtype(mask.dtype, np.unsignedinteger):
        return bool(mask.max() <= 1)
    return bool(np.isin(mask, (0, 1)).all())


def content_hash(image: np.ndarray, mask: np.ndarray) -> str:
    """SHA-256 of the normalised arrays: equal for the same image exported twice."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(image, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
    return h.hexdigest()
