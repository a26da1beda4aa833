"""Downstream utility of synthetic data: Dice of a MONAI segmentation net on real held-out patients.

"Train on X, test on real": a small :class:`monai.networks.nets.BasicUNet` is trained on the data of each *arm*
(:data:`components.config.SEG_ARMS`: the real train split drawn uniformly, drawn with the class weights, or with the
class weights in the loss; real + synthetic pairs; synthetic pairs only) and scored on the real test split. Every arm
gets the same optimiser steps, schedule and segmenter seeds, so arms differ only in their data; training is
deterministic for a seed on CPU.

Scoring convention, per test slice:

- a slice with a lesion gets the foreground Dice of the predicted mask (MONAI ``DiceMetric``): the headline;
- a lesion-free slice has no Dice (0/0; MONAI's ``ignore_empty``); it is scored instead as a **false positive** when
  the net predicts any lesion pixel on it (false-positive rate), and by the predicted lesion's share of the slice.

Several segmenter seeds are pooled per test slice (the mean over seeds), and intervals come from a paired
**patient-level** bootstrap: test patients are resampled within each class with all their slices, and the same
resample scores every arm, so a gain's interval reflects the paired comparison on other patients, not slice noise.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import DiceMetric
from monai.networks.nets import BasicUNet

from components.config import SEG_ARMS
from components.metrics.bootstrap import centred_interval

# Half the channels of the former (8, 16, 32, 64, 128, 8): a step of 16 slices costs 83 ms on one CPU thread and 50 ms
# on two (the former net's 156 / 86 ms), and with the schedule below it learns the quickstart's lesions better and
# more steadily (bench/RESULTS.md, segmenter baseline).
SEG_FEATURES = (4, 8, 16, 32, 64, 4)
# One-cycle schedule (Smith 2018): the learning rate warms up over the first SEG_WARMUP of the steps to SEG_LR, then
# anneals (cosine) to ~0, so the net ends on a small step. Measured on the quickstart: the former constant 1e-2 gave
# Dice 0.53-0.85 over six seeds; peaks of 2e-2 or 3e-2 lost the rare class, 5e-3 left some seeds at Dice 0.
SEG_LR = 1e-2
SEG_WARMUP = 0.2
# Initial lesion probability of every pixel (the output bias, as RetinaNet's prior init, Lin et al. 2017), instead of
# 0.5: lesion pixels are ~0.4 % of a quickstart slice, and from 0.5 the first steps' cross-entropy can push the whole
# net to a constant background it never leaves. Measured over 16 seeds (200 steps of 8): without it one seed never
# predicted a lesion (Dice 0) and 40 % of the lesion-free test slices got lesion pixels; with 0.03 the worst seed
# scored 0.59 and 11 % of those slices did (0.01: worst seed 0.46; 0.1: 0.41).
SEG_PRIOR = 0.03
THRESHOLD = 0.5
REFERENCE_ARM = "real"  # every gain is an arm's Dice minus this arm's
TOPUP_ARM = "real+synthetic"  # the arm whose gain answers "did the synthetic top-up help?"
SYNTHETIC_ARMS = (TOPUP_ARM, "synthetic")  # the arms that need synthetic pairs


# ---------------------------------------------------------------------------------------------------------------
# scoring: functional core + stateful wrapper


def dice_per_sample(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Foreground Dice of each binary ``(N, S, S)`` prediction; ``nan`` where the ground truth is empty.

    The masks are one-hot encoded as (background, lesion) so that MONAI's ``include_background=False`` drops the
    background channel and scores the lesion; ``ignore_empty`` leaves samples without a lesion unscored (they are
    scored by :func:`false_positives_per_sample`).
    """
    p = torch.as_tensor(np.asarray(pred) > 0, dtype=torch.float32)[:, None]
    t = torch.as_tensor(np.asarray(target) > 0, dtype=torch.float32)[:, None]
    if len(p) == 0:
        return np.zeros(0, dtype=np.float64)
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    scores = metric(torch.cat([1 - p, p], dim=1), torch.cat([1 - t, t], dim=1))
    return scores[:, 0].double().numpy()


