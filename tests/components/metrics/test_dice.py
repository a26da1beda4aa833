import numpy as np
import pytest
import torch

from components.metrics.consistency import consistency_report, mask_contrast, pair_statistics
from components.metrics.dice import (
    SEG_PRIOR,
    DiceScore,
    TrainSet,
    _batches,
    arm_scores,
    arm_train_set,
    build_segmenter,
    dice_bce_loss,
    dice_per_sample,
    false_positives_per_sample,
    gain_verdict,
    paired_bootstrap,
    train_segmenter,
)
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


def test_false_positives_are_scored_on_lesion_free_slices_only():
    target = np.zeros((3, 8, 8), np.uint8)
    target[0, 2:4, 2:4] = 1  # a lesion: scored by Dice, not here
    pred = np.zeros_like(target)
    pred[0, 0, 0] = 1
    pred[1, 5:7, 5:7] = 1  # 4 of 64 pixels predicted on a lesion-free slice
    flagged, area = false_positives_per_sample(pred, target)
    np.testing.assert_array_equal(flagged, [np.nan, 1.0, 0.0])
    np.testing.assert_allclose(area, [np.nan, 4 / 64, 0.0])
    assert np.isnan(dice_per_sample(pred, target)[1:]).all()  # the empty-mask convention: no Dice there


def test_loss_is_monai_dice_ce_unweighted_and_weights_count_as_copies():
    from monai.losses import DiceCELoss

    rng = np.random.default_rng(0)
    logits = torch.as_tensor(rng.normal(size=(3, 1, 8, 8)), dtype=torch.float32)
    target = torch.as_tensor(rng.random((3, 1, 8, 8)) > 0.8, dtype=torch.float32)
    target[2] = 0  # a lesion-free sample
    monai = DiceCELoss(sigmoid=True, batch=True)(logits, target)
    torch.testing.assert_close(dice_bce_loss(logits, target), monai)
    torch.testing.assert_close(dice_bce_loss(logits, target, torch.ones(3)), monai)
    # weight 2 on the first sample == the first sample twice in the batch
    twice = dice_bce_loss(logits[[0, 0, 1, 2]], target[[0, 0, 1, 2]])
    torch.testing.assert_close(dice_bce_loss(logits, target, torch.tensor([2.0, 1.0, 1.0])), twice)
    # weight 0 drops a sample
    torch.testing.assert_close(
        dice_bce_loss(logits, target, torch.tensor([1.0, 0.0, 1.0])), dice_bce_loss(logits[[0, 2]], target[[0, 2]])
    )


def test_arms_draw_or_weight_by_class_and_add_synthetic_pairs():
    images, masks, labels = blobs(9)
    real = (images, masks, labels)
    synth = (images[:4] + 1, masks[:4], labels[:4])
    weights = {"normal": 0.5, "benign": 1.0, "malignant": 3.0}
    assert arm_train_set("real", real, None, weights).draw_weights is None
    sampler = arm_train_set("weighted-sampler", real, None, weights)
    np.testing.assert_array_equal(sampler.draw_weights, [weights[c] for c in labels])
    assert sampler.loss_weights is None
    loss = arm_train_set("class-weighted-loss", real, None, weights)
    np.testing.assert_array_equal(loss.loss_weights, [weights[c] for c in labels])
    assert loss.draw_weights is None
    mixed = arm_train_set("real+synthetic", real, synth, weights)
    assert len(mixed.images) == 13 and (mixed.images[9:] == synth[0]).all()
    assert arm_train_set("synthetic", real, synth, weights).images is synth[0]
    with pytest.raises(ValueError, match="needs synthetic pairs"):
        arm_train_set("synthetic", real, None, weights)
    with pytest.raises(ValueError, match="no class weight for malignant"):
        arm_train_set("weighted-sampler", real, None, {"normal": 1.0, "benign": 1.0})
    with pytest.raises(ValueError, match="unknown segmenter arm"):
        arm_train_set("real+weights", real, None, weights)


def test_weighted_draws_follow_the_weights_and_uniform_passes_cover_every_sample():
    rng = np.random.default_rng(0)
    data = TrainSet(np.zeros((3, 4, 4)), np.zeros((3, 4, 4)), draw_weights=np.array([0.0, 1.0, 3.0]))
    batches = _batches(data, 8, rng)
    counts = np.bincount(np.concatenate([next(batches) for _ in range(500)]), minlength=3)
    assert counts[0] == 0 and counts[2] / counts[1] == pytest.approx(3.0, rel=0.1)
    uniform = _batches(TrainSet(np.zeros((5, 4, 4)), np.zeros((5, 4, 4))), 5, rng)
    assert sorted(next(uniform)) == [0, 1, 2, 3, 4]
    small = _batches(TrainSet(np.zeros((3, 4, 4)), np.zeros((3, 4, 4))), 8, rng)
    assert len(next(small)) == 8  # the set is smaller than a batch


