"""Downstream utility of synthetic data: Dice of a MONAI segmentation net on real held-out patients.

"Train on X, test on real": a small :class:`monai.networks.nets.BasicUNet` is trained on the given image/mask pairs
(real, or real + synthetic) and scored with :class:`monai.metrics.DiceMetric` on the real test split, per lesion
class. Training is deterministic for a seed on CPU, so the real and the real + synthetic runs differ only in data.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.nets import BasicUNet

from components.config import Config
from components.metrics.bootstrap import centred_interval

SEG_FEATURES = (8, 16, 32, 64, 128, 8)
# Lesions cover ~0.2-2% of a slice; at 1e-3 the few steps a quick evaluation affords end before the net finds
# them (Dice 0 on the phantom after 66 steps), at 1e-2 it does.
SEG_LR = 1e-2
THRESHOLD = 0.5


# ---------------------------------------------------------------------------------------------------------------
# scoring: functional core + stateful wrapper


def dice_per_sample(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Foreground Dice of each binary ``(N, S, S)`` prediction; ``nan`` where the ground truth is empty.

    The masks are one-hot encoded as (background, lesion) so that MONAI's ``include_background=False`` drops the
    background channel and scores the lesion; ``ignore_empty`` leaves samples without a lesion unscored.
    """
    p = torch.as_tensor(np.asarray(pred) > 0, dtype=torch.float32)[:, None]
    t = torch.as_tensor(np.asarray(target) > 0, dtype=torch.float32)[:, None]
    if len(p) == 0:
        return np.zeros(0, dtype=np.float64)
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    scores = metric(torch.cat([1 - p, p], dim=1), torch.cat([1 - t, t], dim=1))
    return scores[:, 0].double().numpy()


def dice_by_class(scores: np.ndarray, labels: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
    """Mean Dice per class over samples with a lesion, and the macro mean over classes.

    Returns ``{"dice": macro mean, "per_class": {class: mean}, "n_scored": {class: samples with a lesion}}``;
    a class without a scored sample gets ``nan`` and does not enter the macro mean.
    """
    labels = np.asarray(labels).astype(str)
    per_class: dict[str, float] = {}
    n_scored: dict[str, int] = {}
    for cls in classes:
        s = scores[(labels == cls) & np.isfinite(scores)]
        n_scored[cls] = len(s)
        per_class[cls] = float(s.mean()) if len(s) else float("nan")
    finite = [v for v in per_class.values() if np.isfinite(v)]
    return {"dice": float(np.mean(finite)) if finite else float("nan"), "per_class": per_class, "n_scored": n_scored}


def paired_dice_ci(
    real: np.ndarray,
    synth: np.ndarray,
    labels: Sequence[str],
    classes: Sequence[str],
    resamples: int,
    seed: int,
) -> dict[str, dict[str | None, tuple[float, float]]]:
    """Bootstrap intervals of Dice for two nets scored on the same test samples, and of their difference.

    ``real`` and ``synth`` are per-sample scores (:func:`dice_per_sample`) of the nets trained on real and on
    real + synthetic data. Test samples are resampled within each class (classes keep their size) and the same
    resample scores both nets, so the interval of the gain reflects the paired comparison, not two independent
    noises. Returns ``{"dice_real" | "dice_real_synth" | "dice_gain": {None (macro mean) | class: (low, high)}}``.
    """
    labels = np.asarray(labels).astype(str)
    ok = np.isfinite(real) & np.isfinite(synth)
    groups = {c: np.flatnonzero(ok & (labels == c)) for c in classes}
    groups = {c: g for c, g in groups.items() if len(g)}
    stats = {"dice_real": lambda a, b: a, "dice_real_synth": lambda a, b: b, "dice_gain": lambda a, b: b - a}
    if not groups:
        return {name: {None: (float("nan"), float("nan"))} for name in stats}

    def class_means(index: dict[str, np.ndarray]) -> dict[str | None, tuple[float, float]]:
        means: dict[str | None, tuple[float, float]] = {c: (real[i].mean(), synth[i].mean()) for c, i in index.items()}
        means[None] = tuple(np.mean(list(means.values()), axis=0))  # macro mean, as dice_by_class
        return means

    rng = np.random.default_rng(seed)
    point = class_means(groups)
    draws = [class_means({c: g[rng.integers(0, len(g), len(g))] for c, g in groups.items()}) for _ in range(resamples)]
    return {
        name: {scope: centred_interval([f(*d[scope]) for d in draws], f(*point[scope]), resamples) for scope in point}
        for name, f in stats.items()
    }


class DiceScore:
    """Accumulates per-sample Dice over batches and aggregates it per class (MONAI ``reset/aggregate`` style)."""

    def __init__(self, classes: Sequence[str]) -> None:
        self.classes = list(classes)
        self.reset()

    def reset(self) -> None:
        """Drop accumulated scores."""
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def update(self, pred: np.ndarray, target: np.ndarray, labels: Sequence[str]) -> None:
        """Score a batch of binary predictions against their ground truth."""
        self._scores.append(dice_per_sample(pred, target))
        self._labels.append(np.asarray(labels).astype(str))

    def aggregate(self) -> dict[str, Any]:
        """See :func:`dice_by_class`."""
        scores = np.concatenate(self._scores) if self._scores else np.zeros(0)
        labels = np.concatenate(self._labels) if self._labels else np.zeros(0, dtype=str)
        return dice_by_class(scores, labels, self.classes)


# ---------------------------------------------------------------------------------------------------------------
# training


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed torch and force deterministic kernels inside the block, restoring the caller's state afterwards."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    # cuBLAS needs this before its first use to be deterministic; it has no effect on CPU.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        # CUDA lacks deterministic kernels for some ops (e.g. max-pool backward): warn there instead of failing.
        # Every op used here is deterministic on CPU, where reproducibility is promised.
        torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)