def false_positives_per_sample(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """On each lesion-free sample: 1.0 if any lesion pixel is predicted, else 0.0, and the predicted share of pixels.

    Both are ``nan`` on samples whose ground truth has a lesion (those are scored by :func:`dice_per_sample`).
    """
    p = np.asarray(pred).reshape(len(pred), -1) > 0
    empty = ~(np.asarray(target).reshape(len(target), -1) > 0).any(axis=1)
    flagged = np.where(empty, p.any(axis=1), np.nan)
    area = np.where(empty, p.mean(axis=1) if p.shape[1] else 0.0, np.nan)
    return flagged.astype(np.float64), area.astype(np.float64)


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


def paired_bootstrap(
    scores: Mapping[str, np.ndarray],
    labels: Sequence[str],
    groups: Sequence[Any],
    classes: Sequence[str],
    resamples: int,
    seed: int,
    reference: str | None = None,
    level: float = 0.95,
) -> dict[str, dict[str, dict[str | None, tuple[float, float]]]]:
    """Intervals of per-class means of paired per-sample scores, and of each arm's difference to ``reference``.

    ``scores`` maps an arm to its per-sample scores on the same test samples (``nan``: unscored, e.g. no lesion);
    ``groups`` are the samples' patients. Within each class the patients with scored samples are resampled with
    replacement, each bringing all its samples, and one resample scores every arm (paired). A class mean is the mean
    over the drawn samples, the macro mean (scope ``None``) the mean over classes, as :func:`dice_by_class`. Passing
    each sample as its own group gives the slice bootstrap, which treats correlated slices of one patient as
    independent and so gives intervals too narrow.

    A class with fewer than two patients has no interval (a resample of one patient always repeats it), and neither
    has the macro mean then. Returns ``{"value": {arm: {scope: (low, high)}}, "gain": {arm: {scope: (low, high)}}}``;
    ``gain`` holds every arm but ``reference`` (empty without one); scopes are ``None`` and each class with a scored
    sample.
    """
    arms = list(scores)
    labels = np.asarray(labels).astype(str)
    groups = np.asarray(groups)
    table = np.stack([np.asarray(scores[a], dtype=np.float64) for a in arms]) if arms else np.zeros((0, len(labels)))
    ok = np.isfinite(table).all(axis=0)
    nan = (float("nan"), float("nan"))
    # per class: sums of each arm's scores and sample counts per patient, so that a resample is an index draw
    per_class: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for cls in classes:
        rows = np.flatnonzero(ok & (labels == cls))
        if len(rows):
            patients, inverse = np.unique(groups[rows], return_inverse=True)
            sums = np.stack([np.bincount(inverse, table[k, rows], len(patients)) for k in range(len(arms))], axis=1)
            per_class[cls] = (sums, np.bincount(inverse, minlength=len(patients)).astype(np.float64))
    ref = arms.index(reference) if reference in arms else None
    gains = [a for a in arms if ref is not None and a != reference]
    scopes: list[str | None] = [None, *per_class]
    if not per_class:
        return {"value": {a: {None: nan} for a in arms}, "gain": {a: {None: nan} for a in gains}}

    def means(draws: dict[str, np.ndarray]) -> dict[str | None, np.ndarray]:
        out: dict[str | None, np.ndarray] = {
            c: per_class[c][0][d].sum(axis=0) / per_class[c][1][d].sum() for c, d in draws.items()
        }
        out[None] = np.mean([out[c] for c in per_class], axis=0)
        return out

    point = means({c: np.arange(len(n)) for c, (_, n) in per_class.items()})
    rng = np.random.default_rng(seed)
    estimable = {c: len(n) >= 2 for c, (_, n) in per_class.items()}
    estimable[None] = all(estimable.values())
    draws = [
        means({c: rng.integers(0, len(n), len(n)) for c, (_, n) in per_class.items()}) for _ in range(max(resamples, 0))
    ]

    def interval(scope: str | None, arm: int, paired: bool) -> tuple[float, float]:
        """Of the arm's mean, or (``paired``) of its difference to the reference arm's."""
        if not estimable[scope] or resamples <= 0:
            return nan

        def stat(m: dict[str | None, np.ndarray]) -> float:
            return float(m[scope][arm] - m[scope][ref]) if paired else float(m[scope][arm])

        return centred_interval([stat(d) for d in draws], stat(point), resamples, level)

    value = {a: {s: interval(s, k, False) for s in scopes} for k, a in enumerate(arms)}
    gain = {a: {s: interval(s, arms.index(a), True) for s in scopes} for a in gains}
    return {"value": value, "gain": gain}


def gain_verdict(gain: float, ci: tuple[float, float], baseline_ok: bool) -> str:
    """``helped`` / ``hurt`` (the gain's interval excludes 0), ``no detectable difference``, or why there is none.

    ``not informative``: the reference arm's Dice is below the floor, so the arms compare near-zero scores;
    ``no interval``: the gain has a value but no interval (fewer than two test patients, or no resamples).
    """
    if not baseline_ok or not np.isfinite(gain):
        return "not informative"
    low, high = ci
    if not (np.isfinite(low) and np.isfinite(high)):
        return "no interval"
    if low > 0:
        return "helped"
    if high < 0:
        return "hurt"
    return "no detectable difference"


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


@dataclass(frozen=True)
class TrainSet:
    """What one arm trains on: pairs, and how they are drawn and weighted.

    ``draw_weights``: batches are drawn with replacement with probabilities proportional to them (``None``: shuffled
    passes over the set, uniform); ``loss_weights``: each sample's weight in :func:`dice_bce_loss` (``None``: 1).
    """

    images: np.ndarray
    masks: np.ndarray
    draw_weights: np.ndarray | None = None
    loss_weights: np.ndarray | None = None


def arm_train_set(
    arm: str,
    real: tuple[np.ndarray, np.ndarray, np.ndarray],
    synthetic: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    class_weight: Mapping[str, float],
) -> TrainSet:
    """The training data of ``arm`` (one of :data:`SEG_ARMS`) from real and synthetic (images, masks, class names).

    ``class_weight`` is the split's per-class weight (:func:`components.rebalance.core.class_weights`); it sets the
    draw probabilities of ``weighted-sampler`` and the loss weights of ``class-weighted-loss``.
    """
    if arm not in SEG_ARMS:
        raise ValueError(f"unknown segmenter arm {arm!r}; choose from {', '.join(SEG_ARMS)}")
    images, masks, labels = real
    if arm in ("weighted-sampler", "class-weighted-loss"):
        names = np.asarray(labels).astype(str)
        missing = sorted(set(names) - set(class_weight))
        if missing:
            raise ValueError(f"arm {arm}: no class weight for {', '.join(missing)}")
        w = np.array([class_weight[c] for c in names], dtype=np.float64)
        if arm == "weighted-sampler":
            return TrainSet(images, masks, draw_weights=w)
        return TrainSet(images, masks, loss_weights=w)
    if arm == "real":
        return TrainSet(images, masks)
    if synthetic is None or len(synthetic[0]) == 0:
        raise ValueError(f"arm {arm} needs synthetic pairs; none were given")
    if arm == "synthetic":
        return TrainSet(synthetic[0], synthetic[1])
    return TrainSet(np.concatenate([images, synthetic[0]]), np.concatenate([masks, synthetic[1]]))


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Dice + binary cross-entropy of lesion logits ``(B, 1, H, W)``, with optional per-sample weights ``(B,)``.

    Dice is pooled over the batch (intersection and areas summed over samples and pixels: lesion-free samples have no
    Dice of their own), each sample's sums multiplied by its weight; the cross-entropy is the weighted mean of the
    samples' mean pixel BCE. Unweighted it equals MONAI's ``DiceCELoss(sigmoid=True, batch=True)``; an integer weight
    k counts a sample as k copies of it, so loss weights match drawing with the same weights in expectation.
    """
    w = torch.ones(len(logits)) if weights is None else torch.as_tensor(weights)
    w = w.to(device=logits.device, dtype=logits.dtype)
    dims = tuple(range(1, logits.ndim))
    prob = torch.sigmoid(logits)
    intersection = (w * (prob * target).sum(dims)).sum()
    areas = (w * (prob.sum(dims) + target.sum(dims))).sum()
    smooth = 1e-5  # MONAI DiceLoss's smooth_nr = smooth_dr
    dice = 1.0 - (2.0 * intersection + smooth) / (areas + smooth)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dims)
    return dice + (w * bce).sum() / w.sum()


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
    """The small 2-D BasicUNet used for the Dice comparison (one input channel, one lesion logit, prior-initialised)."""
    with contextlib.redirect_stdout(io.StringIO()):  # BasicUNet prints its feature sizes on construction
        net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=SEG_FEATURES)
    torch.nn.init.constant_(net.final_conv.bias, math.log(SEG_PRIOR / (1 - SEG_PRIOR)))
    return net


def _batches(data: TrainSet, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Sorted row indices of each batch: shuffled passes, or draws with replacement by ``data.draw_weights``."""
    n = len(data.images)
    if data.draw_weights is not None:
        p = np.asarray(data.draw_weights, dtype=np.float64)
        p = p / p.sum()
        while True:
            yield np.sort(rng.choice(n, batch_size, p=p))
    order = np.zeros(0, dtype=np.int64)
    while True:
        while len(order) < batch_size:  # a set smaller than a batch is passed over more than once
            order = np.concatenate([order, rng.permutation(n)])
        idx, order = np.sort(order[:batch_size]), order[batch_size:]
        yield idx


def train_segmenter(
    data: TrainSet, steps: int, batch_size: int, seed: int, device: str = "cpu"
) -> tuple[torch.nn.Module, list[float]]:
    """Train a segmenter for ``steps`` optimiser steps; returns the net (in eval mode) and the loss of every step.

    Adam under a one-cycle schedule (:data:`SEG_LR`, :data:`SEG_WARMUP`) from a prior-initialised net
    (:data:`SEG_PRIOR`), :func:`dice_bce_loss` with the set's loss weights, and a random left-right flip of each
    sample: lesions of a class may sit in either lung, and a rare class has few patients to show both (on earlier
    quickstart data, whose rare class had one train patient with the lesion on the other side from the test patient's,
    the flips took that class's Dice from 0.41 to 0.72; bench/RESULTS.md).
    """
    n = len(data.images)
    if n == 0:
        raise ValueError("cannot train a segmenter on an empty set")
    if steps < 1:
        raise ValueError(f"the segmenter needs at least one step, got {steps}")
    rng = np.random.default_rng(seed)
    batches = _batches(data, batch_size, rng)
    losses: list[float] = []
    with deterministic(seed):
        net = build_segmenter().to(device)
        opt = torch.optim.Adam(net.parameters(), lr=SEG_LR)
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=SEG_LR, total_steps=steps, pct_start=SEG_WARMUP)
        net.train()
        for _ in range(steps):
            idx = next(batches)
            images = np.asarray(data.images[idx], dtype=np.float32)
            masks = np.asarray(data.masks[idx], dtype=np.float32)
            flip = rng.random(len(idx)) < 0.5
            images[flip], masks[flip] = images[flip][..., ::-1], masks[flip][..., ::-1]
            x = torch.from_numpy(images)[:, None].to(device)
            y = torch.from_numpy(masks)[:, None].to(device)
            w = None if data.loss_weights is None else torch.from_numpy(np.asarray(data.loss_weights)[idx])
            opt.zero_grad(set_to_none=True)
            loss = dice_bce_loss(net(x), y, w)
            loss.backward()
            opt.step()
            schedule.step()
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


