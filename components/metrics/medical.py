"""The ``medical`` feature space: a small CNN trained here, on the real train split only, for small grayscale scans.

Why another space. The TF-Inception features saturate on 64 px grayscale slices (quickstart: val images blurred with
a 1 px Gaussian already score FID 112 against the train split, a 200-step GAN 361), and an ImageNet network ranks
what ImageNet cares about: Kynkäänniemi et al. 2023 ("The Role of ImageNet Classes in Fréchet Inception Distance")
show that FID can be moved by matching ImageNet class statistics that have nothing to do with the images' content. A
space learned from the images themselves is the complement. It is reported beside Inception, which stays the
default and headline space for comparability with the literature.

No circularity. The network learns from :class:`~components.metrics.features.FitData`, which the evaluate stage
builds from the real **train** split and nothing else (val is the held-out reference, test the Dice set); the GAN
never sees the network (it is trained at evaluation time, after and independently of the generator, and no training
loss uses it), so the generator cannot have been optimised towards this space. Synthetic and val images are both
unseen by it, which is why the held-out real reference (``holdout_medical_*``) is the yardstick for the synthetic
values, not 0.

What it learns, and why.

- **class** (cross-entropy, classes weighted by inverse frequency): the space must separate what the GAN is asked to
  condition on; a rare class weighs as much as a common one.
- **lesion mask** (auxiliary head: binary cross-entropy against the mask area-downsampled to 1/4 of the working
  resolution): makes the middle stages find and delineate lesions, so lesion presence, size, contrast and edge enter
  the features, not only whatever cue tells the classes apart.
- No self-supervised target: on the quickstart data the two heads already give features that tell the classes of
  unseen patients apart (val, nearest class centroid: 94 %, majority class 71 %) and react to blur far more than the
  val-vs-train difference (FID 145 for a 0.5 px blur vs 22.6; bench/RESULTS.md); a contrastive or rotation head
  would need augmentations that are not neutral for scans (flips swap laterality, rotations anatomy) and more training
  time than the budget below allows.

Features are the penultimate activations, global-pooled at every scale so that fine texture counts: the mean and the
standard deviation of the full-resolution stage (texture and edge energy), and the means of the three coarser stages
(:data:`FEATURE_DIM` = 128), standardised per dimension by the training images' statistics (stored with the
weights). Images are resized to :data:`WORK_SIZE` first (area for larger, bilinear for smaller), so the space sees
128 and 256 px images at 64 px: a complement to Inception there, not a replacement.

Determinism and cost. Training runs on one CPU thread from a fixed seed (:data:`SEED`, not ``cfg.seed``: every run on
the same data gets the same space, whatever its GAN seed) with a seeded batch order, for :data:`EPOCHS` passes over
the data bounded by :data:`MIN_SAMPLES` / :data:`MAX_SAMPLES` image presentations (quickstart, 168 images: 64 steps,
~6 s on a shared 2-core VM; at most 256 steps on large data). The weights are cached in the evaluate cache folder
under a key of the training data's hash, the architecture and the seed, so repeated evaluations reuse them; the
extractor's ``fingerprint`` is the SHA-256 of the trained weights, so feature caches and reports identify exactly the
network that produced a value. Values in this space compare only between runs with the same fingerprint (same train
split, same code).
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from components.metrics.features import FeatureExtractor, FitData, register_extractor

SEED = 0
WORK_SIZE = 64
WIDTHS = (8, 16, 32, 64)  # channels of the four stages (full, 1/2, 1/4, 1/8 of WORK_SIZE)
FEATURE_DIM = 2 * WIDTHS[0] + sum(WIDTHS[1:])
MASK_STAGE = 2  # the mask head reads the 1/4-resolution stage
EPOCHS = 12
MIN_SAMPLES = 2048  # image presentations at least (small data: more epochs) ...
MAX_SAMPLES = 8192  # ... and at most (large data: fewer epochs; keeps the CPU cost bounded)
# Training runs on one CPU thread: the weights then do not depend on the machine's core count, and these small
# convolutions gain little from more (on the shared 2-core VM one thread ran a step in 0.09 s, two in 0.18 s).
THREADS = 1
BATCH = 32
LR = 3e-3
WEIGHT_DECAY = 1e-4
MASK_WEIGHT = 1.0
MIN_STD = 1e-4  # feature dimensions with less spread over the training images are not standardised


def architecture() -> str:
    """Everything that changes the trained weights besides the data and the seed: part of the weights cache key."""
    return (
        f"medcnn-v1-size{WORK_SIZE}-w{'x'.join(map(str, WIDTHS))}-bn-mask{MASK_STAGE}-e{EPOCHS}"
        f"-n{MIN_SAMPLES}-{MAX_SAMPLES}-b{BATCH}-adamw{LR:g}-{WEIGHT_DECAY:g}-m{MASK_WEIGHT:g}-t{THREADS}-s{MIN_STD:g}"
    )


def to_work_size(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, S, S)`` -> ``(B, C, WORK_SIZE, WORK_SIZE)``: area-averaged down, bilinear up, unchanged at size."""
    size = x.shape[-1]
    if size == WORK_SIZE:
        return x
    if size > WORK_SIZE:
        return F.adaptive_avg_pool2d(x, WORK_SIZE)
    return F.interpolate(x, size=(WORK_SIZE, WORK_SIZE), mode="bilinear", align_corners=False)


