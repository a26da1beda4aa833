"""Collapse metrics: per-class pixel spread and lesion-position spread, synthetic against real."""

import numpy as np
import pytest

from components.metrics.collapse import (
    centroid_spread,
    class_statistics,
    collapse_ratios,
    mask_centroids,
)
from components.metrics.consistency import consistency_report, pair_statistics

CLASSES = ["normal", "benign", "malignant"]
LESION = ["benign", "malignant"]


def draw(n_per_class: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noisy images; each lesion-class sample has a disc lesion at a random place (one distribution, any seed)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(CLASSES, n_per_class)
    images = rng.normal(0, 0.3, (len(labels), size, size)).astype(np.float32)
    masks = np.zeros((len(labels), size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for i, label in enumerate(labels):
        if label in LESION:
            r = 3 if label == "benign" else 5
            cy, cx = rng.uniform(r + 1, size - r - 1, 2)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            masks[i] = disc
            images[i][disc] += 1.0
    return images, masks, labels


def test_centroids_and_their_spread_in_pixels():
    masks = np.zeros((3, 10, 10), np.uint8)
    masks[0, 2:4, 2:4] = 1  # centroid (2.5, 2.5)
    masks[1, 6, 8] = 1  # centroid (6, 8)
    c = mask_centroids(masks)
    np.testing.assert_allclose(c[:2], [[2.5, 2.5], [6.0, 8.0]])
    assert np.isnan(c[2]).all()  # empty mask
    # two points: unbiased variances (3.5^2 / 2, 5.5^2 / 2) -> sqrt of their sum
    assert centroid_spread(masks) == pytest.approx(np.sqrt((3.5**2 + 5.5**2) / 2))
    assert np.isnan(centroid_spread(masks[[0, 2]]))  # a single lesion has no spread


def test_collapsed_set_scores_zero_and_another_draw_of_the_real_distribution_about_one():
    real = class_statistics(*draw(150, seed=0), CLASSES, LESION)
    images, masks, labels = draw(150, seed=1)
    varied = collapse_ratios(real, class_statistics(images, masks, labels, CLASSES, LESION))
    assert varied["diversity_ratio"] == pytest.approx(1.0, abs=0.05)
    assert varied["min_class_diversity_ratio"] == pytest.approx(1.0, abs=0.05)
    assert varied["lesion_spread_ratio"] == pytest.approx(1.0, abs=0.15)
    for cls in LESION:
        assert varied["per_class"][cls]["lesion_spread_ratio"] == pytest.approx(1.0, abs=0.15)

    # every sample of a class identical: pixel spread and lesion spread 0 for it
    first = {cls: np.flatnonzero(labels == cls)[0] for cls in CLASSES}
    pick = np.array([first[c] for c in labels])
    collapsed = collapse_ratios(real, class_statistics(images[pick], masks[pick], labels, CLASSES, LESION))
    assert collapsed["diversity_ratio"] == pytest.approx(0.0, abs=1e-9)
    assert collapsed["lesion_spread_ratio"] == pytest.approx(0.0, abs=1e-9)

    # varied images, but every lesion of one class in the same place: only the lesion spread sees it
    same_place = masks.copy()
    malignant = np.flatnonzero(labels == "malignant")
    same_place[malignant] = masks[malignant[0]]
    moved = collapse_ratios(real, class_statistics(images, same_place, labels, CLASSES, LESION))
    assert moved["lesion_spread_ratio"] == pytest.approx(0.0, abs=1e-9)  # the worst lesion class, not the mean
    assert moved["per_class"]["benign"]["lesion_spread_ratio"] == pytest.approx(1.0, abs=0.15)
    assert moved["min_class_diversity_ratio"] == pytest.approx(1.0, abs=0.05)


def test_one_collapsed_class_shows_in_the_worst_class_ratio_not_only_in_the_mean():
    real = class_statistics(*draw(60, seed=0), CLASSES, LESION)
    images, masks, labels = draw(60, seed=1)
    normal = np.flatnonzero(labels == "normal")
    images[normal] = images[normal[0]]
    out = collapse_ratios(real, class_statistics(images, masks, labels, CLASSES, LESION))
    assert out["min_class_diversity_ratio"] == pytest.approx(0.0, abs=1e-9)
    assert out["diversity_ratio"] == pytest.approx(2 / 3, abs=0.05)  # the mean hides two thirds of it
    assert out["max_class_diversity_ratio"] == pytest.approx(1.0, abs=0.2)
    assert out["per_class"]["normal"]["diversity_ratio"] == pytest.approx(0.0, abs=1e-9)
    assert "lesion_spread_ratio" not in out["per_class"]["normal"]


def test_missing_lesions_are_no_spread_and_undefined_classes_are_left_out():
    images, masks, labels = draw(4, seed=0)
    real = class_statistics(images, masks, labels, CLASSES, LESION)
    empty = masks.copy()
    empty[labels == "benign"] = 0  # no synthetic benign lesion at all: no variety of positions (and label mismatch)
    empty[np.flatnonzero(labels == "malignant")[1:]] = 0  # a single malignant one: none either
    synth = class_statistics(images, empty, labels, CLASSES, LESION)
    assert synth["benign"]["lesion_spread"] == synth["malignant"]["lesion_spread"] == 0.0
    assert (synth["benign"]["n_lesions"], synth["malignant"]["n_lesions"]) == (0, 1)
    assert collapse_ratios(real, synth)["lesion_spread_ratio"] == 0.0
    no_reference = class_statistics(images, empty, labels, CLASSES, LESION)  # real side without spread: left out
    assert np.isnan(collapse_ratios(no_reference, synth)["lesion_spread_ratio"])
    one = collapse_ratios(real, class_statistics(images[:1], masks[:1], labels[:1], CLASSES, LESION))
    assert np.isnan(one["diversity_ratio"]) and np.isnan(one["min_class_diversity_ratio"])
    assert np.isnan(one["lesion_spread_ratio"])


def test_consistency_report_carries_the_collapse_figures():
    images, masks, labels = draw(20, seed=0)
    real = pair_statistics(images, masks, labels, CLASSES, LESION)
    assert {"contrast", "spread", "lesion_spread", "n_lesions"} <= set(real["benign"])
    assert "lesion_spread" not in real["normal"]
    report = consistency_report(real, real)
    assert report["diversity_ratio"] == report["min_class_diversity_ratio"] == pytest.approx(1.0)
    assert report["lesion_spread_ratio"] == pytest.approx(1.0)


def test_a_class_degenerated_into_noise_shows_in_the_most_spread_class_ratio():
    real = class_statistics(*draw(60, seed=0), CLASSES, LESION)
    images, masks, labels = draw(60, seed=1)
    benign = labels == "benign"
    images[benign] = np.random.default_rng(3).uniform(-1, 1, images[benign].shape)  # texture instead of anatomy
    out = collapse_ratios(real, class_statistics(images, masks, labels, CLASSES, LESION))
    assert out["max_class_diversity_ratio"] == pytest.approx(out["per_class"]["benign"]["diversity_ratio"])
    assert out["max_class_diversity_ratio"] > 1.5 and out["min_class_diversity_ratio"] > 0.7  # only the max sees it
