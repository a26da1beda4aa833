"""Interpretability for the review report: latent interpolations, discriminator saliency, real grids across patients."""

import numpy as np
import pytest
import torch

from components.config import resolve
from components.evaluate.interpret import (
    across_patients,
    interpretability,
    latent_interpolations,
    lesion_share,
    load_discriminator,
    saliency,
    slerp,
)
from components.evaluate.report import png_size
from components.gan.models import build_discriminator, build_generator, discriminator_kwargs, generator_kwargs

CLASSES = ["normal", "benign", "malignant"]


def networks(arch: str = "film"):
    train = resolve("tiny", [f"train.g_arch={arch}"]).train
    torch.manual_seed(0)
    G = build_generator(generator_kwargs(train, 3, 32)).eval().requires_grad_(False)
    D = build_discriminator(discriminator_kwargs(train, 3, 32)).eval()  # eval: no spectral-norm power step
    return G, D


def write_checkpoint(folder, D, step=6):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"step": step, "D": D.state_dict(), "d_kwargs": D.init_kwargs()}, folder / "checkpoint.pt")


def test_slerp_ends_at_both_latents_and_keeps_a_typical_norm():
    z0, z1 = torch.randn(2, 64, generator=torch.Generator().manual_seed(1))
    path = slerp(z0, z1, torch.linspace(0, 1, 5))
    torch.testing.assert_close(path[0], z0)
    torch.testing.assert_close(path[-1], z1)
    assert all(0.8 * z0.norm() < p.norm() < 1.25 * z1.norm() + 0.5 * z0.norm() for p in path)


@pytest.mark.parametrize("arch", ["film", "style"])
def test_latent_interpolations_per_class_image_and_mask(arch):
    G, _ = networks(arch)
    walks = latent_interpolations(G, CLASSES, seed=3, steps=5)
    assert [w["class"] for w in walks] == CLASSES and all(w["steps"] == 5 for w in walks)
    width, height = png_size(walks[0]["grid"])
    assert (width, height) == (5 * 32 + 4 * 2, 2 * 32 + 2)  # 5 frames; image row above its mask row
    assert walks == latent_interpolations(G, CLASSES, seed=3, steps=5)  # reproducible
    assert walks != latent_interpolations(G, CLASSES, seed=4, steps=5)


def test_saliency_is_the_input_gradient_of_the_discriminator():
    _, D = networks()
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (2, 32, 32)).astype(np.float32)
    masks = np.zeros((2, 32, 32), np.uint8)
    masks[:, 8:16, 8:16] = 1
    maps, logits = saliency(D, images, masks, label=1)
    assert maps.shape == (2, 32, 32) and (maps >= 0).all() and maps.sum() > 0
    with torch.no_grad():
        pair = torch.from_numpy(np.stack([images, masks.astype(np.float32)], 1))
        np.testing.assert_allclose(logits, D(pair, torch.ones(2, dtype=torch.long)).numpy(), rtol=1e-5)
    share, area = lesion_share(maps, masks)
    assert 0 <= share <= 1 and area == pytest.approx(64 / 1024)
    concentrated = np.zeros_like(maps)
    concentrated[:, 8:16, 8:16] = 1.0  # all the saliency inside the mask
    assert lesion_share(concentrated, masks)[0] == pytest.approx(1.0)
    assert np.isnan(lesion_share(maps, np.zeros_like(masks))[0])  # no lesion: no share


def test_the_discriminator_comes_from_the_training_checkpoint(tmp_path):
    G, D = networks()
    D_missing, info = load_discriminator(tmp_path / "none")
    assert D_missing is None and "no training checkpoint" in info["reason"]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert "no readable discriminator" in load_discriminator(tmp_path / "bad")[1]["reason"]

    write_checkpoint(tmp_path / "model", D, step=6)
    loaded, info = load_discriminator(tmp_path / "model")
    assert info["step"] == 6 and info["arch"] == "sn" and len(info["checkpoint_sha256"]) == 64
    for a, b in zip(loaded.state_dict().values(), D.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)

    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 4)
    real = (
        rng.uniform(-1, 1, (12, 32, 32)).astype(np.float32),
        (rng.uniform(0, 1, (12, 32, 32)) > 0.9).astype(np.uint8),
        labels,
        np.array([f"p{i % 3}" for i in range(12)]),
    )
    synthetic = (real[0][::-1].copy(), real[1], labels)
    section = interpretability(G, tmp_path / "model", real, synthetic, CLASSES, seed=0, generator_step=4)
    assert len(section["interpolations"]) == 3
    assert [s["class"] for s in section["saliency"]] == CLASSES
    first = section["saliency"][0]
    assert len(first["real"]["logits"]) == 2 and len(first["synthetic"]["logits"]) == 2  # a handful per class
    assert "step 6" in section["discriminator"]["note"] and "step 4" in section["discriminator"]["note"]
    no_d = interpretability(G, tmp_path / "none", real, synthetic, CLASSES, seed=0)
    assert no_d["saliency"] == [] and "no training checkpoint" in no_d["discriminator"]["reason"]


def test_real_pictures_take_one_slice_per_patient_in_turn():
    rows = np.arange(100, 118)  # 3 patients of 6 consecutive slices
    patients = np.repeat(["a", "b", "c"], 6)
    picked = across_patients(rows, patients, 5)
    assert len(picked) == 5
    assert [patients[r - 100] for r in picked[:3]] == ["a", "b", "c"]  # every patient before any second slice
    assert list(picked[:3]) == [103, 109, 115]  # each patient's middle slice first
    assert len(set(across_patients(rows, patients, 50))) == 18  # all, when asked for more than there are
    assert len(across_patients(rows[:0], patients[:0], 4)) == 0
