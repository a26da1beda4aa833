"""What the generator learned and what the discriminator looks at: the report's interpretability pictures.

- **latent interpolations** (:func:`latent_interpolations`): per class, the generator's pairs along a spherical path
  between two latents (the same noise maps at every step). A smooth walk whose masks move with the anatomy says the
  class has a continuous latent space; an abrupt jump, or frames that do not change, says it memorised or collapsed.
- **discriminator saliency** (:func:`discriminator_saliency`): the magnitude of the gradient of the trained
  discriminator's logit with respect to its input image (input gradients, Simonyan et al. 2014), on a few real and
  synthetic pairs of every class. The discriminator comes from the trainer's checkpoint (``checkpoint.pt`` in the model
  folder: ``D`` and its constructor arguments ``d_kwargs``). It shows where the discriminator finds its evidence;
  ``lesion_share`` is the share of the saliency that falls inside the lesion mask (a discriminator that ignores the
  lesion has a share near the mask's area fraction).
- **real pictures from different patients** (:func:`across_patients`): consecutive rows of a class are slices of one
  patient, so the report's real grids take one slice per patient in turn.

Both networks run on a handful of samples (:data:`INTERP_STEPS` frames, :data:`SALIENCY_PER_CLASS` pairs per class
and side), so the pictures cost well under a second on a CPU.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.evaluate.report import pair_grid, png_base64, to_uint8

INTERP_STEPS = 7  # frames per class, ends included
SALIENCY_PER_CLASS = 2  # real and synthetic pairs per class
CHECKPOINT_FILE = "checkpoint.pt"  # the trainer's latest state (components.train.trainer.CHECKPOINT_FILE)
MASK_THRESHOLD = 0.5


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between two latents at fractions ``t`` (keeps a Gaussian latent's norm typical)."""
    a, b = z0 / z0.norm(), z1 / z1.norm()
    omega = torch.arccos((a * b).sum().clamp(-1.0, 1.0))
    if float(omega) < 1e-6:  # (anti)parallel: a straight line is as good
        return torch.stack([(1 - s) * z0 + s * z1 for s in t])
    return torch.stack([(torch.sin((1 - s) * omega) * z0 + torch.sin(s * omega) * z1) / torch.sin(omega) for s in t])


@torch.no_grad()
def latent_interpolations(
    generator: torch.nn.Module, classes: list[str], seed: int, steps: int = INTERP_STEPS
) -> list[dict[str, Any]]:
    """Per class, ``steps`` pairs along a spherical path between two latents drawn from ``seed``.

    Returns ``[{"class", "steps", "grid"}]`` with ``grid`` a base64 PNG: the images in the top row, their mask
    overlays below (as the report's sample grids), left to right from one latent to the other.
    """
    device = next(generator.parameters()).device
    rng = torch.Generator().manual_seed(int(seed))
    t = torch.linspace(0.0, 1.0, steps)
    noisy = len(getattr(generator, "noise_sizes", ())) > 0
    was_training = generator.training
    generator.eval()
    out = []
    for k, cls in enumerate(classes):
        z0, z1 = torch.randn(2, int(generator.z_dim), generator=rng)
        z = slerp(z0, z1, t).to(device)
        noise = None
        if noisy:  # the same noise maps along the path: only the latent moves
            maps = generator.draw_noise(1, rng, device)
            noise = [m.expand(steps, -1, -1, -1).contiguous() for m in maps]
        pair = generator(z, torch.full((steps,), k, dtype=torch.long, device=device), noise).float().cpu()
        images = pair[:, 0].clamp(-1, 1).numpy()
        masks = (pair[:, 1] > MASK_THRESHOLD).numpy().astype(np.uint8)
        out.append({"class": cls, "steps": steps, "grid": png_base64(pair_grid(images, masks))})
    generator.train(was_training)
    return out


