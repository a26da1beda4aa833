"""The per-file work of ingest, run in the worker processes: decode one DICOM (every frame) and its mask.

Kept apart from :mod:`components.ingest.core` so that a spawned worker imports only pydicom, numpy and Pillow
(not pandas or the archive writer): worker start-up is part of every ingest's wall time.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.config import Config
from components.dicomio import ImageRejected, read_frames
from components.ingest.masks import read_mask
from components.samples import content_hash, sample_stats


@dataclass
class _Task:
    """One labels.csv row that passed the cheap checks and is sent to a decoding worker."""

    rel: str
    path: str
    mask_rel: str
    mask_path: str | None


@dataclass
class _Outcome:
    """What a worker returns for a task: arrays and header facts, or the reason it was rejected."""

    reason: str | None = None
    detail: str = ""
    on_mask: bool = False
    image: np.ndarray | None = None
    mask: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)
    header_patient_id: str | None = None  # PHI: hashed by the parent, never stored
    frame: int = 0
    n_frames: int = 1
    digest: str = ""  # content hash of image + mask (duplicate check, sample id)
    stats: dict[str, Any] = field(default_factory=dict)  # the manifest's per-sample statistics
    lesion_pixels: int = 0


def _decode(task: _Task, cfg: Config) -> list[_Outcome]:
    """Worker body: decode one DICOM (every frame) and its mask; one outcome per frame, or a single rejection.

    Module level so that a process pool can pickle it.
    """
    source_hash = hashlib.sha256()
    try:
        frames = read_frames(task.path, cfg, source_hash=source_hash)  # the file is read once for both
    except ImageRejected as exc:
        return [_Outcome(reason=exc.reason, detail=exc.detail)]
    except Exception as exc:  # noqa: BLE001 - one unforeseen file must not end an ingest of thousands
        # Only the type: an exception's text may quote header bytes (PHI).
        detail = f"unexpected {type(exc).__name__} while reading the file (a bug: please report it)"
        return [_Outcome(reason="internal_error", detail=detail)]
    first, size = frames[0], cfg.data.image_size
    if task.mask_path is None:
        masks = [np.zeros((size, size), dtype=np.uint8)] * len(frames)
    else:
        try:
            got = read_mask(
                task.mask_path,
                first.rows,
                first.cols,
                size,
                square=cfg.ingest.square,
                frames=len(frames),
                label_maps=cfg.ingest.label_maps,
                max_bytes=cfg.ingest.max_decoded_bytes,
            )
        except ImageRejected as exc:
            return [_Outcome(reason=exc.reason, detail=exc.detail, on_mask=True)]
        masks = [got] if len(frames) == 1 else list(got)
    spacing = first.pixel_spacing or (math.nan, math.nan)
    info = {
        "source_sha256": source_hash.hexdigest(),
        "modality": first.modality,
        "pixel_spacing_row": spacing[0],
        "pixel_spacing_col": spacing[1],
        "orig_rows": first.rows,
        "orig_cols": first.cols,
    }
    # Hashes and statistics are computed here, in parallel, rather than in the parent that writes the archive.
    return [
        _Outcome(
            image=f.image,
            mask=m,
            info={**info, "window_source": f.window_source},
            header_patient_id=f.patient_id,
            frame=f.frame,
            n_frames=f.n_frames,
            digest=content_hash(f.image, m),
            stats=sample_stats(f.image, m),
            lesion_pixels=int(np.count_nonzero(m)),
        )
        for f, m in zip(frames, masks, strict=True)
    ]


# The worker processes' configuration, set once per worker by _init_worker instead of pickled with every task.
_WORKER_CFG: Config | None = None


def _init_worker(cfg: Config) -> None:
    global _WORKER_CFG  # noqa: PLW0603 - one value per worker process, set by the pool's initializer
    _WORKER_CFG = cfg


def _ready() -> bool:
    """A no-op task: its completion tells the parent that a worker has started and imported everything."""
    return True


def _decode_chunk(tasks: list[_Task]) -> list[list[_Outcome]]:
    """Worker body: :func:`_decode` of consecutive tasks (one pool task per chunk amortises the hand-over)."""
    assert _WORKER_CFG is not None, "worker started without _init_worker"
    return [_decode(task, _WORKER_CFG) for task in tasks]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