def _block(c_in: int, c_out: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(True)]
    return nn.Sequential(*layers)


class MedicalNet(nn.Module):
    """Four conv stages, a class and a mask head; features standardised by the train split's statistics.

    Batch norm runs in eval mode once trained (running statistics), so a sample's features never depend on the
    batch it is embedded in.
    """

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        widths = (1, *WIDTHS)
        # one conv at full resolution (the costly one on a CPU), two at every coarser stage
        self.stages = nn.ModuleList(_block(widths[i], widths[i + 1], 1 if i == 0 else 2) for i in range(len(WIDTHS)))
        self.classify = nn.Linear(FEATURE_DIM, n_classes)
        self.mask = nn.Conv2d(WIDTHS[MASK_STAGE], 1, 1)
        self.register_buffer("feat_mean", torch.zeros(FEATURE_DIM))
        self.register_buffer("feat_std", torch.ones(FEATURE_DIM))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` ``(B, 1, S, S)`` in ``[-1, 1]`` -> pooled activations ``(B, FEATURE_DIM)``, class and mask logits."""
        h = to_work_size(x)
        pooled, mask_logits = [], None
        for i, stage in enumerate(self.stages):
            if i:
                h = F.avg_pool2d(h, 2)
            h = stage(h)
            if i == 0:  # texture and edge energy at full resolution
                pooled += [h.mean(dim=(2, 3)), h.std(dim=(2, 3))]
            else:
                pooled.append(h.mean(dim=(2, 3)))
            if i == MASK_STAGE:
                mask_logits = self.mask(h)
        feats = torch.cat(pooled, dim=1)
        return feats, self.classify(feats), mask_logits

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding: pooled activations standardised per dimension (train split: mean 0, std 1)."""
        return (self(x)[0] - self.feat_mean) / self.feat_std


def training_steps(n: int) -> int:
    """Optimiser steps for ``n`` training images: ``EPOCHS`` passes, within ``MIN_SAMPLES``..``MAX_SAMPLES``."""
    samples = min(max(EPOCHS * n, MIN_SAMPLES), MAX_SAMPLES)
    return max(1, math.ceil(samples / BATCH))


def _optimise(
    images: torch.Tensor,
    masks: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    n_classes: int,
    steps: int,
    seed: int,
) -> MedicalNet:
    """The training loop: seeded initialisation and batch order, the caller's global RNG state restored."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = MedicalNet(n_classes)
        order = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps, pct_start=0.15)
        net.train()
        perm, pos = torch.randperm(len(images), generator=order), 0
        for _ in range(steps):
            if pos + BATCH > len(perm):
                perm, pos = torch.randperm(len(images), generator=order), 0
            idx = perm[pos : pos + BATCH]
            pos += BATCH
            _, logits, mask_logits = net(images[idx])
            loss = F.cross_entropy(logits, labels[idx], weight=weights)
            loss = loss + MASK_WEIGHT * F.binary_cross_entropy_with_logits(mask_logits, masks[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net


def _standardise(net: MedicalNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Set ``net``'s feature statistics to the training images' (eval mode); return its training accuracy."""
    net.eval()
    with torch.no_grad():
        feats, logits = [], []
        for start in range(0, len(images), 256):
            f, lg, _ = net(images[start : start + 256])
            feats.append(f)
            logits.append(lg)
        f, lg = torch.cat(feats), torch.cat(logits)
        if len(f) > 1:
            std = f.std(0)
            net.feat_mean.copy_(f.mean(0))
            # a dimension constant on the training images (a channel no training image activates) stays unscaled:
            # dividing by its ~0 spread would blow up any other image that does activate it
            net.feat_std.copy_(torch.where(std > MIN_STD, std, torch.ones_like(std)))
        return float((lg.argmax(1) == labels).float().mean())


def train_network(fit: FitData, seed: int = SEED) -> tuple[MedicalNet, dict[str, Any]]:
    """Train :class:`MedicalNet` on ``fit`` on the CPU, deterministically; return it (eval mode) and a summary.

    Uses only ``fit``'s arrays: the caller decides which rows they are (evaluate: the train split). The global
    torch RNG is left as it was.
    """
    clock = time.perf_counter()
    images = torch.from_numpy(np.ascontiguousarray(fit.images, dtype=np.float32))[:, None]
    mask_size = WORK_SIZE // 2**MASK_STAGE
    masks = F.adaptive_avg_pool2d(to_work_size(torch.from_numpy(np.asarray(fit.masks) > 0).float()[:, None]), mask_size)
    labels = torch.from_numpy(np.asarray(fit.labels, dtype=np.int64))
    counts = torch.bincount(labels, minlength=fit.n_classes).float()
    # inverse-frequency class weights (mean 1 over the classes present); absent classes get none
    weights = torch.where(counts > 0, counts.sum() / (counts.clamp(min=1) * (counts > 0).sum()), torch.zeros(()))
    steps = training_steps(len(images))
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        net = _optimise(images, masks, labels, weights, fit.n_classes, steps, seed)
        accuracy = _standardise(net, images, labels)
    finally:
        torch.set_num_threads(threads)
    summary = {"steps": steps, "train_seconds": time.perf_counter() - clock, "train_accuracy": accuracy}
    return net, summary


def weights_sha256(net: nn.Module) -> str:
    """SHA-256 of a network's state dict: names, shapes, dtypes and bytes, in order."""
    h = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def weights_cache_path(cache_dir: str | os.PathLike[str], fit: FitData, seed: int = SEED) -> Path:
    """Where the network trained on ``fit`` with ``seed`` is kept: key = data hash, architecture, seed."""
    arch = hashlib.sha256(architecture().encode()).hexdigest()[:12]
    return Path(cache_dir) / f"medical-net-{arch}-seed{seed}-{fit.key[:32]}.pt"


def _load(path: Path, n_classes: int) -> tuple[MedicalNet, dict[str, Any]] | None:
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if stored.get("arch") != architecture():
            return None
        net = MedicalNet(n_classes)
        net.load_state_dict(stored["state"])
    except Exception:  # truncated, foreign or stale (the unpickler raises many types): train again, never trust it
        return None
    return net.eval(), dict(stored.get("summary") or {})


def _save(path: Path, net: MedicalNet, summary: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".pt", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"arch": architecture(), "state": net.state_dict(), "summary": summary}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fitted_network(fit: FitData, cache_dir: Path | None, seed: int = SEED) -> tuple[MedicalNet, dict[str, Any]]:
    """The network trained on ``fit``: from ``cache_dir`` when it holds one for this data, else trained (and kept)."""
    path = weights_cache_path(cache_dir, fit, seed) if cache_dir is not None else None
    loaded = _load(path, fit.n_classes) if path is not None and path.is_file() else None
    if loaded is not None:
        return loaded[0], {**loaded[1], "from_cache": True}
    net, summary = train_network(fit, seed)
    if path is not None:
        _save(path, net, summary)
    return net, {**summary, "from_cache": False}


@register_extractor("medical", fitted=True)
def _medical(device: str, fit: FitData, cache_dir: Path | None) -> FeatureExtractor:
    net, summary = fitted_network(fit, cache_dir)
    digest = weights_sha256(net)
    net = net.to(device)

    def embed(x: torch.Tensor) -> torch.Tensor:
        return net.features(x)

    rows = np.asarray(fit.rows, dtype=np.int64)
    info = {
        **summary,
        "trained_on": "real train split",
        "arch": architecture(),
        "seed": SEED,
        "n_train": len(rows),
        "rows": rows,
        "rows_sha256": hashlib.sha256(np.sort(rows).tobytes()).hexdigest(),
        "data_sha256": fit.key,
    }
    return FeatureExtractor("medical", FEATURE_DIM, digest, embed, device, 128, info)