def test_training_is_deterministic_uses_the_loss_weights_and_pools_seeds():
    images, masks, labels = blobs(12, seed=1)
    test_images, test_masks, _ = blobs(6, seed=2)
    plain = TrainSet(images, masks)
    prior = torch.sigmoid(build_segmenter().final_conv.bias)  # starts near the lesion pixels' share, not at 0.5
    torch.testing.assert_close(prior, torch.tensor([SEG_PRIOR]))
    net, losses = train_segmenter(plain, steps=3, batch_size=4, seed=0)
    assert len(losses) == 3 and not net.training
    _, again = train_segmenter(plain, steps=3, batch_size=4, seed=0)
    assert again == losses
    weighted = TrainSet(images, masks, loss_weights=np.where(labels == "malignant", 5.0, 1.0))
    assert train_segmenter(weighted, steps=3, batch_size=4, seed=0)[1] != losses  # the weights reach the loss
    with pytest.raises(ValueError, match="empty set"):
        train_segmenter(TrainSet(images[:0], masks[:0]), steps=3, batch_size=4, seed=0)

    result = arm_scores(plain, test_images, test_masks, seeds=[0, 1], steps=2, batch_size=4)
    assert len(result["dice_per_seed"]) == 2 and len(result["final_loss"]) == 2
    lesion = test_masks.reshape(6, -1).any(axis=1)
    assert np.isnan(result["dice"][~lesion]).all() and np.isfinite(result["dice"][lesion]).all()
    np.testing.assert_allclose(result["dice"], np.mean(result["dice_per_seed"], axis=0))  # per slice, over seeds
    assert np.isnan(result["fp"][lesion]).all() and set(result["fp"][~lesion]) <= {0.0, 0.5, 1.0}


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


def test_paired_patient_bootstrap_of_the_gain():
    rng = np.random.default_rng(0)
    labels = np.array(["benign"] * 20 + ["malignant"] * 10 + ["normal"] * 5)
    patients = np.array([f"p{i % 5}" for i in range(20)] + [f"q{i % 3}" for i in range(10)] + ["n"] * 5)
    real = np.concatenate([rng.uniform(0.3, 0.7, 30), np.full(5, np.nan)])
    scores = {"real": real, "real+synthetic": real + 0.1}
    ci = paired_bootstrap(scores, labels, patients, ["benign", "malignant"], resamples=50, seed=0, reference="real")
    assert set(ci["gain"]) == {"real+synthetic"}
    for scope in (None, "benign", "malignant"):  # paired: the same shift in every resample
        assert ci["gain"]["real+synthetic"][scope] == pytest.approx((0.1, 0.1))
    low, high = ci["value"]["real"]["benign"]
    assert low < real[:20].mean() < high
    same = paired_bootstrap({"a": real, "b": real}, labels, patients, ["benign"], resamples=50, seed=0, reference="a")
    assert same["gain"]["b"]["benign"] == (0.0, 0.0)
    empty = paired_bootstrap({"a": real[30:]}, labels[30:], patients[30:], ["benign"], resamples=50, seed=0)
    assert np.isnan(empty["value"]["a"][None]).all() and empty["gain"] == {}


def test_patient_bootstrap_is_wider_than_the_slice_bootstrap_and_needs_two_patients():
    # two patients of 20 identical slices each: 20 more slices of a patient say nothing new about other patients
    labels = np.array(["benign"] * 40)
    patients = np.array(["a"] * 20 + ["b"] * 20)
    scores = {"real": np.array([0.2] * 20 + [0.8] * 20)}
    args = (labels, ["benign"], 200, 0)
    by_patient = paired_bootstrap(scores, labels, patients, *args[1:])["value"]["real"]["benign"]
    by_slice = paired_bootstrap(scores, labels, np.arange(40), *args[1:])["value"]["real"]["benign"]
    assert by_patient[1] - by_patient[0] > 2 * (by_slice[1] - by_slice[0])
    assert by_patient[0] == pytest.approx(0.2, abs=0.05) and by_patient[1] == pytest.approx(0.8, abs=0.05)
    # one patient: a resample repeats it, so there is no interval (nor for the mean over classes)
    one = paired_bootstrap(scores, labels, np.array(["a"] * 40), *args[1:])["value"]["real"]
    assert np.isnan(one["benign"]).all() and np.isnan(one[None]).all()


@pytest.mark.parametrize(
    ("gain", "ci", "baseline_ok", "verdict"),
    [
        (0.1, (0.02, 0.2), True, "helped"),
        (-0.1, (-0.2, -0.01), True, "hurt"),
        (0.05, (-0.05, 0.15), True, "no detectable difference"),
        (0.05, (float("nan"), float("nan")), True, "no interval"),
        (0.3, (0.1, 0.5), False, "not informative"),
        (float("nan"), (0.1, 0.5), True, "not informative"),
    ],
)
def test_gain_verdict(gain, ci, baseline_ok, verdict):
    assert gain_verdict(gain, ci, baseline_ok) == verdict
