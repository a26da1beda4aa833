"""Loading a trained generator, sampling labelled image + mask pairs, and the per-class sample grid.

``generator.pt`` (written by the trainer) holds the EMA generator's state dict, its constructor arguments and the
class names, so it rebuilds itself without the training config. The EMA snapshots the trainer keeps along the run
(``snapshots/generator_<step>.pt``, for the FID-over-training curve) have the same format.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from components.errors import DataError
from components.gan.models import build_generator
from components.gan.networks import set_condition_weight

GENERATOR_FILE = "generator.pt"
GENERATOR_FORMAT = 1
SNAPSHOT_DIR = "snapshots"
_SNAPSHOT_NAME = re.compile(r"generator_(\d+)\.pt")
MASK_THRESHOLD = 0.5
GRID_PAD = 2  # pixels between cells, and between the image and the mask of one cell


def load_generator(
    model_dir_or_file: str | os.PathLike[str],
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the generator stored in ``generator.pt`` (or a folder holding it), in eval mode on ``device``.

    Returns ``(generator, meta)``; ``meta`` has at least ``classes``, ``kwargs`` (constructor arguments) and
    ``step`` (training steps behind the weights).
    """
    path = Path(model_dir_or_file)
    if path.is_dir():
        path = path / GENERATOR_FILE
    if not path.is_file():
        raise DataError(f"{path}: no generator file; train a model first")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which file, not just the unpickler's complaint
        raise DataError(f"{path}: not a readable generator file ({exc})") from exc
    if not isinstance(blob, dict) or blob.get("format") != GENERATOR_FORMAT or "state_dict" not in blob:
        raise DataError(f"{path}: not a medgan generator file (format {GENERATOR_FORMAT} expected)")
    generator = build_generator(blob["kwargs"])
    generator.load_state_dict(blob["state_dict"])
    set_condition_weight(float(blob.get("cond_weight", 1.0)), generator)  # files before the option: 1
    generator.to(device).eval().requires_grad_(False)
    meta = {key: value for key, value in blob.items() if key != "state_dict"}
    return generator, meta


def snapshot_path(model_dir: str | os.PathLike[str], step: int) -> Path:
    """Where the trainer keeps the EMA generator snapshot of ``step`` (zero-padded, so names sort by step)."""
    return Path(model_dir) / SNAPSHOT_DIR / f"generator_{step:08d}.pt"


def list_snapshots(model_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``(step, path)`` of every EMA generator snapshot in ``model_dir``, by step; empty when there are none."""
    folder = Path(model_dir) / SNAPSHOT_DIR
    found = [(m, p) for p in folder.glob("generator_*.pt") if (m := _SNAPSHOT_NAME.fullmatch(p.name))]
    return sorted((int(m.group(1)), p) for m, p in found)


@torch.no_grad()
def generate(
    generator: nn.Module,
    labels: np.ndarray,
    seed: int,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample one pair per entry of ``labels`` (class indices).

    Returns ``images`` float32 (N, S, S) in [-1, 1] and ``masks`` uint8 (N, S, S) in {0, 1} (probability > 0.5).
    The latent codes come from a CPU generator seeded with ``seed`` and are drawn for the whole request at once,
    so the output depends only on ``seed`` and ``labels``, not on ``batch_size`` or the device. A generator with
    noise inputs gets each sample's noise maps from a seed of its own drawn after the latents (drawing every map of
    a large request at once would hold them all in memory).
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    size = int(generator.image_size)
    n_classes = int(generator.n_classes)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must be class indices in 0..{n_classes - 1}, got {labels.min()}..{labels.max()}")
    device = next(generator.parameters()).device
    was_training = generator.training
    generator.eval()
    rng = torch.Generator().manual_seed(int(seed))
    z = torch.randn(len(labels), int(generator.z_dim), generator=rng)
    noisy = len(getattr(generator, "noise_sizes", ())) > 0
    noise_seeds = torch.randint(0, 2**62, (len(labels),), generator=rng).tolist() if noisy else []
    images = np.empty((len(labels), size, size), np.float32)
    masks = np.empty((len(labels), size, size), np.uint8)
    for start in range(0, len(labels), max(int(batch_size), 1)):
        stop = start + max(int(batch_size), 1)
        y = torch.from_numpy(labels[start:stop]).to(device)
        noise = None
        if noisy:
            maps = [generator.draw_noise(1, torch.Generator().manual_seed(s), device) for s in noise_seeds[start:stop]]
            noise = [torch.cat(layer) for layer in zip(*maps, strict=True)]
        pair = generator(z[start:stop].to(device), y, noise).float().cpu()
        images[start:stop] = pair[:, 0].clamp(-1, 1).numpy()
        masks[start:stop] = (pair[:, 1] > MASK_THRESHOLD).numpy()
    generator.train(was_training)
    return images, masks


def class_grid(
    images: np.ndarray, masks: np.ndarray, labels: np.ndarray, classes: list[str], per_class: int
) -> np.ndarray:
    """A uint8 grayscale grid: one row per class, ``per_class`` cells per row, each cell image | mask.

    ``images`` are in [-1, 1]; ``masks`` in [0, 1] (binary or probabilities). Cells are filled with the first
    ``per_class`` samples of each class in ``labels`` order; missing ones stay black.
    """
    images = np.asarray(images, dtype=np.float32)
    masks = np.asarray(masks, dtype=np.float32)
    labels = np.asarray(labels).reshape(-1)
    if images.ndim != 3 or images.shape != masks.shape or len(labels) != len(images):
        raise ValueError(f"images {images.shape}, masks {masks.shape} and labels {labels.shape} do not match")
    size = images.shape[1] if len(images) else 0
    cell_w = 2 * size + GRID_PAD
    height = len(classes) * (size + GRID_PAD) + GRID_PAD
    width = per_class * (cell_w + GRID_PAD) + GRID_PAD
    grid = np.zeros((height, width), np.uint8)
    image_u8 = np.clip((images + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    mask_u8 = np.clip(masks * 255 + 0.5, 0, 255).astype(np.uint8)
    for row in range(len(classes)):
        top = GRID_PAD + row * (size + GRID_PAD)
        for col, i in enumerate(np.flatnonzero(labels == row)[:per_class]):
            left = GRID_PAD + col * (cell_w + GRID_PAD)
            grid[top : top + size, left : left + size] = image_u8[i]
            grid[top : top + size, left + size + GRID_PAD : left + cell_w] = mask_u8[i]
    return grid


def sample_grid(generator: nn.Module, classes: list[str], per_class: int, seed: int) -> np.ndarray:
    """Generate ``per_class`` pairs of every class with ``seed`` and lay them out with :func:`class_grid`."""
    labels = np.repeat(np.arange(len(classes)), per_class)
    images, masks = generate(generator, labels, seed=seed)
    return class_grid(images, masks, labels, classes, per_class)
