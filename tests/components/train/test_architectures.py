"""The named architectures through the real training loop: bit-exact resume with noise inputs, model files."""

from __future__ import annotations

import numpy as np
import torch

from components.config import resolve
from components.gan.sampling import generate, load_generator
from components.gan.stylenets import StyleGenerator
from components.train.core import train

STYLE = ["train.g_arch=style", "train.d_arch=residual"]


def test_style_generator_and_residual_discriminator_resume_bit_for_bit(train_data, tmp_path):
    archive, split = train_data
    train(archive, split, tmp_path / "a", resolve("tiny", [*STYLE, "train.steps=3"]), None)
    resumed = train(archive, split, tmp_path / "a", resolve("tiny", STYLE), None)
    straight = train(archive, split, tmp_path / "b", resolve("tiny", STYLE), None)
    assert resumed["resumed"] and straight["steps"] == resumed["steps"] == 6
    # The noise maps come from each step's own generator, so the resumed run draws exactly what the straight one did.
    assert straight["replica_fingerprints"] == resumed["replica_fingerprints"]
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    assert a["g_kwargs"]["arch"] == "style" and a["d_kwargs"]["arch"] == "residual"


def test_a_style_model_file_rebuilds_and_samples(train_data, tmp_path):
    archive, split = train_data
    train(archive, split, tmp_path / "m", resolve("tiny", STYLE), None)
    G, meta = load_generator(tmp_path / "m")
    assert isinstance(G, StyleGenerator) and meta["kwargs"]["arch"] == "style"
    images, masks = generate(G, np.array([0, 1, 2]), seed=3)
    again, _ = generate(G, np.array([0, 1, 2]), seed=3)
    assert images.shape == (3, 32, 32) and np.array_equal(images, again)
