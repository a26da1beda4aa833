import json

import numpy as np
import pytest

from components.errors import DataError
from components.evaluate.core import check_split, metric_key, synthetic_label_plan
from components.evaluate.selection import choose


@pytest.fixture
def trained_model(request):
    pytest.importorskip("components.train.core", reason="the trainer provides the model_dir fixture")
    return request.getfixturevalue("model_dir")


def test_label_plan_follows_proportions_with_a_floor():
    plan = synthetic_label_plan([60, 30, 2, 0], total=20, min_per_class=4)
    counts = np.bincount(plan, minlength=4)
    assert counts.tolist() == [13, 7, 4, 0]  # largest remainder, then the floor of 4
    with pytest.raises(DataError):
        synthetic_label_plan([0, 0], total=5)


def test_metric_keys_and_split_checks():
    import pandas as pd

    assert metric_key("fid") == "fid" and metric_key("fid_ci_low", "rare class/2") == "fid_ci_low.rare_class_2"
    split = pd.DataFrame(
        {
            "index": [0, 5],
            "sample_id": ["a", "b"],
            "patient": ["p", "q"],
            "label": ["x", "y"],
            "split": ["train", "test"],
        }
    )
    with pytest.raises(DataError, match="outside the archive"):
        check_split(split, "split", n_archive=3)
    with pytest.raises(DataError, match="lacks column"):
        check_split(split.drop(columns="patient"), "split", n_archive=10)


def test_evaluate_writes_metrics_report_and_tracks(archive_dir, split_dir, trained_model, tiny_cfg, tmp_path):
    from components.evaluate.core import evaluate
    from components.tracking import RunTracker

    tracking = {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "t", "run_key": "k1"}
    validation = {
        "results": [
            {"expectation": "expect_x", "column": "c", "success": True, "severity": "critical", "unexpected_count": 0}
        ]
    }
    out = tmp_path / "eval"
    metrics = evaluate(
        archive_dir,
        split_dir,
        trained_model,
        out,
        tiny_cfg,
        tracking,
        cache_dir=tmp_path / "cache",
        validation=validation,
    )

    stored = json.loads((out / "metrics.json").read_text())
    assert stored == metrics
    for key in (
        "fid",
        "fid_ci_low",
        "fid_ci_high",
        "kid",
        "precision",
        "recall",
        "density",
        "coverage",
        "dice_real",
        "dice_real_synth",
        "dice_gain",
        "nn_copy_fraction",
        "mask_contrast_gap",
    ):
        assert key in metrics, key
    assert metrics["fid"] >= 0 and 0 <= metrics["nn_copy_fraction"] <= 1
    assert all(0 <= metrics[k] <= 1 for k in ("precision", "recall", "coverage"))
    # The held-out real baseline: the val split's real images scored against the train split, overall only.
    assert metrics["holdout_fid"] >= 0 and "holdout_fid_ci_low" not in metrics
    assert {f"holdout_{m}" for m in ("kid", "precision", "recall", "density", "coverage")} <= set(metrics)
    assert all(v is None or isinstance(v, float) for v in metrics.values())
    html = (out / "report.html").read_text()
    assert "Samples per class" in html and "expect_x" in html and "pending" in html
    report = json.loads((out / "report.json").read_text())
    assert report["run_key"] == "k1" and report["class_distribution"]["train"]
    assert len(list((tmp_path / "cache").glob("pixels-*.npy"))) == 2  # the train split's, and val's for the selection

    # One FID per EMA snapshot of the tiny run (6 steps, 5 snapshots); the last point is the final model, whose
    # samples (all of them: fid_curve_samples exceeds fid_samples) are the headline FID's when the selection kept it.
    curve = report["fid_curve"]
    assert curve["steps"] == [1, 2, 3, 4, 6] and len(curve["fid"]) == 5
    assert curve["n_samples"] == curve["n_samples_headline"] == metrics["n_synthetic"]
    assert all(v >= 0 for v in curve["fid"])
    selection = report["selection"]
    assert selection["steps"] == curve["steps"] and selection["final_step"] == metrics["final_step"] == 6
    assert metrics["selected_step"] == selection["selected_step"] == curve["steps"][choose(selection["fid"])]
    kept_final = metrics["selected_step"] == metrics["final_step"]
    assert (curve["fid"][-1] == pytest.approx(metrics["fid"])) is kept_final
    assert "FID over training" in html and 'aria-label="FID by training step"' in html
    assert "fid_curve" in report["timings"]
    # The rebalance stage's split check sits beside the validate stage's results.
    assert report["split_validation"]["success"] and "data_docs" not in report["split_validation"]
    assert "Patient-level split (rebalance stage)" in html and "No patient is in two splits" in html

    logged = RunTracker(**{k: tracking[k] for k in ("tracking_uri", "experiment", "run_key")})
    run = logged.client.get_run(logged.run_id)
    assert run.data.metrics["eval/fid"] == pytest.approx(metrics["fid"])
    history = logged.client.get_metric_history(logged.run_id, "eval/fid_curve")
    assert [m.step for m in history] == curve["steps"]
    assert [m.value for m in history] == pytest.approx(curve["fid"])

    # Same inputs, same outputs on CPU (the real features now come from the cache).
    again = evaluate(
        archive_dir, split_dir, trained_model, tmp_path / "eval2", tiny_cfg, None, cache_dir=tmp_path / "cache"
    )
    assert again == metrics
