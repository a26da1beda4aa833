import numpy as np
import pytest
import scipy.linalg

from components.metrics import METRICS, DistributionMetric, compute_metric
from components.metrics.fid import fid_from_features, fid_metric, frechet_distance, gaussian_stats
from components.metrics.kid import kid_from_features, kid_metric


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, s1 = gaussian_stats(a)
    mu2, s2 = gaussian_stats(b)
    root = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root.real))


# (n_real, n_fake, dim): fewer samples than dims (nuclear-norm path), more (eigendecomposition path), unequal
CASES = [(40, 30, 64), (300, 200, 32), (120, 90, 256)]


@pytest.mark.parametrize(("n1", "n2", "d"), CASES)
def test_fid_matches_scipy_sqrtm(n1, n2, d):
    rng = np.random.default_rng(d)
    a = rng.normal(size=(n1, d))
    b = rng.normal(size=(n2, d)) @ rng.normal(scale=0.3, size=(d, d)) + 0.2
    expected = scipy_fid(a, b)
    assert fid_from_features(a, b) == pytest.approx(expected, rel=1e-5)
    assert frechet_distance(*gaussian_stats(a), *gaussian_stats(b)) == pytest.approx(expected, rel=1e-5)


def test_fid_of_a_set_with_itself_is_zero():
    a = np.random.default_rng(0).normal(size=(50, 16))
    assert abs(fid_from_features(a, a)) < 1e-8
    assert abs(frechet_distance(*gaussian_stats(a), *gaussian_stats(a))) < 1e-8


def test_fid_ci_brackets_estimate_and_is_seeded():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(80, 8)), rng.normal(size=(60, 8)) + 0.5
    res = fid_metric(a, b, resamples=30, seed=3)
    assert res["ci_low"] <= res["value"] <= res["ci_high"]
    assert res == fid_metric(a, b, resamples=30, seed=3)
    assert np.isnan(fid_metric(a, b)["ci_low"])  # no resamples: no interval


def test_kid_unbiased_near_zero_for_same_distribution_and_positive_when_shifted():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(300, 32)), rng.normal(size=(300, 32))
    same = kid_metric(a, b, resamples=40, seed=0, kid_subset_size=100, kid_subsets=20)
    shifted = kid_metric(a, b + 0.5, resamples=40, seed=0, kid_subset_size=100, kid_subsets=20)
    assert abs(same["value"]) < 0.02
    assert same["ci_low"] <= 0.0 <= same["ci_high"]
    assert shifted["value"] > 0.2
    assert shifted["ci_low"] > 0.1


def test_too_few_samples_give_nan():
    a = np.zeros((1, 4))
    assert np.isnan(fid_from_features(a, np.ones((5, 4))))
    assert np.isnan(kid_from_features(a, np.ones((5, 4))))


def test_registry_and_stateful_wrapper_agree():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(40, 8)), rng.normal(size=(30, 8)) + 1.0
    options = {"bootstrap": 10, "kid_subset_size": 20, "kid_subsets": 5}
    assert set(METRICS) >= {"fid", "kid"}
    for name in METRICS:
        metric = DistributionMetric(name, options, seed=7)
        metric.update(real=a[:20], fake=b[:10])
        metric.update(real=a[20:], fake=b[10:])
        assert metric.aggregate() == compute_metric(name, a, b, options, seed=7)
        metric.reset()
        with pytest.raises(ValueError):
            metric.aggregate()
