"""DiffAugment (Zhao et al. 2020) for image + mask pairs.

Differentiable augmentations applied to *every* discriminator input, real and fake alike, so the discriminator
cannot overfit a small dataset while the generator still receives gradients through the augmentation. Pairs are
(N, 2, S, S) tensors in generator-output format (channel 0 image, channel 1 mask): colour transforms touch the
image channel only, geometric ones move both channels with the same parameters so the mask stays registered to
its image. Each sample draws its own parameters from ``generator`` (a CPU ``torch.Generator``), which makes a
training step reproducible from its seed alone; with ``group`` > 1 each run of ``group`` consecutive samples shares one
draw instead, except for the augmentations named to keep a draw per pair (:func:`diff_augment`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from components.errors import ConfigError


def _rand(
    n: int, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype, group: int = 1
) -> torch.Tensor:
    # Draw on the CPU so one CPU generator drives the same sequence on every device; one draw per group of samples.
    draw = torch.rand(n // group, 1, 1, 1, generator=generator).repeat_interleave(group, 0)
    return draw.to(device=device, dtype=dtype)


def _randint(
    low: int, high: int, n: int, generator: torch.Generator | None, device: torch.device, group: int = 1
) -> torch.Tensor:
    return torch.randint(low, high, (n // group,), generator=generator).repeat_interleave(group).to(device)


def rand_color(x: torch.Tensor, generator: torch.Generator | None = None, group: int = 1) -> torch.Tensor:
    """Random brightness and contrast of the image channel (saturation is meaningless for one channel)."""
    n = x.shape[0]
    image, mask = x[:, :1], x[:, 1:]
    image = image + (_rand(n, generator, x.device, x.dtype, group) - 0.5)
    mean = image.mean(dim=(1, 2, 3), keepdim=True)
    image = (image - mean) * (_rand(n, generator, x.device, x.dtype, group) + 0.5) + mean
    return torch.cat([image, mask], dim=1)


def rand_translation(
    x: torch.Tensor, generator: torch.Generator | None = None, group: int = 1, ratio: float = 0.125
) -> torch.Tensor:
    """Shift each pair by up to ``ratio`` of its size in each direction, filling with zeros."""
    n, c, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = _randint(-sy, sy + 1, n, generator, x.device, group)
    tx = _randint(-sx, sx + 1, n, generator, x.device, group)
    padded = F.pad(x, [sx, sx, sy, sy])
    # Per-sample crop of the padded pair as two 1-D gathers (rows, then columns): ~8x faster forward + backward on
    # CPU than one advanced-indexing gather over (N, H, W).
    rows = torch.arange(h, device=x.device)[None, :] + sy - ty[:, None]  # (N, H) row in the padded pair
    cols = torch.arange(w, device=x.device)[None, :] + sx - tx[:, None]  # (N, W)
    out = torch.gather(padded, 2, rows[:, None, :, None].expand(n, c, h, w + 2 * sx))
    return torch.gather(out, 3, cols[:, None, None, :].expand(n, c, h, w))


def rand_cutout(
    x: torch.Tensor, generator: torch.Generator | None = None, group: int = 1, ratio: float = 0.5
) -> torch.Tensor:
    """Zero a random square of ``ratio`` times the size (in both channels) of each pair."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = _randint(0, h + (1 - ch % 2), n, generator, x.device, group)
    cx = _randint(0, w + (1 - cw % 2), n, generator, x.device, group)
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    inside_y = (ys >= (cy - ch // 2)[:, None]) & (ys < (cy - ch // 2 + ch)[:, None])  # (N, H)
    inside_x = (xs >= (cx - cw // 2)[:, None]) & (xs < (cx - cw // 2 + cw)[:, None])  # (N, W)
    keep = ~(inside_y[:, :, None] & inside_x[:, None, :])
    return x * keep[:, None].to(x.dtype)


AUGMENTATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "color": rand_color,
    "translation": rand_translation,
    "cutout": rand_cutout,
}


def parse_policy(policy: str | Sequence[str], key: str = "train.diffaugment") -> list[str]:
    """Split a comma list such as ``"translation,cutout"`` and check every name; empty means no augmentation.

    ``key`` names the setting in the error message.
    """
    names = [p.strip() for p in policy.split(",")] if isinstance(policy, str) else [p.strip() for p in policy]
    names = [p for p in names if p]
    unknown = [p for p in names if p not in AUGMENTATIONS]
    if unknown:
        raise ConfigError(f"unknown {key} entries {unknown}; choose from: {', '.join(AUGMENTATIONS)}")
    return names


def diff_augment(
    x: torch.Tensor,
    policy: str | Sequence[str],
    generator: torch.Generator | None = None,
    group: int = 1,
    per_pair: str | Sequence[str] = (),
) -> torch.Tensor:
    """Apply the augmentations named in ``policy``, in order, to a batch of pairs.

    ``group`` > 1: each run of ``group`` consecutive pairs (``group`` must divide the batch) is augmented alike, one
    draw per run. D's minibatch-stddev groups are such runs (one class each); drawn per pair, a shift of up to 8 px and
    a cutout of a quarter of the image would add their own spread to every group, so D would read a class whose
    samples are all alike as varied as real pairs (bench/RESULTS.md, augmentation drawn per group). The augmentations
    named in ``per_pair`` are still drawn for every pair (``group`` applies to the others).
    """
    if group < 1 or x.shape[0] % group:
        raise ValueError(f"augmentation group {group} must be positive and divide the batch of {x.shape[0]}")
    own_draw = set(parse_policy(per_pair, "train.diffaugment_per_pair"))
    for name in parse_policy(policy):
        x = AUGMENTATIONS[name](x, generator, 1 if name in own_draw else group)
    return x
