from __future__ import annotations

import numpy as np
import pytest
import torch

from components.errors import ConfigError
from components.gan.augment import diff_augment, parse_policy, rand_cutout, rand_translation
from components.gan.networks import Discriminator, Generator, group_size, minibatch_stddev
from components.gan.sampling import class_grid, generate


@pytest.mark.parametrize("size, channels", [(32, 8), (64, 16)])
def test_generator_and_discriminator_shapes(size, channels):
    torch.manual_seed(0)
    G = Generator(z_dim=16, n_classes=3, channels=channels, image_size=size)
    D = Discriminator(n_classes=3, channels=channels, image_size=size)
    labels = torch.tensor([0, 1, 2, 1])
    pair = G(torch.randn(4, 16), labels)
    assert pair.shape == (4, 2, size, size)
    assert pair[:, 0].min() >= -1 and pair[:, 0].max() <= 1
    assert pair[:, 1].min() >= 0 and pair[:, 1].max() <= 1
    logits = D(pair, labels)
    assert logits.shape == (4,)
    logits.sum().backward()  # gradients reach the generator through the discriminator
    assert all(p.grad is not None for p in G.parameters())


def test_projection_discriminator_uses_the_label():
    torch.manual_seed(0)
    D = Discriminator(n_classes=3, channels=8, image_size=32).eval()
    pair = torch.rand(2, 2, 32, 32) * 2 - 1
    a = D(pair, torch.tensor([0, 0]))
    b = D(pair, torch.tensor([2, 2]))
    assert not torch.allclose(a, b)


def test_generator_output_depends_on_the_label():
    torch.manual_seed(0)
    G = Generator(z_dim=16, n_classes=3, channels=8, image_size=32)
    torch.nn.init.normal_(G.blocks[0].film.weight)  # leave the identity initialisation of the class modulation
    z = torch.randn(1, 16).repeat(2, 1)
    out = G(z, torch.tensor([0, 2]))
    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("size", [16, 48, 512])
def test_image_size_must_be_a_power_of_two_in_range(size):
    with pytest.raises(ValueError, match="power of two"):
        Generator(16, 3, 8, size)


def test_generate_is_deterministic_and_batch_independent():
    torch.manual_seed(0)
    G = Generator(z_dim=16, n_classes=3, channels=8, image_size=32)
    labels = np.array([0, 1, 2, 2, 1])
    images, masks = generate(G, labels, seed=7, batch_size=2)
    assert images.dtype == np.float32 and images.shape == (5, 32, 32)
    assert masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}
    same, same_masks = generate(G, labels, seed=7, batch_size=2)
    np.testing.assert_array_equal(images, same)
    np.testing.assert_array_equal(masks, same_masks)
    # Another batch size only changes the convolution kernels' summation order, not the latents.
    other_batch, other_masks = generate(G, labels, seed=7, batch_size=64)
    np.testing.assert_allclose(images, other_batch, atol=1e-5)
    assert (masks == other_masks).mean() > 0.999
    other, _ = generate(G, labels, seed=8)
    assert not np.allclose(images, other)
    with pytest.raises(ValueError, match="class indices"):
        generate(G, np.array([3]), seed=0)


def test_class_grid_layout():
    images = np.linspace(-1, 1, 4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8)
    masks = np.ones((4, 8, 8), np.uint8)
    grid = class_grid(images, masks, np.array([0, 1, 1, 1]), ["a", "b", "c"], per_class=2)
    assert grid.dtype == np.uint8
    assert grid.shape == (3 * (8 + 2) + 2, 2 * (2 * 8 + 2 + 2) + 2)
    assert grid[2:10, 12:20].min() == 255  # class a, first cell: its mask
    assert grid[22:30].max() == 0  # class c has no samples: an empty row


def test_diffaugment_moves_image_and_mask_together():
    gen = torch.Generator().manual_seed(0)
    base = (torch.rand(6, 1, 32, 32, generator=gen) > 0.5).float()
    pair = torch.cat([base, base], dim=1).requires_grad_(True)
    out = diff_augment(pair, "translation,cutout", torch.Generator().manual_seed(1))
    assert out.shape == pair.shape
    torch.testing.assert_close(out[:, 0], out[:, 1])  # same geometric transform for both channels
    assert not torch.equal(out, pair)
    out.sum().backward()  # differentiable
    assert pair.grad is not None
    colored = diff_augment(pair.detach(), "color", torch.Generator().manual_seed(1))
    torch.testing.assert_close(colored[:, 1], pair[:, 1].detach())  # colour never touches the mask
    assert not torch.equal(colored[:, 0], pair[:, 0].detach())


