from __future__ import annotations

import pytest
import torch

from components.gan.loss import PhasedLoss
from components.gan.networks import Discriminator, Generator


class RecordingG(Generator):
    """A generator that remembers the labels of its last batch."""

    def forward(self, z, labels, noise=None):
        self.seen = labels.clone()
        return super().forward(z, labels, noise)


def _nets(seed=0):
    torch.manual_seed(seed)
    return RecordingG(z_dim=16, n_classes=3, channels=8, image_size=32), Discriminator(3, channels=8, image_size=32)


def _g_grads(mode_seeking, z, labels, **loss_options):
    G, D = _nets()
    D.requires_grad_(False)
    loss = PhasedLoss(G, D, mode_seeking=mode_seeking, **loss_options)
    loss.accumulate_gradients("Gmain", None, None, z, labels, torch.Generator().manual_seed(1))
    return G.seen, torch.cat([p.grad.flatten() for p in G.parameters()])


def test_mode_seeking_pairs_latents_within_a_class_and_changes_g_gradients():
    z, labels = torch.randn(5, 16), torch.tensor([0, 1, 2, 2, 1])
    seen, plain = _g_grads(0.0, z, labels)
    assert seen.tolist() == labels.tolist()  # off: the batch's labels as drawn
    seen, seeking = _g_grads(0.1, z, labels)
    assert seen.tolist() == [0, 1, 0, 1, 1]  # on: the second half repeats the first half's classes; odd one kept
    assert not torch.allclose(plain, seeking)


def test_mode_seeking_pushes_two_latents_of_a_class_apart():
    z, labels = torch.randn(8, 16, generator=torch.Generator().manual_seed(3)), torch.zeros(8, dtype=torch.long)

    def spread_after(mode_seeking):
        G, D = _nets()  # the same start for both
        D.requires_grad_(False)
        loss = PhasedLoss(G, D, mode_seeking=mode_seeking)
        opt = torch.optim.Adam(G.parameters(), lr=1e-3)
        for _ in range(10):
            opt.zero_grad()
            loss.accumulate_gradients("Gmain", None, None, z, labels, torch.Generator().manual_seed(1))
            opt.step()
        with torch.no_grad():
            out = G(z, labels)
        return (out[:4] - out[4:]).abs().mean().item()

    assert spread_after(1.0) > 1.5 * spread_after(0.0)


def test_mode_seeking_cap_stops_the_push_for_pairs_already_as_far_apart_as_reals():
    z, labels = torch.randn(6, 16, generator=torch.Generator().manual_seed(4)), torch.tensor([0, 1, 2, 0, 1, 2])

    def grads(cap):
        return _g_grads(0.5, z, labels, mode_seeking_cap=cap)[1]

    _, adversarial_only = _g_grads(0.0, z, labels)
    unbounded = grads(None)
    assert not torch.allclose(unbounded, adversarial_only)
    # A cap far above every pair's ratio changes nothing; a cap of 0 (every pair "far enough") removes the term.
    assert torch.allclose(grads(torch.full((3,), 1e6)), unbounded)
    assert torch.allclose(grads(torch.zeros(3)), adversarial_only, atol=1e-7)
    # Capping class 0 only leaves classes 1 and 2 pushing: a gradient between the two.
    partial = grads(torch.tensor([0.0, 1e6, 1e6]))
    assert not torch.allclose(partial, unbounded) and not torch.allclose(partial, adversarial_only, atol=1e-7)


def test_mode_seeking_class_weight_scales_the_push_on_each_class_s_pairs():
    z, labels = torch.randn(6, 16, generator=torch.Generator().manual_seed(5)), torch.tensor([0, 1, 2, 0, 1, 2])

    def grads(weight):
        return _g_grads(0.5, z, labels, mode_seeking_class_weight=weight)[1]

    unweighted = grads(None)
    # Equal weights are the plain mean, whatever their scale.
    assert torch.allclose(grads(torch.full((3,), 0.25)), unweighted, atol=1e-7)
    # Sparing class 2 (weight 0) changes the gradient, and classes 0 and 1 are still pushed: it is neither the
    # unweighted term's nor the adversarial gradient alone.
    spared = grads(torch.tensor([1.0, 1.0, 0.0]))
    assert not torch.allclose(spared, unweighted, atol=1e-7)
    _, adversarial_only = _g_grads(0.0, z, labels)
    assert not torch.allclose(spared, adversarial_only, atol=1e-7)


class RecordingD(Discriminator):
    """A discriminator that remembers the labels of every call."""

    def forward(self, pair, labels):
        self.seen = [*getattr(self, "seen", []), labels.tolist()]
        return super().forward(pair, labels)


