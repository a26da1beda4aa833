"""StyleGAN2-style networks sized for small medical images: a styled generator and a residual discriminator.

``StyleGenerator`` (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN", shrunk):

- a **mapping network** turns the normalised latent and the normalised class embedding into one style vector ``w``
  (StyleGAN2-ADA's conditional mapping), so class and latent are entangled before they reach the pixels;
- every layer is a **modulated, demodulated conv** driven by ``w`` (non-fused: the style scales the input, the
  demodulation the output, so one ordinary conv serves the whole batch, which is what a CPU runs fast);
- **per-pixel noise** with a learned strength per layer after every conv: stochastic detail (texture, small
  structures) that the latent need not encode, which is where a collapsed generator loses its within-class spread;
- **skip outputs**: every resolution adds its own image + mask to the upsampled sum of the coarser ones, so coarse
  layers set anatomy and the finest layers only add detail;
- a **full-resolution block**: one more modulated conv at the output size, so the top octave of detail is computed
  at full resolution instead of being interpolated (the sub-pixel up-convs alone left a 2x2 block texture).

``ResidualDiscriminator`` (StyleGAN2's ``resnet`` D, without spectral norm: R1 alone regularises it, as in
StyleGAN2-ADA; spectral norm on top of R1 had left the old D unable to separate real from fake, hinge loss ~1.8-1.9
of 2.0): a stride-2 input conv over the full-resolution pair into a wide half-resolution layer, residual
downsampling blocks, minibatch-stddev within class, and the projection term of Miyato & Koyama (2018) for the
class.

Noise inputs are explicit: :meth:`StyleGenerator.draw_noise` draws them from a given ``torch.Generator`` so a
training step stays a pure function of its seed (bit-exact resume) and sampling stays reproducible; without
``noise`` the forward draws from the global RNG, as StyleGAN2's ``noise_mode='random'``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from components.gan.networks import (
    LRELU_SLOPE,
    add_condition_weight,
    channel_width,
    check_image_size,
    group_statistics,
    init_discriminator,
)


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale each row of ``(N, D)`` to unit RMS (StyleGAN's input normalisation of ``z`` and the class embedding)."""
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)


