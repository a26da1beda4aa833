"""The snapshot selection says whether its winner beats the final model beyond noise (issue 14)."""

from pathlib import Path

import numpy as np

from components.evaluate.curve import Candidates
from components.evaluate.uncertainty import BEYOND_NOISE, WITHIN_NOISE, selection_gap


def candidates(*feats: np.ndarray) -> Candidates:
    steps = [200 * (i + 1) for i in range(len(feats))]
    return Candidates(steps=steps, paths=[Path(f"g{s}.pt") for s in steps], feats=list(feats), n_samples=len(feats[0]))


def test_a_winner_by_sampling_noise_is_within_noise():
    rng = np.random.default_rng(0)
    real = rng.normal(0, 1, (60, 8))
    groups = np.repeat([f"p{i}" for i in range(12)], 5)
    final = rng.normal(0, 1, (64, 8))
    lucky = final + rng.normal(0, 0.05, final.shape)  # the same model, up to a little noise
    gap = selection_gap(candidates(lucky, final), 200, real, groups, 100, seed=1)
    assert gap["compared"] and gap["verdict"] == WITHIN_NOISE
    assert gap["ci"][0] < 0 < gap["ci"][1] and gap["n_patients"] == 12 and gap["n_real"] == 60


def test_a_clearly_better_snapshot_beats_the_final_model():
    rng = np.random.default_rng(2)
    real = rng.normal(0, 1, (60, 8))
    groups = np.repeat([f"p{i}" for i in range(12)], 5)
    good = rng.normal(0, 1, (64, 8))
    final = good + 1.5  # the final model drifted away from the real distribution
    gap = selection_gap(candidates(good, final), 200, real, groups, 100, seed=1)
    assert gap["verdict"] == BEYOND_NOISE and gap["gap"] > 0 and gap["ci"][0] > 0


def test_nothing_to_test_when_the_final_model_was_kept_or_too_few_patients():
    rng = np.random.default_rng(3)
    real, feats = rng.normal(0, 1, (20, 4)), rng.normal(0, 1, (16, 4))
    kept = selection_gap(candidates(feats, feats), 400, real, None, 50, seed=0)
    assert kept == {"compared": False, "reason": "the final model was selected: no gap to test"}
    one_patient = selection_gap(candidates(feats, feats + 1), 200, real, np.array(["p"] * 20), 50, seed=0)
    assert one_patient["verdict"] == "no interval"  # one patient: no honest interval