@pytest.mark.parametrize("policy", ["translation", "cutout", "color", "translation,cutout,color"])
def test_diffaugment_per_group_augments_each_group_alike_and_group_one_is_per_pair(policy):
    torch.manual_seed(0)
    pair = torch.rand(1, 2, 32, 32).expand(8, 2, 32, 32).contiguous()  # eight copies of one pair
    out = diff_augment(pair, policy, torch.Generator().manual_seed(3), group=4)
    for g in (0, 4):  # within a group: one draw
        for i in range(g + 1, g + 4):
            torch.testing.assert_close(out[i], out[g])
    assert not torch.equal(out[0], out[4])  # the two groups drew differently
    per_pair = diff_augment(pair, policy, torch.Generator().manual_seed(3))
    torch.testing.assert_close(per_pair, diff_augment(pair, policy, torch.Generator().manual_seed(3), group=1))
    assert len({tuple(p.flatten().tolist()) for p in per_pair}) > 2  # per pair: (almost) every copy differs
    with pytest.raises(ValueError, match="divide"):
        diff_augment(pair, policy, torch.Generator().manual_seed(3), group=3)


def test_augmentations_named_per_pair_keep_their_own_draw_inside_a_group():
    # Shift per group, cutout per pair: a group's copies share one shift, and each is cut in its own place.
    torch.manual_seed(0)
    image = torch.rand(1, 1, 32, 32) + 1.0  # no zeros, so the cutout's zeros show where it fell
    pair = torch.cat([image, image], dim=1).expand(8, 2, 32, 32).contiguous()
    out = diff_augment(pair, "translation,cutout", torch.Generator().manual_seed(3), group=4, per_pair="cutout")
    gen = torch.Generator().manual_seed(3)  # the same draws, in the same order, done by hand
    by_hand = rand_cutout(rand_translation(pair, gen, group=4), gen, group=1)
    torch.testing.assert_close(out, by_hand)
    shifted = diff_augment(pair, "translation", torch.Generator().manual_seed(3), group=4)
    for g in (0, 4):  # outside the cutouts, a group's pairs are one shifted image
        kept = (out[g : g + 4] != 0).all(dim=0)
        torch.testing.assert_close(out[g : g + 4] * kept, shifted[g : g + 1].expand(4, -1, -1, -1) * kept)
    cut = out[:, 0] == 0  # where each pair was cut (or shifted in from the border)
    assert len({tuple(c.flatten().tolist()) for c in cut[:4]}) > 1  # the cutout differs within a group
    # naming every augmentation per pair is the per-pair draw; naming none is the per-group one
    everything = diff_augment(pair, "translation,cutout", torch.Generator().manual_seed(3), 4, "translation,cutout")
    torch.testing.assert_close(everything, diff_augment(pair, "translation,cutout", torch.Generator().manual_seed(3)))
    none = diff_augment(pair, "translation,cutout", torch.Generator().manual_seed(3), group=4, per_pair="")
    torch.testing.assert_close(none, diff_augment(pair, "translation,cutout", torch.Generator().manual_seed(3), 4))
    with pytest.raises(ConfigError, match="train.diffaugment_per_pair"):
        diff_augment(pair, "translation", torch.Generator().manual_seed(3), group=4, per_pair="flip")


def test_per_group_augmentation_leaves_a_collapsed_group_without_spread_for_minibatch_stddev():
    # A class whose samples are all one image: D's minibatch-stddev map must read 0, as it does unaugmented. Drawn
    # per pair, the shifts and cutouts alone give the copies more spread than eight different (random) pairs have.
    torch.manual_seed(0)
    collapsed = torch.rand(1, 2, 32, 32).expand(8, 2, 32, 32).contiguous()
    varied = torch.rand(8, 2, 32, 32)

    def spread(x, group):
        out = diff_augment(x, "translation,cutout", torch.Generator().manual_seed(5), group=group)
        return minibatch_stddev(out, 4)[:, -1].mean().item()

    assert spread(collapsed, 4) < 1e-3
    assert spread(collapsed, 1) > spread(varied, 4)
    assert spread(varied, 4) > 0.1


