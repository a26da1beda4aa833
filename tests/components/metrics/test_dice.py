import numpy as np
import pytest

from components.metrics.consistency import consistency_report, mask_contrast, pair_statistics
from components.metrics.dice import DiceScore, dice_per_sample, paired_dice_ci, train_and_score
from components.metrics.memorization import memorization_audit


def blobs(n: int, size: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.array(["normal", "benign", "malignant"])[np.arange(n) % 3]
    images = rng.normal(-0.5, 0.05, (n, size, size)).astype(np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    for i in np.flatnonzero(labels != "normal"):
        cy, cx = rng.integers(8, size - 8, 2)
        masks[i] = (yy - cy) ** 2 + (xx - cx) ** 2 < 16
        images[i][masks[i] > 0] += 0.8
    return images, masks, labels


def test_perfect_predictions_score_one_and_empty_truth_is_skipped():
    _, masks, labels = blobs(9)
    scores = dice_per_sample(masks, masks)
    assert np.isnan(scores[labels == "normal"]).all()
    np.testing.assert_allclose(scores[labels != "normal"], 1.0)
    metric = DiceScore(["benign", "malignant"])
    metric.update(masks[:4], masks[:4], labels[:4])
    metric.update(masks[4:], masks[4:], labels[4:])
    result = metric.aggregate()
    assert result["dice"] == pytest.approx(1.0)
    assert result["per_class"] == {"benign": pytest.approx(1.0), "malignant": pytest.approx(1.0)}
    assert result["n_scored"] == {"benign": 3, "malignant": 3}


def test_partial_overlap_and_missed_lesion():
    target = np.zeros((2, 8, 8), np.uint8)
    target[:, 2:6, 2:6] = 1  # 16 px
    pred = np.zeros_like(target)
    pred[0, 2:6, 2:4] = 1  # 8 px inside: 2*8 / (8+16)
    scores = dice_per_sample(pred, target)
    np.testing.assert_allclose(scores, [16 / 24, 0.0])


def test_one_epoch_training_runs_and_is_deterministic(tiny_cfg):
    images, masks, labels = blobs(12, seed=1)
    test_images, test_masks, test_labels = blobs(6, seed=2)
    args = (images, masks, test_images, test_masks, test_labels, ["benign", "malignant"], tiny_cfg)
    first = train_and_score(*args, seed=0)
    assert first["steps"] == 2  # 1 epoch of 12 samples in batches of 8
    assert 0.0 <= first["dice"] <= 1.0
    assert set(first["per_class"]) == {"benign", "malignant"}
    again = train_and_score(*args, seed=0)
    assert again["dice"] == first["dice"] and again["final_loss"] == first["final_loss"]
    assert train_and_score(*args, seed=0, steps=3)["steps"] == 3


def test_mask_image_consistency():
    images, masks, labels = blobs(9)
    contrast = mask_contrast(images, masks)
    assert np.isnan(contrast[labels == "normal"]).all()
    assert (contrast[labels != "normal"] > 0.5).all()
    classes, lesion = ["normal", "benign", "malignant"], ["benign", "malignant"]
    real = pair_statistics(images, masks, labels, classes, lesion)
    shuffled = pair_statistics(images, np.roll(masks, 3, axis=0), labels, classes, lesion)  # masks off lesions
    assert real["benign"]["label_mismatch"] == 0.0 and real["normal"]["label_mismatch"] == 0.0
    report = consistency_report(real, shuffled)
    assert report["contrast_gap"] > 0.3
    assert consistency_report(real, real)["contrast_gap"] == 0.0


def test_diversity_ratio_sees_a_class_collapsed_onto_one_image():
    images, masks, labels = blobs(9)
    classes, lesion = ["normal", "benign", "malignant"], ["benign", "malignant"]
    real = pair_statistics(images, masks, labels, classes, lesion)
    assert all(real[c]["spread"] > 0.03 for c in classes)  # 3 images a class: noise of sd 0.05, lesions
    first = {c: int(np.flatnonzero(labels == c)[0]) for c in classes}
    collapsed = np.stack([images[first[c]] for c in labels])  # every sample of a class the same image
    synth = pair_statistics(collapsed, masks, labels, classes, lesion)
    assert all(synth[c]["spread"] == 0.0 for c in classes)
    assert consistency_report(real, synth)["diversity_ratio"] == 0.0
    assert consistency_report(real, real)["diversity_ratio"] == pytest.approx(1.0)
    assert np.isnan(pair_statistics(images[:1], masks[:1], labels[:1], classes, lesion)[labels[0]]["spread"])


def test_memorization_flags_near_copies():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(50, 32))
    fake = np.concatenate([real[:3] + rng.normal(scale=0.01, size=(3, 32)), rng.normal(size=(7, 32))])
    audit = memorization_audit(fake, real, threshold=0.97, top_k=4)
    assert audit["n_flagged"] == 3 and audit["copy_fraction"] == pytest.approx(0.3)
    assert [p["real"] for p in audit["top"][:3]] == sorted([0, 1, 2], key=lambda i: -audit["similarity"][i])
    assert audit["top"][0]["flagged"] and not audit["top"][3]["flagged"]
    assert audit["real_baseline_p95"] < 0.97


def test_paired_dice_ci_of_the_gain():
    rng = np.random.default_rng(0)
    labels = np.array(["benign"] * 20 + ["malignant"] * 10 + ["normal"] * 5)
    real = np.concatenate([rng.uniform(0.3, 0.7, 30), np.full(5, np.nan)])
    better = real + 0.1
    ci = paired_dice_ci(real, better, labels, ["benign", "malignant"], resamples=50, seed=0)
    low, high = ci["dice_gain"][None]
    assert low == pytest.approx(0.1) and high == pytest.approx(0.1)  # paired: the same shift in every resample
    low, high = ci["dice_real"]["benign"]
    assert low < real[:20].mean() < high
    same = paired_dice_ci(real, real, labels, ["benign", "malignant"], resamples=50, seed=0)
    assert same["dice_gain"]["malignant"] == (0.0, 0.0)
    empty = paired_dice_ci(real[30:], real[30:], labels[30:], ["benign"], resamples=50, seed=0)
    assert np.isnan(empty["dice_gain"][None]).all()