def arm_scores(
    data: TrainSet,
    test_images: np.ndarray,
    test_masks: np.ndarray,
    seeds: Sequence[int],
    steps: int,
    batch_size: int,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train one segmenter per seed on ``data`` and score each on the test set; the scores pooled over seeds.

    Returns ``dice``, ``fp`` and ``fp_area`` (per test sample, the mean over seeds; see :func:`dice_per_sample` and
    :func:`false_positives_per_sample`), ``dice_per_seed`` (per seed, per test sample), ``final_loss`` (per seed, mean
    of the last tenth of the steps) and ``seconds`` (training time, all seeds).
    """
    per_seed: list[dict[str, np.ndarray]] = []
    final_loss, seconds = [], 0.0
    for seed in seeds:
        start = time.perf_counter()
        net, losses = train_segmenter(data, steps, batch_size, seed, device)
        seconds += time.perf_counter() - start
        pred = predict_masks(net, test_images, batch_size * 2, device)
        fp, fp_area = false_positives_per_sample(pred, test_masks)
        per_seed.append({"dice": dice_per_sample(pred, test_masks), "fp": fp, "fp_area": fp_area})
        final_loss.append(float(np.mean(losses[-max(1, len(losses) // 10) :])))
    # nan marks the same samples in every seed (it depends on the ground truth only), so the mean keeps it
    pooled = {k: np.mean([s[k] for s in per_seed], axis=0) for k in ("dice", "fp", "fp_area")}
    return {**pooled, "dice_per_seed": [s["dice"] for s in per_seed], "final_loss": final_loss, "seconds": seconds}
