"""Intervals resample patients, not slices: slices of one patient are correlated (issue 14)."""

import numpy as np
import pytest

from components.metrics import METRICS, compute_metric
from components.metrics.bootstrap import bootstrap_ci, n_groups, row_sampler


def slices_of_patients(n_patients: int, per_patient: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features where each patient's slices sit close to a patient mean: most of the variance is between patients."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (n_patients, dim))
    feats = np.repeat(centres, per_patient, axis=0) + rng.normal(0, 0.1, (n_patients * per_patient, dim))
    return feats, np.repeat([f"p{i}" for i in range(n_patients)], per_patient)


def test_row_sampler_draws_whole_patients():
    groups = np.array(["a", "a", "a", "b", "c", "c"])
    draw = row_sampler(6, groups)
    rng = np.random.default_rng(0)
    for _ in range(20):
        rows = draw(rng)
        drawn = groups[rows]
        for g in set(drawn):  # a patient comes with all its slices, as often as it was drawn
            assert (drawn == g).sum() % (groups == g).sum() == 0
    assert n_groups(groups, 6) == 3 and n_groups(None, 6) == 6
    plain = row_sampler(6)(np.random.default_rng(1))
    assert len(plain) == 6 and plain.max() < 6
    with pytest.raises(ValueError, match="3 labels for 6 rows"):
        row_sampler(6, groups[:3])


def test_cluster_intervals_are_wider_when_slices_of_a_patient_are_alike():
    real, patients = slices_of_patients(8, 10, 4, seed=1)
    fake, _ = slices_of_patients(80, 1, 4, seed=2)
    options = {"bootstrap": 200, "kid_subset_size": 40, "kid_subsets": 5, "manifold_k": 3}
    for name in ("fid", "kid"):
        by_slice = compute_metric(name, real, fake, options, seed=3)
        by_patient = compute_metric(name, real, fake, {**options, "real_groups": patients}, seed=3)
        assert by_patient["value"] == pytest.approx(by_slice["value"])  # the estimate does not change
        width = by_patient["ci_high"] - by_patient["ci_low"], by_slice["ci_high"] - by_slice["ci_low"]
        assert width[0] > width[1], (name, width)  # 8 independent patients, not 80 independent slices


def test_coverage_interval_counts_patients():
    """Half the patients are reached by the synthetic samples: coverage 0.5, and only 8 patients say so."""
    real, patients = slices_of_patients(8, 10, 4, seed=1)
    rng = np.random.default_rng(6)
    fake = np.repeat(real[::10][:4], 10, axis=0) + rng.normal(0, 0.1, (40, 4))  # near the first 4 patients only
    options = {"bootstrap": 200, "manifold_k": 3}
    by_slice = compute_metric("coverage", real, fake, options, seed=3)
    by_patient = compute_metric("coverage", real, fake, {**options, "real_groups": patients}, seed=3)
    assert by_patient["value"] == pytest.approx(by_slice["value"]) and 0.2 < by_slice["value"] < 0.7
    assert by_patient["ci_high"] - by_patient["ci_low"] > 1.3 * (by_slice["ci_high"] - by_slice["ci_low"])


@pytest.mark.parametrize("name", list(METRICS))
def test_every_metric_takes_patients_and_a_single_patient_gives_no_interval(name):
    real, _ = slices_of_patients(1, 12, 3, seed=4)
    fake, _ = slices_of_patients(12, 1, 3, seed=5)
    options = {"bootstrap": 20, "kid_subset_size": 8, "kid_subsets": 3, "manifold_k": 3}
    res = compute_metric(name, real, fake, {**options, "real_groups": np.array(["p"] * 12)}, seed=0)
    assert np.isnan(res["ci_low"]) and np.isnan(res["ci_high"])  # one patient: no interval, not a narrow one
    assert np.isfinite(res["value"])


def test_without_patients_the_row_bootstrap_is_unchanged():
    """No groups: the same draws as before the cluster bootstrap existed (results stay reproducible)."""
    stat = lambda i, j: float(i.sum() - j.sum())  # noqa: E731
    rng = np.random.default_rng(9)
    expected = [stat(rng.integers(0, 10, 10), rng.integers(0, 7, 7)) for _ in range(30)]
    from components.metrics.bootstrap import centred_interval

    assert bootstrap_ci(stat, 10, 7, 30, 9, 1.0) == centred_interval(expected, 1.0, 30)