def test_group_by_class_orders_each_half_by_class_and_leaves_the_losses_alone():
    g = torch.Generator().manual_seed(5)
    real, real_labels = torch.rand(6, 2, 32, 32, generator=g) * 2 - 1, torch.tensor([2, 0, 1, 0, 2, 1])
    z, gen_labels = torch.randn(6, 16, generator=g), torch.tensor([1, 2, 0, 0, 1, 2])
    stats = {}
    for grouped in (False, True):
        torch.manual_seed(0)
        G, D = RecordingG(16, 3, 8, 32), RecordingD(3, channels=8, image_size=32)
        loss = PhasedLoss(G, D, group_by_class=grouped)
        stats[grouped] = {
            **loss.accumulate_gradients("Dmain", real, real_labels, z, gen_labels),
            **loss.accumulate_gradients("Gmain", None, None, z, gen_labels),
        }
        if grouped:  # Dmain: reals then fakes, each half sorted; Gmain: the fakes sorted
            assert D.seen == [[0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2]]
    for key, value in stats[False].items():  # without minibatch-stddev in D, the order is invisible to the loss
        torch.testing.assert_close(stats[True][key], value, msg=key)


def test_class_weights_weight_each_sample_s_d_and_g_loss_by_its_class():
    g = torch.Generator().manual_seed(7)
    real, real_labels = torch.rand(6, 2, 32, 32, generator=g) * 2 - 1, torch.tensor([0, 0, 0, 0, 1, 2])
    z, gen_labels = torch.randn(6, 16, generator=g), torch.tensor([0, 0, 0, 1, 1, 2])
    weights = torch.tensor([0.5, 2.0, 4.0])

    def losses(class_weights):
        G, D = _nets()
        loss = PhasedLoss(G, D, augment="", class_weights=class_weights)
        d = loss.accumulate_gradients("Dmain", real, real_labels, z, gen_labels, torch.Generator().manual_seed(1))
        D.requires_grad_(False)
        gl = loss.accumulate_gradients("Gmain", None, None, z, gen_labels, torch.Generator().manual_seed(1))
        return d["loss_d"].item(), gl["loss_g"].item()

    assert losses(torch.ones(3)) == pytest.approx(losses(None))  # weights of 1: the plain mean
    G, D = _nets()
    with torch.no_grad():  # the weighted hinge losses by hand, from the same nets and draws
        noise = G.draw_noise(6, torch.Generator().manual_seed(1), "cpu")
        fake = G(z, gen_labels, noise)
        logits = D(torch.cat([real, fake]), torch.cat([real_labels, gen_labels]))  # one call, as Dmain's
        real_logits, fake_logits = logits[:6], logits[6:]
        g_logits = D(fake, gen_labels)  # Gmain's call: after Dmain's (spectral norm's power iteration moved on)
    d_expected = (torch.relu(1 - real_logits) * weights[real_labels]).mean() + (
        torch.relu(1 + fake_logits) * weights[gen_labels]
    ).mean()
    g_expected = (-g_logits * weights[gen_labels]).mean()
    assert losses(weights) == pytest.approx((d_expected.item(), g_expected.item()), rel=1e-5)


def test_pooled_mode_seeking_measures_pairs_after_average_pooling():
    from components.gan.loss import pool_pairs

    x = torch.arange(2 * 2 * 4 * 4, dtype=torch.float32).reshape(2, 2, 4, 4)
    assert torch.equal(pool_pairs(x, 1), x)
    pooled = pool_pairs(x, 2)
    assert pooled.shape == (2, 2, 2, 2) and pooled[0, 0, 0, 0] == (0 + 1 + 4 + 5) / 4
    # a checkerboard difference (pure texture) vanishes when pooled: the pooled term cannot be earned by it
    board = (torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2 * 2 - 1.0
    assert pool_pairs(board.expand(1, 2, 4, 4), 2).abs().max() == 0
    z, labels = torch.randn(6, 16, generator=torch.Generator().manual_seed(4)), torch.tensor([0, 1, 2, 0, 1, 2])

    def grads(pool):
        G, D = _nets()
        D.requires_grad_(False)
        loss = PhasedLoss(G, D, mode_seeking=0.5, mode_seeking_pool=pool)
        loss.accumulate_gradients("Gmain", None, None, z, labels, torch.Generator().manual_seed(1))
        return torch.cat([p.grad.flatten() for p in G.parameters()])

    assert not torch.allclose(grads(1), grads(4))
