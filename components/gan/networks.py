"""Class-conditional generator and projection discriminator for paired image + lesion-mask synthesis.

Both networks work on *pairs* in generator-output format: a (N, 2, S, S) tensor whose channel 0 is the image in
[-1, 1] and channel 1 the lesion-mask probability in [0, 1] (real masks are {0, 1}). Generating the mask from the
same trunk as the image is what keeps the two consistent; the discriminator judges them jointly.

Widths follow one rule for every size: ``channels`` is the width at a quarter of the output resolution; it halves
towards the output and doubles towards 4x4, capped at ``4 * channels``. Neither network holds a feature map at full
resolution (the generator ends in a sub-pixel conv, the discriminator starts with a stride-2 conv): on a CPU those
layers cost memory traffic out of all proportion to what they add, and they dominated the step time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

MIN_SIZE, MAX_SIZE = 32, 256
LRELU_SLOPE = 0.2


def check_image_size(image_size: int) -> int:
    """Return ``log2(image_size)``; raise ``ValueError`` unless it is a power of two in [32, 256]."""
    log2 = int(round(math.log2(image_size))) if image_size > 0 else 0
    if 2**log2 != image_size or not MIN_SIZE <= image_size <= MAX_SIZE:
        raise ValueError(f"image_size must be a power of two from {MIN_SIZE} to {MAX_SIZE}, got {image_size}")
    return log2


def channel_width(channels: int, image_size: int, resolution: int) -> int:
    """Width of the layers working at ``resolution`` (see the module docstring)."""
    return max(1, min(4 * channels, channels * image_size // (4 * resolution)))


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalise each pixel's feature vector to unit RMS (ProGAN): batch-independent, so DDP- and EMA-safe."""
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)


def add_condition_weight(module: nn.Module) -> None:
    """Give ``module`` the scalar ``cond_weight`` that scales its class input (transitional conditioning).

    Shahbazi et al. 2023 ("Collapse by Conditioning: Training Class-conditional GANs with Limited Data") trace the
    within-class collapse of class-conditional GANs on small data to the conditioning itself and train unconditionally
    first, then blend the class in: ``cond_weight`` = 0 removes the class from the network (the generator's class
    embedding, the discriminator's projection term), 1 is the plain conditional network. The trainer sets it every
    step (``train.cond_transition_start`` / ``_end``). A non-persistent buffer: not in state dicts (model files of any
    age load), copied with the other buffers into the EMA generator, a tensor (no recompilation under
    ``torch.compile`` when it changes), and stored beside the weights in generator files by the trainer.
    """
    module.register_buffer("cond_weight", torch.ones(()), persistent=False)


def set_condition_weight(value: float, *modules: nn.Module) -> None:
    """Set ``cond_weight`` of every module, or submodule, that has one (see :func:`add_condition_weight`)."""
    for module in modules:
        for sub in module.modules():
            weight = sub._buffers.get("cond_weight")
            if weight is not None:
                weight.fill_(float(value))


def condition_weight(module: nn.Module) -> float:
    """The ``cond_weight`` of ``module`` (of its first submodule that has one); 1.0 when none has."""
    for sub in module.modules():
        weight = sub._buffers.get("cond_weight")
        if weight is not None:
            return float(weight)
    return 1.0


def icnr_(conv: nn.Conv2d, scale: int = 2) -> None:
    """ICNR init (Aitken et al. 2017) of a conv that feeds a pixel shuffle.

    All sub-pixel phases start equal, so conv + shuffle starts out as nearest upsampling of one conv: no checkerboard.
    """
    out_ch = conv.out_channels // scale**2
    base = nn.Conv2d(conv.in_channels, out_ch, conv.kernel_size, padding=conv.padding)
    with torch.no_grad():
        conv.weight.copy_(base.weight.repeat_interleave(scale**2, dim=0))
        conv.bias.copy_(base.bias.repeat_interleave(scale**2, dim=0))


class _UpBlock(nn.Module):
    """2x upsampling by a sub-pixel conv, then pixel norm, class modulation (FiLM) and leaky ReLU.

    A 3x3 conv at the input resolution followed by a pixel shuffle costs the same FLOPs as nearest upsampling plus a
    3x3 conv at the output resolution, but skips materialising the upsampled map: ~40% faster per block on CPU.
    """

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, 4 * out_ch, 3, padding=1)
        icnr_(self.conv)
        self.film = nn.Linear(cond_dim, 2 * out_ch)
        # Start as the identity modulation so early training is not dominated by random offsets.
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = F.pixel_shuffle(self.conv(x), 2)
        gamma, beta = self.film(cond)[:, :, None, None].chunk(2, dim=1)
        return F.leaky_relu(pixel_norm(x) * (1 + gamma) + beta, LRELU_SLOPE)


