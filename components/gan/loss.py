"""Phased GAN loss in the style of StyleGAN2-ADA: ``Gmain``, ``Dmain`` and the lazy ``Dreg`` (R1) phase.

Each phase computes its loss and back-propagates it into the parameters of the network it trains; the trainer owns
the optimisers and decides when each phase runs (``Dreg`` every ``r1_interval`` steps). ``G`` and ``D`` may be
DDP-wrapped: a phase calls the wrapper only for the network it trains, so gradients are all-reduced exactly once,
and calls the bare module for the other one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from components.errors import ConfigError
from components.gan.augment import diff_augment, parse_policy
from components.gan.networks import group_size

PHASES = ("Gmain", "Dmain", "Dreg")
LOSSES = ("hinge", "nonsaturating")


def _bare(module: nn.Module) -> nn.Module:
    return getattr(module, "module", module)


def by_class(x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` and ``labels`` reordered by label; stable, so the order within a class is kept."""
    order = torch.argsort(labels, stable=True)
    return x[order], labels[order]


def pool_pairs(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``(N, C, S, S)`` pairs average-pooled ``factor`` x ``factor`` (1: unchanged): mode seeking's distance space."""
    return F.avg_pool2d(x, factor) if factor > 1 else x


class PhasedLoss:
    """Adversarial loss (hinge or non-saturating logistic) with lazy R1 on real pairs.

    ``autocast`` is a zero-argument context factory wrapped around network forwards (bf16 on CUDA); the R1
    gradient penalty always runs in float32, since its double backward is the numerically fragile part.
    """

    def __init__(
        self,
        G: nn.Module,
        D: nn.Module,
        loss: str = "hinge",
        r1_gamma: float = 0.1,
        r1_interval: int = 16,
        augment: str = "",
        autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
        D_reg: nn.Module | None = None,
        mode_seeking: float = 0.0,
        mode_seeking_cap: torch.Tensor | None = None,
        mode_seeking_pool: int = 1,
        mode_seeking_class_weight: torch.Tensor | None = None,
        group_by_class: bool = False,
        class_weights: torch.Tensor | None = None,
        augment_group: int = 1,
        augment_per_pair: str = "",
    ) -> None:
        if loss not in LOSSES:
            raise ConfigError(f"unknown train.loss {loss!r}; choose one of: {', '.join(LOSSES)}")
        if r1_interval < 1:
            raise ConfigError(f"train.r1_interval must be at least 1, got {r1_interval}")
        self.G, self.D = G, D
        # R1 needs a double backward, which compiled modules do not support: Dreg may use the eager D.
        self.D_reg = D_reg if D_reg is not None else D
        self.loss = loss
        self.r1_gamma = float(r1_gamma)
        self.r1_interval = int(r1_interval)
        self.augment = parse_policy(augment)
        # D's minibatch-stddev group size when each group shares one augmentation draw (1: every pair its own)
        self.augment_group = int(augment_group)
        # augmentations still drawn for every pair when augment_group > 1 (e.g. the cutout, which hides no collapse)
        self.augment_per_pair = parse_policy(augment_per_pair, "train.diffaugment_per_pair")
        stray = [name for name in self.augment_per_pair if name not in self.augment]
        if stray:
            raise ConfigError(
                f"train.diffaugment_per_pair names {stray}, which train.diffaugment ({augment!r}) does not apply"
            )
        self.autocast = autocast or contextlib.nullcontext
        self.mode_seeking = float(mode_seeking)
        self.mode_seeking_cap = mode_seeking_cap  # per class: the ratio counts at most this much (None: unbounded)
        self.mode_seeking_pool = int(mode_seeking_pool)  # distances between pairs average-pooled by this factor
        # per class: how hard its pairs are pushed apart (None: all alike); the term sees the weighted mean ratio
        self.mode_seeking_class_weight = mode_seeking_class_weight
        self.group_by_class = group_by_class
        # split.strategy=class-weighted-loss: every sample's D and G loss times its class's weight (None: unweighted)
        self.class_weights = class_weights

    def _mean(self, per_sample: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The batch mean of a per-sample loss, each sample weighted by its class with ``class_weights``.

        The weights average to 1 over the real train samples, so with uniform sampling the weighted mean has the
        expectation of the class-balanced loss (importance weighting), as the weighted sampler's plain mean has.
        """
        if self.class_weights is None:
            return per_sample.mean()
        return (per_sample.reshape(-1) * self.class_weights[labels]).mean()

    def _augment(self, pairs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        group = group_size(len(pairs), self.augment_group)
        return diff_augment(pairs, self.augment, generator, group, self.augment_per_pair)

    def _run_D(
        self, D: nn.Module, pairs: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        if self.augment:
            pairs = self._augment(pairs, generator)
        with self.autocast():
            return D(pairs, labels).float()

    def accumulate_gradients(
        self,
        phase: str,
        real: torch.Tensor,
        real_labels: torch.Tensor,
        gen_z: torch.Tensor,
        gen_labels: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run one phase: compute its loss, call ``backward()``, return detached scalar statistics.

        With ``group_by_class`` the real and the generated samples are each ordered by class first: D's
        minibatch-stddev groups consecutive samples, so a group then holds one class and its spread is the
        within-class spread a class-collapsed generator lacks (mixed groups mostly measure the class differences).
        The order changes nothing else: every loss is a mean over the batch.
        """
        if self.group_by_class:
            if real is not None:  # Gmain has no real batch
                real, real_labels = by_class(real, real_labels)
            gen_z, gen_labels = by_class(gen_z, gen_labels)
        if phase == "Gmain":
            return self.g_main(gen_z, gen_labels, generator)
        if phase == "Dmain":
            return self.d_main(real, real_labels, gen_z, gen_labels, generator)
        if phase == "Dreg":
            return self.d_reg(real, real_labels, generator)
        raise ValueError(f"unknown loss phase {phase!r}; phases are {PHASES}")

    def g_main(
        self, gen_z: torch.Tensor, gen_labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Generator phase: make D call the fakes real. Gradients flow through the bare D into G only.

        With ``mode_seeking`` > 0 the second half of the batch gets the first half's classes (other latents) and
        the mode-seeking term is added.
        """
        half = gen_z.shape[0] // 2
        if self.mode_seeking > 0 and half > 0:  # the second half: the first half's classes with other latents
            gen_labels = torch.cat([gen_labels[:half], gen_labels[:half], gen_labels[2 * half :]])
        noise = _bare(self.G).draw_noise(len(gen_z), generator, gen_z.device)
        with self.autocast():
            fake = self.G(gen_z, gen_labels, noise)
        logits = self._run_D(_bare(self.D), fake.float(), gen_labels, generator)
        loss = self._mean(-logits if self.loss == "hinge" else F.softplus(-logits), gen_labels)
        stats = {"loss_g": loss.detach()}  # the adversarial part: comparable with and without mode seeking
        if self.mode_seeking > 0 and half > 0:
            # Mode seeking (MSGAN, Mao et al. 2019): pairs of two latents of one class must differ in proportion to
            # their latents; minimising the inverse ratio spreads a class over more of its modes.
            a, b = (pool_pairs(x.float(), self.mode_seeking_pool) for x in (fake[:half], fake[half : 2 * half]))
            ratio = (a - b).abs().mean(dim=(1, 2, 3)) / (gen_z[:half] - gen_z[half : 2 * half]).abs().mean(dim=1)
            if self.mode_seeking_cap is not None:  # DSGAN's clamp: no push for a pair already as far apart as reals
                ratio = torch.minimum(ratio, self.mode_seeking_cap[gen_labels[:half]])
            if self.mode_seeking_class_weight is None:
                mean = ratio.mean()
            else:  # a pair's gradient is proportional to its class's weight
                w = self.mode_seeking_class_weight[gen_labels[:half]]
                mean = (w * ratio).sum() / w.sum().clamp_min(1e-12)
            loss = loss + self.mode_seeking / (mean + 1e-5)
        loss.backward()
        return stats

    def d_main(
        self,
        real: torch.Tensor,
        real_labels: torch.Tensor,
        gen_z: torch.Tensor,
        gen_labels: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Discriminator phase: real pairs up, fakes (from the bare G, no grad) down, in one batched D call."""
        noise = _bare(self.G).draw_noise(len(gen_z), generator, gen_z.device)
        with torch.no_grad(), self.autocast():
            fake = _bare(self.G)(gen_z, gen_labels, noise).float()
        logits = self._run_D(self.D, torch.cat([real, fake]), torch.cat([real_labels, gen_labels]), generator)
        real_logits, fake_logits = logits[: real.shape[0]], logits[real.shape[0] :]
        if self.loss == "hinge":
            real_loss, fake_loss = F.relu(1 - real_logits), F.relu(1 + fake_logits)
        else:
            real_loss, fake_loss = F.softplus(-real_logits), F.softplus(fake_logits)
        loss = self._mean(real_loss, real_labels) + self._mean(fake_loss, gen_labels)
        loss.backward()
        real_logits, fake_logits = real_logits.detach(), fake_logits.detach()
        return {
            "loss_d": loss.detach(),
            "d_real": real_logits.mean(),
            "d_fake": fake_logits.mean(),
            # D's accuracy on each side (a logit above 0 says real): the collapse guard watches both.
            "d_acc_real": (real_logits > 0).float().mean(),
            "d_acc_fake": (fake_logits < 0).float().mean(),
        }

    def d_reg(
        self, real: torch.Tensor, real_labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Lazy R1: ``gamma/2 * E||grad_x D(x)||^2`` on real pairs, scaled by the interval it is applied at."""
        real = real.detach().requires_grad_(True)
        if self.augment:
            augmented = self._augment(real, generator)
        else:
            augmented = real
        logits = self.D_reg(augmented, real_labels).float()
        (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
        penalty = grad.square().sum(dim=(1, 2, 3))
        loss = penalty.mean() * (self.r1_gamma / 2) * self.r1_interval
        # The zero-weighted logits keep every D parameter in the graph (the output bias has no R1 gradient),
        # which DDP needs to see each step; StyleGAN2-ADA does the same.
        (logits.mean() * 0 + loss).backward()
        return {"r1": penalty.detach().mean()}