class MappingNetwork(nn.Module):
    """``(z, class) -> w``: both normalised, concatenated, then ``layers`` fully connected layers."""

    def __init__(self, z_dim: int, n_classes: int, w_dim: int, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(n_classes, w_dim)
        dims = [z_dim + w_dim] + [w_dim] * layers
        self.fcs = nn.ModuleList(nn.Linear(dims[i], dims[i + 1]) for i in range(layers))
        add_condition_weight(self)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Style vectors ``(N, w_dim)``."""
        x = torch.cat([normalize_2nd_moment(z), normalize_2nd_moment(self.embed(labels)) * self.cond_weight], dim=1)
        for fc in self.fcs:
            x = F.leaky_relu(fc(x), LRELU_SLOPE)
        return x


class ModulatedConv(nn.Module):
    """A conv whose input channels are scaled per sample by an affine map of ``w`` (StyleGAN2 modulation).

    With ``demodulate`` each output channel is divided by the norm its modulated weights would have, which keeps
    activations at unit scale without instance norm (StyleGAN2's fix for the droplet artefacts). ``up=True`` makes
    it a sub-pixel up-conv: 4x the output channels at the input resolution, then a pixel shuffle, initialised so all
    four phases start equal (ICNR: no checkerboard at the start).
    """

    def __init__(
        self, in_ch: int, out_ch: int, w_dim: int, kernel: int = 3, demodulate: bool = True, up: bool = False
    ) -> None:
        super().__init__()
        self.up, self.demodulate, self.padding = up, demodulate, kernel // 2
        phases = 4 if up else 1
        weight = torch.empty(out_ch, in_ch, kernel, kernel)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))  # nn.Conv2d's default
        self.weight = nn.Parameter(weight.repeat_interleave(phases, dim=0))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.affine = nn.Linear(w_dim, in_ch)
        # Styles start around 1 and already depend on w (StyleGAN2: bias 1). Zero weights, i.e. styles exactly 1,
        # make every sample of a class start as the same image (quickstart seed 0 ended at diversity ratio 0.06;
        # with this init 0.21, still collapsed at 1000 steps: bench/RESULTS.md).
        nn.init.ones_(self.affine.bias)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``x`` (N, in, H, W) modulated by ``w`` (N, w_dim); (N, out, H, W), or (N, out, 2H, 2W) with ``up``."""
        styles = self.affine(w)  # (N, in)
        out = F.conv2d(x * styles[:, :, None, None], self.weight, padding=self.padding)
        if self.demodulate:
            # ||W_o * s||_2 per sample and output channel: sum_i s_i^2 * sum_kl W_oikl^2.
            norms = styles.square() @ self.weight.square().sum(dim=(2, 3)).t()  # (N, out * phases)
            out = out * torch.rsqrt(norms + 1e-8)[:, :, None, None]
        if self.up:
            out = F.pixel_shuffle(out, 2)
        return out + self.bias[None, :, None, None]


class StyleLayer(nn.Module):
    """Modulated conv, per-pixel noise with a learned strength (StyleGAN2: starts at 0), leaky ReLU."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, up: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv(in_ch, out_ch, w_dim, up=up)
        self.noise_strength = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """One layer; ``noise`` is (N, 1, H_out, W_out)."""
        return F.leaky_relu(self.conv(x, w) + self.noise_strength * noise, LRELU_SLOPE)


class StyleGenerator(nn.Module):
    """Class-conditional generator ``G(z, labels[, noise]) -> (N, 2, S, S)`` in generator-output format.

    Widths follow the project's rule (``channels`` at a quarter of the output size, halving towards the output,
    capped at ``4 * channels``). One modulated conv per resolution, plus the learned 4x4 constant's conv and the
    full-resolution block's second conv (the layer the old generator lacked), keeps a step on a 2-core CPU near the
    old generator's cost; twice the width at full resolution made a quickstart step 1.8x slower.
    """

    arch = "style"

    def __init__(
        self, z_dim: int, n_classes: int, channels: int = 32, image_size: int = 64, mapping_layers: int = 2
    ) -> None:
        super().__init__()
        log2 = check_image_size(image_size)
        if n_classes < 1 or z_dim < 1 or channels < 1 or mapping_layers < 1:
            raise ValueError(
                f"z_dim, n_classes, channels and mapping_layers must be positive ({z_dim}, {n_classes}, {channels}, "
                f"{mapping_layers})"
            )
        self.z_dim, self.n_classes, self.channels, self.image_size = z_dim, n_classes, channels, image_size
        self.mapping_layers = mapping_layers
        resolutions = [2**k for k in range(2, log2 + 1)]
        width = {r: channel_width(channels, image_size, r) for r in resolutions}
        w_dim = max(2 * z_dim, 4 * channels)
        self.mapping = MappingNetwork(z_dim, n_classes, w_dim, mapping_layers)
        self.const = nn.Parameter(torch.randn(1, width[4], 4, 4))
        # One stage per resolution: the constant's conv at 4x4, then an up-conv per octave, and at full resolution a
        # second conv; every stage adds its own pair to the upsampled skip sum.
        stages = []
        for r in resolutions:
            stage = (
                [StyleLayer(width[4], width[4], w_dim)]
                if r == 4
                else [StyleLayer(width[r // 2], width[r], w_dim, up=True)]
            )
            if r == image_size:
                stage.append(StyleLayer(width[r], width[r], w_dim))
            stages.append(nn.ModuleList(stage))
        self.stages = nn.ModuleList(stages)
        self.to_pair = nn.ModuleList(ModulatedConv(width[r], 2, w_dim, 1, demodulate=False) for r in resolutions)
        self.noise_sizes = [r for r, stage in zip(resolutions, stages, strict=True) for _ in stage]

    def init_kwargs(self) -> dict[str, object]:
        """Constructor arguments (and the architecture's name), stored with the weights."""
        return {
            "arch": self.arch,
            "z_dim": self.z_dim,
            "n_classes": self.n_classes,
            "channels": self.channels,
            "image_size": self.image_size,
            "mapping_layers": self.mapping_layers,
        }

    def draw_noise(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> list[torch.Tensor]:
        """The per-pixel noise maps of ``n`` samples, one per layer, drawn on the CPU from ``generator``."""
        return [torch.randn(n, 1, s, s, generator=generator).to(device) for s in self.noise_sizes]

    def forward(self, z: torch.Tensor, labels: torch.Tensor, noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Map latents ``z`` (N, z_dim), class indices ``labels`` (N,) and optional noise maps to pairs."""
        if noise is None:
            noise = [torch.randn(len(z), 1, s, s, device=z.device, dtype=z.dtype) for s in self.noise_sizes]
        w = self.mapping(z, labels)
        x = self.const.expand(len(z), -1, -1, -1)
        noise_maps = iter(noise)
        out: torch.Tensor | None = None
        for stage, to_pair in zip(self.stages, self.to_pair, strict=True):
            for layer in stage:
                x = layer(x, w, next(noise_maps))
            skip = to_pair(x, w)
            out = skip if out is None else F.interpolate(out, scale_factor=2, mode="bilinear") + skip
        return torch.cat([torch.tanh(out[:, :1]), torch.sigmoid(out[:, 1:])], dim=1)


class _ResBlock(nn.Module):
    """Residual 2x downsampling: 3x3 conv + 4x4 stride-2 conv, skip = average pool + 1x1 conv, summed / sqrt 2."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, in_ch, 3, padding=1)
        self.down = nn.Conv2d(in_ch, out_ch, 4, stride=2, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.conv(x), LRELU_SLOPE)
        h = F.leaky_relu(self.down(h), LRELU_SLOPE)
        return (h + self.skip(F.avg_pool2d(x, 2))) * (1 / math.sqrt(2))


class ResidualDiscriminator(nn.Module):
    """Residual projection discriminator ``D(pair, labels) -> (N,)`` logits, regularised by R1 alone.

    Widths follow the project's rule (``channels`` at a quarter of the input size, doubling towards 4x4, capped at
    ``4 * channels``) except at half resolution, which gets twice that: the input conv reads every full-resolution
    pixel with stride 2 into that layer, where the generator's fine detail is judged (the old discriminator had
    ``channels // 2`` there).
    """

    arch = "residual"

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
        # The input conv reads every full-resolution pixel with stride 2 (a full-resolution feature map of any width
        # cost ~5x the whole old discriminator per step on a 2-core CPU); the residual blocks run from S/2 to 4x4.
        resolutions = [2**k for k in range(log2 - 1, 1, -1)]  # S/2, ..., 4
        width = {r: channel_width(channels, image_size, r) * (2 if r == image_size // 2 else 1) for r in resolutions}
        width = {r: min(4 * channels, w) for r, w in width.items()}
        self.from_pair = nn.Conv2d(2, width[image_size // 2], 4, stride=2, padding=1)
        self.blocks = nn.Sequential(*(_ResBlock(width[r], width[r // 2]) for r in resolutions[:-1]))
        extra = int(bool(self.mbstd_group)) + int(self.mbstd_mask)
        self.final = nn.Conv2d(width[4] + extra, width[4], 3, padding=1)
        self.fc = nn.Linear(width[4] * 16, width[4])
        self.linear = nn.Linear(width[4], 1)
        self.embed = nn.Embedding(n_classes, width[4])
        nn.init.normal_(self.embed.weight, std=1 / math.sqrt(width[4]))
        add_condition_weight(self)

    def init_kwargs(self) -> dict[str, object]:
        """Constructor arguments (and the architecture's name), stored in checkpoints."""
        return {
            "arch": self.arch,
            "n_classes": self.n_classes,
            "channels": self.channels,
            "image_size": self.image_size,
            "mbstd_group": self.mbstd_group,
            "mbstd_mask": self.mbstd_mask,
        }

    def forward(self, pair: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Score pairs (N, 2, S, S) in generator-output format as members of class ``labels``; returns (N,)."""
        x = torch.cat([pair[:, :1], pair[:, 1:] * 2 - 1], dim=1)
        x = F.leaky_relu(self.from_pair(x), LRELU_SLOPE)
        x = self.blocks(x)
        x = group_statistics(x, pair, self.mbstd_group, self.mbstd_mask)
        x = F.leaky_relu(self.final(x), LRELU_SLOPE)
        h = F.leaky_relu(self.fc(x.flatten(1)), LRELU_SLOPE)
        return self.linear(h).squeeze(1) + self.cond_weight * (self.embed(labels) * h).sum(dim=1)
