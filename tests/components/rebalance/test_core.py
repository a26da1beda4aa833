import pandas as pd
import pytest

from components.config import resolve
from components.errors import ConfigError
from components.rebalance.core import class_weights, load_split, load_split_check, rebalance, split_patients


def _cohort(n_normal=10, n_benign=6, n_malignant=3, slices=4):
    labels, patients = [], []
    for kind, n in (("normal", n_normal), ("benign", n_benign), ("malignant", n_malignant)):
        for p in range(n):
            for s in range(slices):
                patients.append(f"{kind}-{p}")
                # lesion patients also have normal slices, as real series do
                labels.append(kind if s < slices // 2 or kind == "normal" else "normal")
    return labels, patients


def test_no_patient_in_two_splits_and_every_class_reaches_every_split(synthetic_archive, tmp_path):
    labels, patients = _cohort()
    summary = rebalance(synthetic_archive(labels, patients), tmp_path / "split", resolve("tiny"))
    table = load_split(tmp_path / "split")
    assert table.groupby("patient")["split"].nunique().max() == 1
    for split in ("train", "val", "test"):
        for cls in ("normal", "benign", "malignant"):
            assert summary["counts"][split][cls] > 0, (split, cls)
    assert summary["missing"] == {"train": [], "val": [], "test": []}


def test_split_is_deterministic_for_a_seed_and_changes_with_it(synthetic_archive, tmp_path):
    labels, patients = _cohort()
    manifest = pd.DataFrame({"label": labels, "patient": patients})
    classes = ["normal", "benign", "malignant"]
    a = split_patients(manifest, classes, 0.2, 0.2, seed=0)
    assert a == split_patients(manifest, classes, 0.2, 0.2, seed=0)
    assert any(split_patients(manifest, classes, 0.2, 0.2, seed=s) != a for s in range(1, 5))


def test_weighted_sampler_balances_classes(synthetic_archive, tmp_path):
    labels, patients = _cohort(n_normal=20, n_benign=4, n_malignant=3)
    cfg = resolve("tiny", ["split.sampler_power=1.0"])
    summary = rebalance(synthetic_archive(labels, patients), tmp_path / "split", cfg)
    shares = summary["sampler_class_share"]
    assert shares == pytest.approx({c: 1 / 3 for c in shares}, abs=1e-9)
    table = load_split(tmp_path / "split")
    assert (table.loc[table["split"] != "train", "weight"] == 0).all()
    assert (table.loc[table["split"] == "train", "weight"] > 0).all()


def test_each_strategy_sets_the_sampler_weights_and_the_loss_weights_it_uses(synthetic_archive, tmp_path):
    labels, patients = _cohort(n_normal=20, n_benign=4, n_malignant=3)
    archive = synthetic_archive(labels, patients)
    out = {}
    for strategy in ("none", "weighted-sampler", "class-weighted-loss", "gan-topup"):
        cfg = resolve("tiny", [f"split.strategy={strategy}", "split.sampler_power=1.0"])
        summary = rebalance(archive, tmp_path / strategy, cfg)
        out[strategy] = (summary, load_split(tmp_path / strategy))
    uniform = {c: pytest.approx(1.0) for c in ("normal", "benign", "malignant")}
    for strategy in ("none", "class-weighted-loss"):  # uniform sampling
        train = out[strategy][1].query("split == 'train'")
        assert train.groupby("label")["weight"].first().to_dict() == uniform
    # gan-topup's GAN learns from weighted real batches, as the weighted sampler's
    shares = out["gan-topup"][0]["sampler_class_share"]
    assert shares == pytest.approx(out["weighted-sampler"][0]["sampler_class_share"])
    assert shares == pytest.approx({c: 1 / 3 for c in uniform}, abs=1e-9)
    # only class-weighted-loss hands weights to the losses (the trainer reads them from distribution.json)
    loss_weights = out["class-weighted-loss"][0]["class_loss_weights"]
    assert loss_weights["malignant"] > loss_weights["benign"] > loss_weights["normal"]
    assert all(not out[s][0]["class_loss_weights"] for s in ("none", "weighted-sampler", "gan-topup"))


@pytest.mark.parametrize(("power", "expected_ratio"), [(0.0, 1.0), (1.0, 4.0), (0.5, 2.0)])
def test_class_weights_follow_count_power(power, expected_ratio):
    labels = pd.Series(["a"] * 16 + ["b"] * 4)
    w = class_weights(labels, ["a", "b"], power)
    assert w["b"] / w["a"] == pytest.approx(expected_ratio)
    assert (w["a"] * 16 + w["b"] * 4) / 20 == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("split.strategy=magic", "unknown split.strategy"),
        ("split.test_fraction=0.9", "sum below 1"),
    ],
)
def test_bad_split_config(synthetic_archive, tmp_path, override, message):
    labels, patients = _cohort()
    with pytest.raises(ConfigError, match=message):
        rebalance(synthetic_archive(labels, patients), tmp_path / "split", resolve("tiny", [override]))


def test_split_check_results_are_kept_for_the_report_and_dropped_without_the_check(synthetic_archive, tmp_path):
    labels, patients = _cohort()
    archive = synthetic_archive(labels, patients)
    rebalance(archive, tmp_path / "split", resolve("tiny"))
    check = load_split_check(tmp_path / "split")
    assert check["success"] and "data_docs" not in check
    assert {(r["batch"], r["column"]) for r in check["results"]} >= {("patients", "leak"), ("split", "split")}
    rebalance(archive, tmp_path / "split", resolve("tiny"), check=False)
    assert load_split_check(tmp_path / "split") is None  # no stale results vouching for an unchecked split
