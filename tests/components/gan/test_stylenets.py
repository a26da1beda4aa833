from __future__ import annotations

import numpy as np
import pytest
import torch

from components.errors import ConfigError
from components.gan.loss import PhasedLoss
from components.gan.models import build_discriminator, build_generator
from components.gan.networks import Discriminator, Generator
from components.gan.sampling import generate
from components.gan.stylenets import ModulatedConv, ResidualDiscriminator, StyleGenerator


def _style(size: int = 32, channels: int = 8) -> StyleGenerator:
    torch.manual_seed(0)
    G = StyleGenerator(z_dim=16, n_classes=3, channels=channels, image_size=size)
    for layer in G.modules():  # leave the zero initialisation of the noise strengths and the identity styles
        if hasattr(layer, "noise_strength"):
            torch.nn.init.constant_(layer.noise_strength, 0.5)
        if isinstance(layer, ModulatedConv):
            torch.nn.init.normal_(layer.affine.weight, std=0.3)
    return G


@pytest.mark.parametrize("size, channels", [(32, 8), (64, 16), (128, 8)])
def test_style_generator_and_residual_discriminator_shapes(size, channels):
    G = _style(size, channels)
    D = ResidualDiscriminator(n_classes=3, channels=channels, image_size=size, mbstd_group=2)
    labels = torch.tensor([0, 1, 2, 1])
    noise = G.draw_noise(4, torch.Generator().manual_seed(0))
    assert [n.shape[-1] for n in noise] == G.noise_sizes
    assert G.noise_sizes[-2:] == [size, size]  # the full-resolution block: two layers at the output size
    pair = G(torch.randn(4, 16), labels, noise)
    assert pair.shape == (4, 2, size, size)
    assert pair[:, 0].min() >= -1 and pair[:, 0].max() <= 1
    assert pair[:, 1].min() >= 0 and pair[:, 1].max() <= 1
    logits = D(pair, labels)
    assert logits.shape == (4,)
    logits.sum().backward()
    assert all(p.grad is not None for p in G.parameters())
    assert all(p.grad is not None for p in D.parameters())


def test_noise_inputs_change_the_detail_not_the_reproducibility():
    G = _style()
    z, labels = torch.randn(2, 16), torch.tensor([0, 2])
    a = G(z, labels, G.draw_noise(2, torch.Generator().manual_seed(1)))
    b = G(z, labels, G.draw_noise(2, torch.Generator().manual_seed(1)))
    c = G(z, labels, G.draw_noise(2, torch.Generator().manual_seed(2)))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_style_generator_output_depends_on_the_label():
    G = _style()
    z = torch.randn(1, 16).repeat(2, 1)
    noise = [n.repeat(2, 1, 1, 1) for n in G.draw_noise(1, torch.Generator().manual_seed(0))]
    out = G(z, torch.tensor([0, 2]), noise)
    assert not torch.allclose(out[0], out[1])


def test_modulated_conv_demodulation_keeps_unit_scale_per_output_channel():
    torch.manual_seed(0)
    conv = ModulatedConv(16, 8, w_dim=4, kernel=1)
    torch.nn.init.normal_(conv.affine.weight, std=2.0)
    x = torch.randn(3, 16, 32, 32)
    out = conv(x, torch.randn(3, 4)) - conv.bias[None, :, None, None]
    # A 1x1 conv of unit-variance inputs with demodulated weights has unit-variance outputs, whatever the style.
    torch.testing.assert_close(out.std(dim=(2, 3)), torch.ones(3, 8), atol=0.1, rtol=0)


def test_generate_with_noise_is_deterministic_and_batch_independent():
    G = _style()
    labels = np.array([0, 1, 2, 2, 1])
    images, masks = generate(G, labels, seed=7, batch_size=2)
    same, same_masks = generate(G, labels, seed=7, batch_size=2)
    np.testing.assert_array_equal(images, same)
    np.testing.assert_array_equal(masks, same_masks)
    other_batch, _ = generate(G, labels, seed=7, batch_size=64)
    np.testing.assert_allclose(images, other_batch, atol=1e-5)
    other, _ = generate(G, labels, seed=8)
    assert not np.allclose(images, other)


def test_models_rebuild_from_their_kwargs_and_old_files_are_the_legacy_networks():
    G = _style()
    rebuilt = build_generator(G.init_kwargs())
    assert isinstance(rebuilt, StyleGenerator)
    rebuilt.load_state_dict(G.state_dict())  # same parameter names and shapes
    D = ResidualDiscriminator(3, 8, 32, mbstd_group=4)
    assert isinstance(build_discriminator(D.init_kwargs()), ResidualDiscriminator)
    # Files written before the architectures were named carry no "arch": they are the film / sn networks.
    assert isinstance(build_generator(Generator(16, 3, 8, 32).init_kwargs()), Generator)
    assert isinstance(build_discriminator(Discriminator(3, 8, 32).init_kwargs()), Discriminator)
    with pytest.raises(ConfigError, match="unknown generator .* architecture .gan9000."):
        build_generator({"arch": "gan9000", "z_dim": 16, "n_classes": 3})


def test_loss_phases_draw_the_noise_from_the_step_generator():
    torch.manual_seed(0)
    G, D = _style(), ResidualDiscriminator(3, 8, 32, mbstd_group=2)
    loss = PhasedLoss(G, D, augment="translation", group_by_class=True)
    real, labels, z = torch.rand(4, 2, 32, 32) * 2 - 1, torch.tensor([0, 1, 2, 1]), torch.randn(4, 16)

    def d_grads(seed: int) -> torch.Tensor:
        D.zero_grad(set_to_none=True)
        G.requires_grad_(False)
        loss.accumulate_gradients("Dmain", real, labels, z, labels, torch.Generator().manual_seed(seed))
        return torch.cat([p.grad.flatten() for p in D.parameters() if p.grad is not None])

    torch.testing.assert_close(d_grads(3), d_grads(3))  # a step is a pure function of its generator
    assert not torch.allclose(d_grads(3), d_grads(4))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.g_arch=gan9000", "train.g_arch must be one of film, style"),
        ("train.d_arch=x", "train.d_arch"),
        ("train.mapping_layers=0", "train.mapping_layers"),
    ],
)
def test_architecture_settings_are_checked_before_training(override, message):
    from components.config import resolve
    from components.train.trainer import check_train_config

    with pytest.raises(ConfigError, match=message):
        check_train_config(resolve("tiny", [override]))
