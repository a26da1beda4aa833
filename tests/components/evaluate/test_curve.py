"""FID over training: one point per EMA snapshot, scored like the headline FID on a fixed subset of its samples."""

import shutil

import numpy as np
import pytest

from components.errors import ConfigError
from components.evaluate.curve import candidate_features, curve_subset, fid_curve
from components.gan.sampling import SNAPSHOT_DIR, generate, list_snapshots, load_generator
from components.metrics.features import extract_features, get_extractor
from components.metrics.fid import fid_from_features


def test_curve_subset_is_evenly_spaced_and_keeps_the_class_mix():
    labels = np.repeat([0, 1, 2], [60, 30, 10])  # the synthetic label plan is sorted by class
    pick = curve_subset(len(labels), 20)
    assert len(pick) == 20 and np.bincount(labels[pick]).tolist() == [12, 6, 2]
    assert curve_subset(10, 0).tolist() == list(range(10)) and curve_subset(10, 50).tolist() == list(range(10))
    with pytest.raises(ConfigError, match="fid_curve_samples"):
        curve_subset(10, 1)


@pytest.fixture
def scored(archive_dir, model_dir):
    """The evaluate stage's inputs to the curve: real features, the headline FID's labels, seed and features."""
    from components.archive import open_archive

    archive = open_archive(archive_dir)
    extractor = get_extractor("pixels")
    real = extract_features(extractor, np.asarray(archive.images[:40], dtype=np.float32))
    labels = np.repeat([0, 1, 2], [6, 5, 5])
    final, meta = load_generator(model_dir)
    fake = extract_features(extractor, generate(final, labels, seed=7)[0])
    return {"fake_labels": labels, "seed": 7, "extractor": extractor}, real, fake, meta


def curve(model_dir, step, scored, reuse=True):
    inputs, real, fake, _ = scored
    return fid_curve(candidate_features(model_dir, step, wanted=8, final_feats=fake if reuse else None, **inputs), real)


def test_each_snapshot_is_scored_on_the_same_latents_and_the_last_point_is_the_final_model(model_dir, scored):
    inputs, real, _, meta = scored
    points = curve(model_dir, meta["step"], scored)
    assert points["steps"] == [s for s, _ in list_snapshots(model_dir)] == [1, 2, 3, 4, 6]
    assert points["n_samples"] == 8 and points["notes"] == []
    pick = curve_subset(16, 8)
    for step, value in zip(points["steps"], points["fid"], strict=True):  # recomputed from each snapshot file
        generator, _ = load_generator(model_dir / SNAPSHOT_DIR / f"generator_{step:08d}.pt")
        images = generate(generator, inputs["fake_labels"], seed=7)[0][pick]
        expected = fid_from_features(real, extract_features(inputs["extractor"], images))
        assert value == pytest.approx(expected, rel=1e-6, abs=1e-9), step


def test_without_snapshots_there_is_no_curve_and_later_ones_are_ignored(model_dir, scored, tmp_path):
    meta = scored[3]
    bare = tmp_path / "bare"
    shutil.copytree(model_dir, bare, ignore=shutil.ignore_patterns(SNAPSHOT_DIR))
    assert curve(bare, meta["step"], scored)["steps"] == []

    points = curve(model_dir, 3, scored)  # as if the final model were the step-3 one
    assert points["steps"] == [1, 2, 3] and "[4, 6]" in points["notes"][0]


def test_without_the_headline_features_the_final_point_is_generated_from_the_final_model(model_dir, scored):
    meta = scored[3]  # the fixture's fake features are the final model's, on the same labels and seed
    reused = curve(model_dir, meta["step"], scored)
    generated = curve(model_dir, meta["step"], scored, reuse=False)
    assert generated["steps"] == reused["steps"] == [1, 2, 3, 4, 6]
    assert generated["fid"] == pytest.approx(reused["fid"], rel=1e-6, abs=1e-9)


def test_collapse_statistics_come_from_all_of_each_candidates_generated_samples(model_dir, scored):
    """Per candidate, the collapse function sees every sample generated for its FID point (a superset of the FID's
    subset, the same latents; no extra pass), so a rare class is not left a handful."""
    inputs, real, fake, meta = scored
    seen = []

    def collapse(images, masks, labels):
        seen.append((images, masks, labels))
        return {"diversity_ratio": float(len(seen)), "per_class": {"benign": {"diversity_ratio": 0.5}}}

    final = load_generator(model_dir)[0]
    final_images, final_masks = generate(final, inputs["fake_labels"], seed=7)
    candidates = candidate_features(
        model_dir,
        meta["step"],
        wanted=8,
        collapse=collapse,
        final_feats=fake,
        final_samples=(final_images, final_masks),
        **inputs,
    )
    assert candidates.steps == [1, 2, 3, 4, 6] and len(seen) == 5
    for step, (images, masks, labels) in zip(candidates.steps, seen, strict=True):
        assert len(images) == len(masks) == 16 and labels.tolist() == inputs["fake_labels"].tolist()
        path = (
            model_dir / SNAPSHOT_DIR / f"generator_{step:08d}.pt"
            if step != meta["step"]
            else model_dir / "generator.pt"
        )
        expected = generate(load_generator(path)[0], inputs["fake_labels"], seed=7)
        np.testing.assert_array_equal(images, expected[0])
        np.testing.assert_array_equal(masks, expected[1])
    points = fid_curve(candidates, real)
    assert points["diversity_ratio"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert points["lesion_spread_ratio"] == [None] * 5  # not computed: undefined, not 0
    assert points["per_class"] == {"benign": {"diversity_ratio": [0.5] * 5}}
    assert "diversity_ratio" not in curve(model_dir, meta["step"], scored)  # nothing asked, nothing added
