import numpy as np
import pytest
import torch

from components.metrics.trust import class_accuracy, per_class_memorization, predict_classes


def test_class_accuracy_is_each_class_s_share_called_that_class():
    labels = np.array([0, 0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 0, 1, 0, 0])
    acc = class_accuracy(predicted, labels, ["normal", "benign", "malignant", "absent"])
    assert acc["per_class"]["normal"] == pytest.approx(0.75)
    assert acc["per_class"]["benign"] == pytest.approx(0.5) and acc["per_class"]["malignant"] == 0.0
    assert np.isnan(acc["per_class"]["absent"]) and acc["n"]["absent"] == 0
    assert acc["accuracy"] == pytest.approx((0.75 + 0.5 + 0.0) / 3)


class _Fixed(torch.nn.Module):
    """Predicts class 1 for bright images, 0 for dark ones (the medical net's (feats, logits, mask) outputs)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        bright = x.mean(dim=(1, 2, 3))
        return None, torch.stack([-bright, bright], dim=1) * self.w, None


def test_predict_classes_batches_without_changing_the_answer():
    images = np.concatenate([np.full((5, 8, 8), 0.5), np.full((4, 8, 8), -0.5)]).astype(np.float32)
    assert predict_classes(_Fixed(), images, batch_size=2).tolist() == [1] * 5 + [0] * 4


def test_per_class_audit_finds_the_copies_of_the_rare_class_a_pooled_audit_dilutes():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(40, 16))
    real_labels = np.array([0] * 36 + [1] * 4)
    fake = rng.normal(size=(40, 16))
    fake_labels = np.array([0] * 36 + [1] * 4)
    fake[36:] = real[36:] + 1e-3 * rng.normal(size=(4, 16))  # every rare-class sample a copy of a real one
    audit = per_class_memorization(fake, fake_labels, real, real_labels, ["common", "rare"], threshold=0.97)
    assert audit["rare"]["copy_fraction"] == 1.0 and audit["rare"]["n_flagged"] == 4
    assert audit["common"]["copy_fraction"] == 0.0
    assert audit["rare"]["n_real"] == 4 and audit["common"]["n_synthetic"] == 36
    # a class with fewer than 2 real samples has no baseline: left out
    assert per_class_memorization(fake, fake_labels, real[:37], real_labels[:37], ["common", "rare"], 0.97).keys() == {
        "common"
    }


def test_trust_metrics_flatten_accuracy_its_held_out_reference_and_the_per_class_audit():
    from components.metrics.trust import trust_metrics

    bright, dark = np.full((3, 8, 8), 0.5, np.float32), np.full((3, 8, 8), -0.5, np.float32)
    synthetic = (np.concatenate([bright, dark]), np.array([1, 1, 1, 1, 0, 0]))  # one dark sample labelled 1
    held_out = (np.concatenate([bright, dark]), np.array([1, 1, 1, 0, 0, 0]))
    rng = np.random.default_rng(1)
    feats = (rng.normal(size=(6, 4)), synthetic[1], rng.normal(size=(8, 4)), np.array([0, 0, 0, 0, 1, 1, 1, 1]))
    metrics, section = trust_metrics(_Fixed(), synthetic, held_out, feats, ["a", "b"], 0.97)
    assert metrics["class_accuracy.b"] == pytest.approx(0.75) and metrics["class_accuracy.a"] == 1.0
    assert metrics["holdout_class_accuracy"] == 1.0
    assert {"nn_copy_fraction.a", "nn_copy_fraction.b", "nn_similarity_max.b"} <= metrics.keys()
    assert [row["class"] for row in section["per_class"]] == ["a", "b"]
    assert section["per_class"][1]["memorization"]["n_real"] == 4
    no_reference, _ = trust_metrics(_Fixed(), synthetic, None, feats, ["a", "b"], 0.97)
    assert "holdout_class_accuracy" not in no_reference
