"""The generator and discriminator architectures by name, and building them from stored constructor arguments.

``train.g_arch`` / ``train.d_arch`` pick an entry; a model file or checkpoint stores ``init_kwargs()``, which names
the architecture under ``arch`` (files written before there was a choice have none: they are the ``film`` / ``sn``
networks).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from components.errors import ConfigError
from components.gan.networks import Discriminator, Generator
from components.gan.stylenets import ResidualDiscriminator, StyleGenerator

GENERATORS: dict[str, type[nn.Module]] = {"film": Generator, "style": StyleGenerator}
DISCRIMINATORS: dict[str, type[nn.Module]] = {"sn": Discriminator, "residual": ResidualDiscriminator}
LEGACY_G, LEGACY_D = "film", "sn"


def _build(registry: dict[str, type[nn.Module]], kwargs: dict[str, Any], legacy: str, what: str) -> nn.Module:
    kwargs = dict(kwargs)
    arch = kwargs.pop("arch", legacy)
    if arch not in registry:
        raise ConfigError(f"unknown {what} architecture {arch!r}; choose one of: {', '.join(registry)}")
    return registry[arch](**kwargs)


def build_generator(kwargs: dict[str, Any]) -> nn.Module:
    """The generator described by ``kwargs`` (its ``init_kwargs()``), freshly initialised."""
    return _build(GENERATORS, kwargs, LEGACY_G, "generator (train.g_arch)")


def build_discriminator(kwargs: dict[str, Any]) -> nn.Module:
    """The discriminator described by ``kwargs`` (its ``init_kwargs()``), freshly initialised."""
    return _build(DISCRIMINATORS, kwargs, LEGACY_D, "discriminator (train.d_arch)")


def generator_kwargs(train_cfg: Any, n_classes: int, image_size: int) -> dict[str, Any]:
    """Constructor arguments of the generator ``cfg.train`` asks for."""
    kwargs: dict[str, Any] = {
        "z_dim": train_cfg.z_dim,
        "n_classes": n_classes,
        "channels": train_cfg.g_channels,
        "image_size": image_size,
    }
    if train_cfg.g_arch != LEGACY_G:
        kwargs["arch"] = train_cfg.g_arch
    if train_cfg.g_arch == "style":
        kwargs["mapping_layers"] = train_cfg.mapping_layers
    return kwargs


def discriminator_kwargs(train_cfg: Any, n_classes: int, image_size: int) -> dict[str, Any]:
    """Constructor arguments of the discriminator ``cfg.train`` asks for."""
    kwargs: dict[str, Any] = {
        "n_classes": n_classes,
        "channels": train_cfg.d_channels,
        "image_size": image_size,
        "mbstd_group": train_cfg.mbstd_group,
    }
    if train_cfg.mbstd_mask and train_cfg.mbstd_group > 1:  # absent when off: older checkpoints still resume
        kwargs["mbstd_mask"] = True
    if train_cfg.d_arch != LEGACY_D:
        kwargs["arch"] = train_cfg.d_arch
    return kwargs