def build_segmenter() -> torch.nn.Module:
    """The small 2-D BasicUNet used for the Dice comparison (one input channel, one lesion logit)."""
    with contextlib.redirect_stdout(io.StringIO()):  # BasicUNet prints its feature sizes on construction
        return BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=SEG_FEATURES)


def train_segmenter(
    images: np.ndarray,
    masks: np.ndarray,
    epochs: int,
    batch_size: int,
    seed: int,
    steps: int | None = None,
    device: str = "cpu",
) -> tuple[torch.nn.Module, list[float]]:
    """Train a segmenter with DiceCE loss; returns the net (in eval mode) and the loss of every step.

    ``steps`` fixes the number of optimiser steps instead of ``epochs`` passes; the evaluate stage uses it so that
    training on real + synthetic data gets the same budget as training on real data alone.
    """
    n = len(images)
    if n == 0:
        raise ValueError("cannot train a segmenter on an empty set")
    total = int(steps) if steps is not None else int(epochs) * math.ceil(n / batch_size)
    rng = np.random.default_rng(seed)
    losses: list[float] = []
    with deterministic(seed):
        net = build_segmenter().to(device)
        opt = torch.optim.Adam(net.parameters(), lr=SEG_LR)
        # batch=True pools Dice over the batch: samples of lesion-free classes have empty masks.
        loss_fn = DiceCELoss(sigmoid=True, batch=True)
        net.train()
        order = np.zeros(0, dtype=np.int64)
        while len(losses) < total:
            if len(order) < batch_size:
                order = np.concatenate([order, rng.permutation(n)])
            idx, order = np.sort(order[:batch_size]), order[batch_size:]
            x = torch.from_numpy(np.ascontiguousarray(images[idx], dtype=np.float32))[:, None].to(device)
            y = torch.from_numpy(np.ascontiguousarray(masks[idx], dtype=np.float32))[:, None].to(device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    return net.eval(), losses


def predict_masks(net: torch.nn.Module, images: np.ndarray, batch_size: int = 32, device: str = "cpu") -> np.ndarray:
    """Binary uint8 masks ``(N, S, S)`` predicted by ``net`` (sigmoid > 0.5)."""
    out = np.zeros(np.shape(images), dtype=np.uint8)
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size], dtype=np.float32))
            prob = torch.sigmoid(net(x[:, None].to(device)))[:, 0]
            out[start : start + len(x)] = (prob > THRESHOLD).cpu().numpy()
    return out


def train_and_score(
    train_images: np.ndarray,
    train_masks: np.ndarray,
    test_images: np.ndarray,
    test_masks: np.ndarray,
    test_labels: Sequence[str],
    classes: Sequence[str],
    cfg: Config,
    seed: int,
    steps: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train on ``train_*`` for ``cfg.eval.seg_epochs`` (or ``steps``) and score Dice on the test set.

    ``test_labels`` are class names; ``classes`` are the classes to score (the lesion classes). Returns
    :func:`dice_by_class`'s dict plus ``scores`` (per test sample, ``nan`` where unscored), ``steps``,
    ``seconds`` (training time) and ``final_loss``.
    """
    start = time.perf_counter()
    net, losses = train_segmenter(
        train_images, train_masks, cfg.eval.seg_epochs, cfg.eval.seg_batch_size, seed, steps=steps, device=device
    )
    seconds = time.perf_counter() - start
    scores = dice_per_sample(predict_masks(net, test_images, cfg.eval.seg_batch_size * 2, device), test_masks)
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        **dice_by_class(scores, test_labels, classes),
        "scores": scores,
        "steps": len(losses),
        "seconds": seconds,
        "final_loss": float(np.mean(tail)),
    }
