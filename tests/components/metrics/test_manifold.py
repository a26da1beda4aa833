import numpy as np
import pytest

from components.metrics import METRICS, compute_metric, manifold
from components.metrics.manifold import NAMES, manifold_metrics


def values(real, fake, k=5, resamples=0, seed=0):
    return {n: v["value"] for n, v in manifold_metrics(real, fake, k, resamples, seed).items()}


def test_hand_computed_example():
    # 1-D, k=1: every real ball has radius 1; the fakes' balls radius 9.5 (their mutual distance).
    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    fake = np.array([[0.5], [10.0]])
    got = values(real, fake, k=1)
    assert got["precision"] == 0.5  # 0.5 lies in the balls of 0 and 1; 10 in none
    assert got["recall"] == 1.0  # every real point is within 9.5 of the fake at 0.5
    assert got["density"] == 1.0  # (2 balls + 0 balls) / (k=1 * 2 fakes)
    assert got["coverage"] == 0.5  # reals 0 and 1 have a fake inside their ball, 2 and 3 do not


def test_same_distribution_scores_near_one_and_collapse_loses_recall_and_coverage():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(400, 16))
    same = values(real, rng.normal(size=(400, 16)))
    assert min(same["precision"], same["recall"], same["coverage"]) > 0.8
    assert 0.7 < same["density"] < 1.3
    # A collapsed generator: every sample near one real point. Faithful (precision stays high), not diverse.
    collapsed = values(real, real[:1] + 0.01 * rng.normal(size=(400, 16)))
    assert collapsed["precision"] > 0.9
    assert collapsed["recall"] < 0.05 and collapsed["coverage"] < 0.05
    # Off the real manifold altogether: nothing is faithful, nothing is covered.
    far = values(real, rng.normal(size=(400, 16)) + 20.0)
    assert far["precision"] == 0 and far["coverage"] == 0 and far["density"] == 0


def test_bootstrap_interval_brackets_the_estimate_and_survives_repeated_rows():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(60, 8)), rng.normal(size=(50, 8)) + 0.5
    for name, res in manifold_metrics(real, fake, k=3, resamples=30, seed=2).items():
        assert np.isfinite(res["ci_low"]) and np.isfinite(res["ci_high"]), name
        assert res["ci_low"] <= res["value"] <= res["ci_high"], name
    # A resample repeats rows; the k-NN balls are built on its distinct rows, so a repeat does not shrink them to 0.
    d_rr = manifold._sq_distances(real, real)
    d_ff = manifold._sq_distances(fake, fake)
    d_rf = manifold._sq_distances(real, fake)
    doubled = manifold._estimate(d_rr, d_ff, d_rf, np.repeat(np.arange(60), 2), np.repeat(np.arange(50), 2), 3)
    assert doubled == manifold._estimate(d_rr, d_ff, d_rf, np.arange(60), np.arange(50), 3)


def test_too_few_distinct_rows_give_nan_and_bad_k_is_refused():
    rng = np.random.default_rng(2)
    got = values(rng.normal(size=(5, 4)), rng.normal(size=(20, 4)), k=5)
    assert all(np.isnan(v) for v in got.values())
    with pytest.raises(ValueError, match="manifold_k"):
        manifold_metrics(np.zeros((10, 2)), np.zeros((10, 2)), k=0)


def test_large_sets_are_subsampled(monkeypatch):
    monkeypatch.setattr(manifold, "MAX_SAMPLES", 50)
    rng = np.random.default_rng(3)
    got = values(rng.normal(size=(300, 4)), rng.normal(size=(200, 4)), k=3)
    assert all(0 < v for v in got.values())


def test_registered_under_their_names_and_k_comes_from_the_eval_options():
    rng = np.random.default_rng(4)
    real, fake = rng.normal(size=(40, 4)), rng.normal(size=(40, 4))
    assert set(NAMES) <= set(METRICS)
    for name in NAMES:
        res = compute_metric(name, real, fake, {"bootstrap": 0, "manifold_k": 2}, seed=0)
        assert res["value"] == manifold_metrics(real, fake, 2)[name]["value"]
        res["value"] = -1.0  # callers get their own dict: the shared result is not changed
        assert compute_metric(name, real, fake, {"bootstrap": 0, "manifold_k": 2}, seed=0)["value"] != -1.0
    direct = manifold_metrics(real, fake, 2)
    direct["coverage"]["value"] = -1.0
    assert manifold_metrics(real, fake, 2)["coverage"]["value"] != -1.0