def load_discriminator(model_dir: str | os.PathLike[str], device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """``(D, info)`` from the trainer's ``checkpoint.pt`` in ``model_dir``, or ``(None, {"reason": ...})``.

    ``info``: the checkpoint's training ``step``, the architecture and a SHA-256 prefix of the file. A missing or
    unreadable checkpoint is no error here: the report says why it has no saliency maps.
    """
    from components.gan.models import build_discriminator

    path = Path(model_dir) / CHECKPOINT_FILE
    if not path.is_file():
        return None, {"reason": f"no training checkpoint ({CHECKPOINT_FILE}) in the model folder"}
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        D = build_discriminator(state["d_kwargs"])
        D.load_state_dict(state["D"])
    except Exception as exc:  # a foreign or truncated file: the pictures are optional, the reason is shown
        return None, {"reason": f"{path.name} holds no readable discriminator ({type(exc).__name__}: {exc})"}
    D.to(device).eval().requires_grad_(False)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    arch = state["d_kwargs"].get("arch", "sn")
    return D, {"step": int(state.get("step", 0)), "arch": arch, "checkpoint_sha256": digest}


def saliency(D: torch.nn.Module, images: np.ndarray, masks: np.ndarray, label: int) -> tuple[np.ndarray, np.ndarray]:
    """``|d D(pair, label) / d image|`` per pixel (N, S, S) and the logits (N,), for pairs of one class.

    The pairs are scored in one batch, as the discriminator sees a class's pairs in training (its minibatch statistics,
    when it has them, are taken over the batch).
    """
    device = next(D.parameters()).device
    pair = torch.from_numpy(np.stack([images, masks.astype(np.float32)], axis=1)).float().to(device)
    pair.requires_grad_(True)
    logits = D(pair, torch.full((len(pair),), label, dtype=torch.long, device=device))
    (grad,) = torch.autograd.grad(logits.sum(), pair)
    return grad[:, 0].abs().cpu().numpy(), logits.detach().cpu().numpy()


def heat(values: np.ndarray) -> np.ndarray:
    """RGB uint8 'hot' colours (black, red, yellow, white) of values in [0, 1]."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    rgb = np.concatenate([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], axis=-1)
    return (rgb * 255 + 0.5).astype(np.uint8)


def saliency_grid(images: np.ndarray, maps: np.ndarray, pad: int = 2) -> np.ndarray:
    """RGB grid: the images in the top row, their saliency (each map scaled to its 99th percentile) blended below."""
    n, s = len(images), images.shape[-1]
    grid = np.full((2 * s + pad, n * s + (n - 1) * pad, 3), 255, dtype=np.uint8)
    for i in range(n):
        x = i * (s + pad)
        gray = to_uint8(images[i]).astype(np.float32)
        grid[:s, x : x + s] = gray[..., None].astype(np.uint8)
        scale = float(np.percentile(maps[i], 99)) or 1.0
        hot = heat(maps[i] / scale).astype(np.float32)
        grid[s + pad :, x : x + s] = (0.35 * gray[..., None] + 0.65 * hot).astype(np.uint8)
    return grid


def lesion_share(maps: np.ndarray, masks: np.ndarray) -> tuple[float, float]:
    """Mean share of the saliency inside the lesion mask, and the mean mask area fraction (its chance level).

    Over the pairs with a non-empty mask; ``nan`` when none has one.
    """
    has = np.asarray(masks).reshape(len(masks), -1).any(axis=1)
    if not has.any():
        return float("nan"), float("nan")
    m = np.asarray(masks)[has] > 0
    s = np.asarray(maps)[has]
    share = (s * m).sum(axis=(1, 2)) / np.maximum(s.sum(axis=(1, 2)), 1e-12)
    return float(share.mean()), float(m.mean(axis=(1, 2)).mean())


def discriminator_saliency(
    D: torch.nn.Module,
    real: tuple[np.ndarray, np.ndarray, np.ndarray],
    synthetic: tuple[np.ndarray, np.ndarray, np.ndarray],
    classes: list[str],
) -> list[dict[str, Any]]:
    """Per class, the saliency grids of its real and synthetic pairs, their logits and lesion shares.

    ``real`` and ``synthetic`` are (images, masks, label indices) of the pairs to explain (a few per class, already
    chosen: :func:`across_patients` for the real ones).
    """
    out = []
    for k, cls in enumerate(classes):
        entry: dict[str, Any] = {"class": cls}
        for side, (images, masks, labels) in (("real", real), ("synthetic", synthetic)):
            sel = np.flatnonzero(np.asarray(labels) == k)
            if not len(sel):
                continue
            maps, logits = saliency(D, images[sel], masks[sel], k)
            share, area = lesion_share(maps, masks[sel])
            entry[side] = {
                "grid": png_base64(saliency_grid(images[sel], maps)),
                "logits": [float(v) for v in logits],
                "lesion_share": share,
                "mask_area": area,
            }
        if len(entry) > 1:
            out.append(entry)
    return out


def across_patients(rows: np.ndarray, patients: np.ndarray, n: int) -> np.ndarray:
    """Up to ``n`` of ``rows`` (one class's, in archive order) taking one slice per patient in turn.

    Each patient's middle slice first, then further slices round-robin, so a grid of ``n`` shows ``n`` patients when
    the class has that many. ``patients`` is aligned with ``rows``.
    """
    rows, patients = np.asarray(rows), np.asarray(patients).astype(str)
    order: dict[str, list[int]] = {}
    for i, p in enumerate(patients):
        order.setdefault(p, []).append(i)
    queues = []
    for members in order.values():
        mid = len(members) // 2  # the middle slice first, then outwards
        queues.append(sorted(members, key=lambda i, m=members[mid]: (abs(i - m), i)))
    picked: list[int] = []
    depth = 0
    while len(picked) < n and any(depth < len(q) for q in queues):
        picked += [q[depth] for q in queues if depth < len(q)][: n - len(picked)]
        depth += 1
    return rows[np.asarray(picked, dtype=np.int64)] if picked else rows[:0]


def interpretability(
    generator: torch.nn.Module,
    model_dir: str | os.PathLike[str],
    real: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    synthetic: tuple[np.ndarray, np.ndarray, np.ndarray],
    classes: list[str],
    seed: int,
    device: str = "cpu",
    generator_step: int | None = None,
) -> dict[str, Any]:
    """The report's ``interpretability`` section: latent interpolations and discriminator saliency maps.

    ``real`` is (images, masks, label indices, patients) of the real train split, ``synthetic`` (images, masks, label
    indices) of the headline samples; ``generator_step`` the step of the generator being evaluated (the discriminator
    is the checkpoint's, the end of training, which a selected earlier snapshot predates: the section says so).
    """
    section: dict[str, Any] = {"interpolations": latent_interpolations(generator, classes, seed)}
    D, info = load_discriminator(model_dir, device)
    section["discriminator"] = info
    if D is None:
        section["saliency"] = []
        return section
    pick_real = np.concatenate(
        [
            across_patients(np.flatnonzero(real[2] == k), real[3][real[2] == k], SALIENCY_PER_CLASS)
            for k in range(len(classes))
        ]
    ).astype(np.int64)
    pick_fake = np.concatenate(
        [np.flatnonzero(synthetic[2] == k)[:SALIENCY_PER_CLASS] for k in range(len(classes))]
    ).astype(np.int64)
    section["saliency"] = discriminator_saliency(
        D,
        (real[0][pick_real], real[1][pick_real], real[2][pick_real]),
        (synthetic[0][pick_fake], synthetic[1][pick_fake], synthetic[2][pick_fake]),
        classes,
    )
    if generator_step is not None and info.get("step") not in (None, generator_step):
        section["discriminator"]["note"] = (
            f"the discriminator is the checkpoint's, of step {info['step']}; the generator evaluated is of step "
            f"{generator_step}"
        )
    return section
