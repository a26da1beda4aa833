"""Best-snapshot selection: the lowest val FID among the snapshots and the final model is scored and handed on."""

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch

from components.evaluate.core import holdout_metrics
from components.evaluate.curve import Candidates
from components.evaluate.selection import choose, choose_generator, eligible
from components.evaluate.verdict import COLLAPSED
from components.gan.sampling import list_snapshots, snapshot_path

NAN = math.nan


@pytest.mark.parametrize(
    ("fids", "expected"),
    [
        ([5.0, 1.0, 3.0], 1),
        ([3.0, 2.0, 1.0], 2),
        ([1.0, 1.0, 2.0], 1),  # tie: the later step
        ([2.0, 1.0, 1.0], 2),
        ([1.0, NAN, 2.0], 2),  # undefined: never falls back to an earlier step
        ([NAN, 5.0, 4.0], 2),
        ([2.0, 1.0, NAN], 2),
        ([7.0], 0),
    ],
)
def test_choose_takes_the_lowest_and_prefers_later_steps_on_ties_and_nan(fids, expected):
    assert choose(fids) == expected


def _spoil(path, seed):
    """Rewrite a generator file, same format and metadata, with random weights: a deliberately bad model."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    rng = torch.Generator().manual_seed(seed)
    blob["state_dict"] = {
        k: torch.randn(v.shape, generator=rng) * 3 if v.is_floating_point() and "running_var" not in k else v
        for k, v in blob["state_dict"].items()
    }
    torch.save(blob, path)


@pytest.fixture
def spoiled_model(model_dir, tmp_path):
    """The tiny model with every snapshot but step 3's, and the final generator.pt, replaced by random weights."""
    out = tmp_path / "spoiled"
    shutil.copytree(model_dir, out)
    assert [s for s, _ in list_snapshots(out)] == [1, 2, 3, 4, 6]
    for seed, path in enumerate([out / "generator.pt", *(p for s, p in list_snapshots(out) if s != 3)]):
        _spoil(path, seed)
    return out


def test_evaluate_scores_and_writes_the_best_snapshot(archive_dir, split_dir, spoiled_model, tiny_cfg, tmp_path):
    from components.evaluate.core import evaluate
    from components.tracking import RunTracker

    tracking = {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "t", "run_key": "sel"}
    out = tmp_path / "eval"
    metrics = evaluate(archive_dir, split_dir, spoiled_model, out, tiny_cfg, tracking)

    assert metrics["selected_step"] == 3.0 and metrics["final_step"] == 6.0
    assert (out / "generator.pt").read_bytes() == snapshot_path(spoiled_model, 3).read_bytes()
    report = json.loads((out / "report.json").read_text())
    sel = report["selection"]
    assert sel["mode"] == "best_fid" and sel["real_split"] == "val" and sel["steps"] == [1, 2, 3, 4, 6]
    assert sel["selected_step"] == 3 and min(sel["fid"]) == sel["fid"][2] and sel["fid"][2] < sel["fid"][-1]
    assert report["model"]["generator"]["step"] == 3
    # The curve keeps its meaning: the final point is the (spoiled) final model's, not the chosen snapshot's.
    curve = report["fid_curve"]
    assert curve["steps"] == [1, 2, 3, 4, 6] and curve["fid"][-1] > curve["fid"][2]
    assert curve["fid"][-1] != pytest.approx(metrics["fid"])
    assert "snapshot of step 3 is evaluated and registered" in (out / "report.html").read_text()

    logged = RunTracker(**tracking)
    assert logged.client.get_run(logged.run_id).data.metrics["eval/selected_step"] == 3.0
    history = logged.client.get_metric_history(logged.run_id, "eval/selection_fid")
    assert [m.step for m in history] == sel["steps"] and [m.value for m in history] == pytest.approx(sel["fid"])

    # The headline metrics are those of the step-3 weights: the same as evaluating them as the final model.
    alone = tmp_path / "step3"
    alone.mkdir()
    shutil.copyfile(snapshot_path(spoiled_model, 3), alone / "generator.pt")
    last = dataclasses.replace(tiny_cfg, eval=dataclasses.replace(tiny_cfg.eval, select_snapshot="last"))
    direct = evaluate(archive_dir, split_dir, alone, tmp_path / "eval-step3", last)
    assert direct["fid"] == pytest.approx(metrics["fid"]) and direct["selected_step"] == 3.0
    same = ("fid", "kid", "dice_real_synth", "nn_similarity_max", "mask_contrast_gap")
    assert {k: direct[k] for k in same} == {k: metrics[k] for k in same}