def test_diffaugment_policy_is_checked():
    assert parse_policy(" translation, cutout ,") == ["translation", "cutout"]
    assert parse_policy("") == []
    with pytest.raises(ConfigError, match="flip"):
        parse_policy("translation,flip")


@pytest.mark.parametrize(("batch", "requested", "expected"), [(8, 4, 4), (6, 4, 3), (7, 4, 1), (2, 4, 2), (5, 1, 1)])
def test_group_size_is_the_largest_divisor_up_to_the_request(batch, requested, expected):
    assert group_size(batch, requested) == expected


def test_minibatch_stddev_groups_consecutive_samples():
    torch.manual_seed(0)
    x = torch.randn(8, 5, 4, 4)
    x[:4] = x[0]  # the first group: four copies of one sample (a collapsed generator's batch)
    y = minibatch_stddev(x, 4)
    assert y.shape == (8, 6, 4, 4) and torch.equal(y[:, :5], x)
    assert y[:4, 5].abs().max() < 1e-3  # no spread in the first group
    expected = x[4:].std(dim=0, unbiased=False).mean()  # one value for the whole second group, every pixel
    torch.testing.assert_close(y[4:, 5], expected.expand(4, 4, 4), rtol=1e-5, atol=1e-5)


def test_discriminator_with_minibatch_stddev_sees_its_group_only():
    torch.manual_seed(0)
    D = Discriminator(n_classes=3, channels=8, image_size=32, mbstd_group=2).eval()
    assert D.init_kwargs()["mbstd_group"] == 2
    assert "mbstd_group" not in Discriminator(3, 8, 32).init_kwargs()  # checkpoints without it still resume
    pair = torch.rand(4, 2, 32, 32) * 2 - 1
    labels = torch.tensor([0, 1, 2, 1])
    base = D(pair, labels)
    other = pair.clone()
    other[1] = torch.rand(2, 32, 32)  # change one member of the first group
    changed = D(other, labels)
    assert not torch.allclose(changed[0], base[0])  # its group mate's logit moves ...
    torch.testing.assert_close(changed[2:], base[2:])  # ... the other group's do not
    with pytest.raises(ValueError, match="mbstd_group"):
        Discriminator(3, 8, 32, mbstd_group=-1)


def test_mask_stddev_is_zero_for_lesions_in_one_place_and_marks_where_they_differ():
    from components.gan.networks import mask_stddev

    masks = torch.zeros(4, 1, 32, 32)
    masks[:, :, 2:6, 2:6] = 1  # a group whose lesions all sit in the top-left cell
    assert mask_stddev(masks, 4).max() < 1e-3
    masks[1] = 0
    masks[1, :, 20:24, 20:24] = 1  # one member's lesion elsewhere
    spread = mask_stddev(masks, 4)
    assert spread.shape == (4, 1, 4, 4) and torch.equal(spread[0], spread[3])  # one map for the whole group
    assert spread[0, 0, 0, 0] > 0.05 and spread[0, 0, 2, 2] > 0.05  # both places, nowhere else
    assert spread[0, 0, 1, 1] < 1e-3


@pytest.mark.parametrize("arch", ["sn", "residual"])
def test_discriminator_mask_spread_map_reaches_the_logits(arch):
    from components.gan.models import build_discriminator

    torch.manual_seed(0)
    kwargs = {"n_classes": 3, "channels": 8, "image_size": 32, "mbstd_group": 2, "mbstd_mask": True}
    D = build_discriminator(kwargs if arch == "sn" else {**kwargs, "arch": arch}).eval()
    assert D.init_kwargs()["mbstd_mask"] is True
    seen = []
    D.final.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0][:, -1].clone()))
    pair = torch.zeros(4, 2, 32, 32)
    pair[:, 1, 2:6, 2:6] = 1
    labels = torch.tensor([1, 1, 2, 2])
    D(pair, labels)
    moved = pair.clone()
    moved[1, 1] = 0
    moved[1, 1, 20:24, 20:24] = 1
    D(moved, labels)
    # The last input map of the final conv is the mask spread: zero while the lesions share a place, then non-zero
    # for the group whose member moved, and still zero for the other group.
    assert seen[0].abs().max() < 1e-3
    assert seen[1][:2].max() > 0.05 and seen[1][2:].abs().max() < 1e-3