class Generator(nn.Module):
    """Class-conditional generator: ``G(z, labels) -> (N, 2, S, S)`` (image in [-1, 1], mask probability in [0, 1]).

    The class embedding is concatenated to ``z``; that vector feeds the input layer and also modulates (FiLM) every
    upsampling block, so neither the class nor the latent can be "forgotten" deep in the network (latent-driven
    modulation gave visibly more within-class diversity than class-only modulation in short quickstart runs).
    Architecture ``film`` (``train.g_arch``); it has no noise inputs.
    """

    arch = "film"
    noise_sizes: tuple[int, ...] = ()

    def __init__(self, z_dim: int, n_classes: int, channels: int = 32, image_size: int = 64) -> None:
        super().__init__()
        log2 = check_image_size(image_size)
        if n_classes < 1 or z_dim < 1 or channels < 1:
            raise ValueError(f"z_dim, n_classes and channels must be positive ({z_dim}, {n_classes}, {channels})")
        self.z_dim, self.n_classes, self.channels, self.image_size = z_dim, n_classes, channels, image_size
        embed_dim = max(z_dim // 2, 8)
        # Upsampling blocks stop at half resolution; the last layer is a sub-pixel conv (conv + pixel shuffle)
        # straight to the pair, so no wide feature map ever exists at full resolution.
        width = [channel_width(channels, image_size, 2**k) for k in range(2, log2)]
        self.embed = nn.Embedding(n_classes, embed_dim)
        self.fc = nn.Linear(z_dim + embed_dim, width[0] * 16)
        self.blocks = nn.ModuleList(_UpBlock(width[i], width[i + 1], z_dim + embed_dim) for i in range(len(width) - 1))
        self.to_pair = nn.Conv2d(width[-1], 2 * 4, 3, padding=1)
        icnr_(self.to_pair)
        add_condition_weight(self)

    def init_kwargs(self) -> dict[str, int]:
        """Constructor arguments, stored with the weights so a model file rebuilds itself."""
        return {
            "z_dim": self.z_dim,
            "n_classes": self.n_classes,
            "channels": self.channels,
            "image_size": self.image_size,
        }

    def draw_noise(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> list[torch.Tensor]:
        """No noise inputs: an empty list (and no random draw), so the interface matches the style generator's."""
        return []

    def forward(self, z: torch.Tensor, labels: torch.Tensor, noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Map latents ``z`` (N, z_dim) and class indices ``labels`` (N,) to pairs (N, 2, S, S); ``noise`` is unused."""
        e = self.embed(labels) * self.cond_weight
        cond = torch.cat([z, e], dim=1)
        x = self.fc(cond).view(z.shape[0], -1, 4, 4)
        x = F.leaky_relu(pixel_norm(x), LRELU_SLOPE)
        for block in self.blocks:
            x = block(x, cond)
        out = F.pixel_shuffle(self.to_pair(x), 2)
        return torch.cat([torch.tanh(out[:, :1]), torch.sigmoid(out[:, 1:])], dim=1)


class _DownBlock(nn.Module):
    """A spectrally normalised 4x4 stride-2 conv and leaky ReLU."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.down = spectral_norm(nn.Conv2d(in_ch, out_ch, 4, stride=2, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.down(x), LRELU_SLOPE)


def group_size(batch: int, requested: int) -> int:
    """The largest group size at most ``requested`` that divides ``batch`` (1 when only 1 does)."""
    return next(g for g in range(min(requested, batch), 0, -1) if batch % g == 0)


def minibatch_stddev(x: torch.Tensor, group: int) -> torch.Tensor:
    """Append one feature map: the std across a group of samples, averaged over features and pixels (ProGAN).

    Groups are *consecutive* samples (StyleGAN2's layer groups strided ones): the discriminator scores real and
    fake pairs in one batched call, reals first, so with a group size dividing the batch halves no group mixes
    the two; the loss orders each half by class, so a group holds one class (``PhasedLoss.group_by_class``). A
    generator whose samples of a class are all alike gives groups of near-zero spread, which real pairs never
    have: the discriminator can see the collapse and the generator is pushed out of it. Computed in float32.
    """
    n, _, h, w = x.shape
    g = group_size(n, group)
    y = x.float().reshape(n // g, g, -1)
    y = (y.var(dim=1, unbiased=False) + 1e-8).sqrt().mean(dim=1)  # one value per group
    y = y.repeat_interleave(g).reshape(n, 1, 1, 1).expand(n, 1, h, w)
    return torch.cat([x, y.to(x.dtype)], dim=1)


def mask_stddev(mask: torch.Tensor, group: int, size: int = 4) -> torch.Tensor:
    """Where in the image the masks of a group differ: ``(N, 1, size, size)``, the same map for a group's members.

    The mask channel (N, 1, S, S) is area-pooled to ``size`` x ``size`` cells and each cell's standard deviation
    across the group (consecutive samples, as :func:`minibatch_stddev`; one class) is returned. Real lesions of a
    class sit in different places in different patients; a generator that plants every lesion of a class in the same
    place (the quickstart GAN did: synthetic centroid spread 2-3 % of the real one) gives a map of zeros, which the
    feature-wide minibatch-stddev, averaged over all features and pixels, barely registers. Computed in float32.
    """
    n = mask.shape[0]
    g = group_size(n, group)
    cells = F.adaptive_avg_pool2d(mask.float(), size).reshape(n // g, g, 1, size, size)
    spread = (cells.var(dim=1, unbiased=False) + 1e-8).sqrt()
    return spread.repeat_interleave(g, dim=0).to(mask.dtype)


def init_discriminator(
    D: nn.Module, n_classes: int, channels: int, image_size: int, mbstd_group: int, mbstd_mask: bool
) -> int:
    """Check and store a discriminator's common settings on ``D``; returns ``log2(image_size)``."""
    log2 = check_image_size(image_size)
    if n_classes < 1 or channels < 1 or mbstd_group < 0:
        raise ValueError(
            f"n_classes and channels must be positive, mbstd_group not negative ({n_classes}, {channels}, "
            f"{mbstd_group})"
        )
    D.n_classes, D.channels, D.image_size = n_classes, channels, image_size
    D.mbstd_group = mbstd_group if mbstd_group > 1 else 0
    D.mbstd_mask = bool(mbstd_mask and D.mbstd_group)
    return log2


def group_statistics(x: torch.Tensor, pair: torch.Tensor, group: int, mask: bool) -> torch.Tensor:
    """``x`` (the 4x4 features) with the minibatch-stddev map and, with ``mask``, the mask-spread map appended."""
    if group:
        x = minibatch_stddev(x, group)
    if mask:
        x = torch.cat([x, mask_stddev(pair[:, 1:], group, x.shape[-1])], dim=1)
    return x


class Discriminator(nn.Module):
    """Projection discriminator (Miyato & Koyama 2018) with spectral norm on every layer.

    ``D(pair, labels) -> (N,)`` logits where ``pair`` is in generator-output format; the mask channel is mapped
    from [0, 1] to [-1, 1] inside so both channels enter on the same scale. The class enters only through the
    projection term ``<embed(y), phi(x)>``, which is what makes the logit depend on the label. With
    ``mbstd_group`` > 1 the 4x4 features get a minibatch-stddev map (:func:`minibatch_stddev`) before the last
    conv, as in ProGAN/StyleGAN2, against mode collapse; the logits then depend on the rest of the group. With
    ``mbstd_mask`` as well, a second map says where the group's masks differ (:func:`mask_stddev`), against lesions
    that all sit in one place. Architecture ``sn`` (``train.d_arch``).
    """

    arch = "sn"

    def __init__(
        self,
        n_classes: int,
        channels: int = 32,
        image_size: int = 64,
        mbstd_group: int = 0,
        mbstd_mask: bool = False,
    ) -> None:
        super().__init__()
        log2 = init_discriminator(self, n_classes, channels, image_size, mbstd_group, mbstd_mask)
        # Like the generator, nothing wide runs at full resolution: the first conv reads the pair with stride 2.
        width = [channel_width(channels, image_size, 2**k) for k in range(log2 - 1, 1, -1)]
        self.from_pair = spectral_norm(nn.Conv2d(2, width[0], 4, stride=2, padding=1))
        self.blocks = nn.Sequential(*(_DownBlock(width[i], width[i + 1]) for i in range(len(width) - 1)))
        extra = int(bool(self.mbstd_group)) + int(self.mbstd_mask)
        self.final = spectral_norm(nn.Conv2d(width[-1] + extra, width[-1], 3, padding=1))
        self.linear = spectral_norm(nn.Linear(width[-1], 1))
        self.embed = spectral_norm(nn.Embedding(n_classes, width[-1]))
        add_condition_weight(self)

    def init_kwargs(self) -> dict[str, int]:
        """Constructor arguments, stored in checkpoints."""
        kwargs = {"n_classes": self.n_classes, "channels": self.channels, "image_size": self.image_size}
        if self.mbstd_group:  # absent when off, so checkpoints written before the option still resume
            kwargs["mbstd_group"] = self.mbstd_group
        if self.mbstd_mask:
            kwargs["mbstd_mask"] = True
        return kwargs

    def forward(self, pair: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Score pairs (N, 2, S, S) in generator-output format as members of class ``labels``; returns (N,)."""
        x = torch.cat([pair[:, :1], pair[:, 1:] * 2 - 1], dim=1)
        x = F.leaky_relu(self.from_pair(x), LRELU_SLOPE)
        x = self.blocks(x)
        x = group_statistics(x, pair, self.mbstd_group, self.mbstd_mask)
        x = F.leaky_relu(self.final(x), LRELU_SLOPE)
        h = x.sum(dim=(2, 3))  # sum pooling, as in SNGAN/BigGAN projection discriminators
        return self.linear(h).squeeze(1) + self.cond_weight * (self.embed(labels) * h).sum(dim=1)