def test_select_last_keeps_the_final_model_without_selection(archive_dir, split_dir, spoiled_model, tiny_cfg, tmp_path):
    from components.evaluate.core import evaluate

    out = tmp_path / "eval"
    out.mkdir()
    (out / "generator.pt").write_bytes(b"left by an earlier evaluation")
    last = dataclasses.replace(tiny_cfg, eval=dataclasses.replace(tiny_cfg.eval, select_snapshot="last"))
    metrics = evaluate(archive_dir, split_dir, spoiled_model, out, last)

    assert metrics["selected_step"] == metrics["final_step"] == 6.0
    assert not (out / "generator.pt").exists()  # register falls back to the model folder's final generator.pt
    report = json.loads((out / "report.json").read_text())
    assert report["selection"]["mode"] == "last"
    assert report["selection"]["steps"] == [] and report["selection"]["fid"] == []
    # the final point is the final model on the curve's latents; the headline drew latents of its own (issue 14)
    assert report["fid_curve"]["steps"][-1] == 6 and report["fid_curve"]["fid"][-1] != pytest.approx(metrics["fid"])
    assert report["selection"].get("gap") is None  # no selection, nothing to test against noise
    assert "selection" not in report["timings"] or report["timings"]["selection"] < 1.0
    assert "eval.select_snapshot=last" in (out / "report.html").read_text()


def test_without_a_usable_val_split_the_selection_scores_against_train_with_a_note(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.normal(size=(40, 6))
    # Two candidates: the first sampled like the real data, the second far off; both have 30 samples.
    cand = Candidates(steps=[5, 10], paths=[tmp_path / "a", tmp_path / "b"])
    cand.feats = [rng.normal(size=(30, 6)), rng.normal(size=(30, 6)) + 3.0]
    cand.n_samples = 30
    for val in (None, train[:1]):
        section = {"notes": []}
        assert choose_generator(cand, section, {"val": val, "train": train}) == tmp_path / "a"
        assert section["real_split"] == "train" and section["n_real"] == 40 and section["selected_step"] == 5
        assert "too few for an FID" in section["notes"][0]
        # ... and the held-out real baseline is undefined rather than computed on one image
        assert all(math.isnan(v) for v in holdout_metrics(train, val, {"bootstrap": 0}, seed=0).values())


@pytest.mark.parametrize(
    ("worst", "floor", "expected"),
    [
        ([0.4, 0.6, 0.7], 0.5, [1, 2]),
        ([0.4, 0.3], 0.5, [0, 1]),  # none reaches the floor: every candidate, the FID alone decides
        ([0.4, None, NAN], 0.5, [1, 2]),  # no statistics: never excluded
        ([0.1, 0.2], 0.0, [0, 1]),  # floor 0: nothing excluded
        ([0.5, 0.49], 0.5, [0]),  # at the floor counts as reaching it
    ],
)
def test_eligible_keeps_the_candidates_at_the_diversity_floor(worst, floor, expected):
    assert eligible(worst, floor) == expected


def _candidates(tmp_path, worst):
    """Three candidates whose FID against ``real`` falls with the step, the last one best; worst-class ratios given."""
    rng = np.random.default_rng(1)
    real = rng.normal(size=(60, 5))
    cand = Candidates(steps=[2, 4, 6], paths=[tmp_path / "a", tmp_path / "b", tmp_path / "c"], n_samples=40)
    cand.feats = [rng.normal(size=(40, 5)) + shift for shift in (3.0, 1.0, 0.2)]
    cand.collapse = [{"min_class_diversity_ratio": v} for v in worst]
    return cand, real


def test_the_selection_passes_over_a_candidate_with_a_collapsed_class(tmp_path):
    cand, real = _candidates(tmp_path, [0.9, 0.7, 0.45])
    section = {"notes": []}
    assert choose_generator(cand, section, {"val": real, "train": real}, min_diversity=0.5) == tmp_path / "b"
    assert section["selected_step"] == 4 and section["passed_over"] == [6]
    assert section["fid"][2] < section["fid"][1] < section["fid"][0]  # step 6 had the lowest FID
    assert section["min_class_diversity"] == [0.9, 0.7, 0.45]
    assert "passed over" in section["notes"][0] and "step 6 (0.45)" in section["notes"][0]

    # floor 0: the FID alone
    section = {"notes": []}
    assert choose_generator(cand, section, {"val": real, "train": real}) == tmp_path / "c"
    assert section["passed_over"] == [] and section["notes"] == []


def test_with_every_candidate_collapsed_the_fid_alone_decides_with_a_note(tmp_path):
    cand, real = _candidates(tmp_path, [0.2, 0.3, 0.25])
    section = {"notes": []}
    assert choose_generator(cand, section, {"val": real, "train": real}, min_diversity=0.5) == tmp_path / "c"
    assert section["passed_over"] == [] and "FID alone decided" in section["notes"][0]


def test_select_min_diversity_rejects_a_negative_floor():
    from components.config import resolve
    from components.errors import ConfigError

    with pytest.raises(ConfigError, match="eval.select_min_diversity must be 0 or more"):
        resolve("quickstart", ["eval.select_min_diversity=-0.1"])
    # the line below which the report warns of a collapsed class
    assert resolve("quickstart").eval.select_min_diversity == COLLAPSED == 0.3
