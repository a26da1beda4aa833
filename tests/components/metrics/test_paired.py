import numpy as np
import pytest

from components.metrics.fid import fid_from_features
from components.metrics.paired import paired_improvement


def features(n: int, shift: float, seed: int, d: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).normal(shift, 1.0, (n, d))


def test_a_clearly_better_candidate_has_an_interval_above_zero():
    real = features(200, 0.0, 0)
    res = paired_improvement(fid_from_features, real, features(100, 0.6, 1), features(100, 0.0, 2), 200, seed=3)
    assert res["reference"] == pytest.approx(fid_from_features(real, features(100, 0.6, 1)))
    assert res["improvement"] == pytest.approx(res["reference"] - res["candidate"])
    assert 0 < res["ci_low"] < res["improvement"] < res["ci_high"]


def test_two_draws_of_one_model_are_within_noise_and_a_model_against_itself_is_exactly_zero():
    real = features(200, 0.0, 0)
    same = paired_improvement(fid_from_features, real, features(100, 0.2, 1), features(100, 0.2, 2), 200, seed=3)
    assert same["ci_low"] < 0 < same["ci_high"]  # no evidence either way
    fake = features(100, 0.2, 1)
    itself = paired_improvement(fid_from_features, real, fake, fake.copy(), 50, seed=3)
    assert itself["improvement"] == 0 and itself["ci_low"] == itself["ci_high"] == 0  # the pairing cancels all noise


def test_pairing_narrows_the_interval_of_correlated_models():
    """Models whose samples share their latents: the shared noise cancels in the paired difference."""
    real = features(150, 0.0, 0)
    base = features(100, 0.0, 1)
    reference, candidate = base + 0.3, base + 0.1
    paired = paired_improvement(fid_from_features, real, reference, candidate, 200, seed=4)
    shuffled = candidate[np.random.default_rng(5).permutation(len(candidate))]  # pairing broken
    unpaired = paired_improvement(fid_from_features, real, reference, shuffled, 200, seed=4)
    assert paired["improvement"] == pytest.approx(unpaired["improvement"])  # same point estimate
    assert paired["ci_high"] - paired["ci_low"] < unpaired["ci_high"] - unpaired["ci_low"]


def test_mismatched_and_unresampled_inputs():
    real = features(20, 0.0, 0)
    with pytest.raises(ValueError, match="paired features must match"):
        paired_improvement(fid_from_features, real, features(10, 0, 1), features(12, 0, 2), 10, seed=0)
    res = paired_improvement(fid_from_features, real, features(10, 0, 1), features(10, 0, 2), 0, seed=0)
    assert np.isnan(res["ci_low"]) and np.isnan(res["ci_high"]) and np.isfinite(res["improvement"])
