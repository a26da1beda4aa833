"""The evaluate stage with split.strategy=gan-topup: the top-up is built, versioned, logged and used for Dice."""

import json

import pytest

from components.config import resolve
from components.topup.core import open_topup


@pytest.fixture
def trained_model(request):
    pytest.importorskip("components.train.core", reason="the trainer provides the model_dir fixture")
    return request.getfixturevalue("model_dir")


def test_gan_topup_is_built_from_the_selected_generator_versioned_and_logged(
    archive_dir, split_dir, trained_model, lenient_topup, tmp_path
):
    from components.evaluate.core import evaluate
    from components.tracking import RunTracker

    remote = tmp_path / "remote"
    cfg = resolve("tiny", [*lenient_topup, "split.strategy=gan-topup", f"topup.dvc_remote={remote}"])
    tracking = {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "t", "run_key": "k1"}
    out, topup_dir = tmp_path / "eval", tmp_path / "topup"
    metrics = evaluate(
        archive_dir, split_dir, trained_model, out, cfg, tracking, cache_dir=tmp_path / "c", topup_dir=topup_dir
    )

    top, table = open_topup(topup_dir)
    assert metrics["topup_n"] == len(top) == len(table) > 0
    assert sum(v for k, v in metrics.items() if k.startswith("topup_kept.")) == len(top)
    report = json.loads((out / "report.json").read_text())
    section = report["topup"]
    assert section["built"] and section["n"] == len(top)
    assert section["generator_step"] == int(metrics["selected_step"])  # the generator the metrics describe
    assert section["dvc"]["tracked"] and section["feature_space"]["name"] == "medical"
    assert (out / "topup.dvc").read_text() == section["dvc"]["pointer"]
    assert any(remote.rglob("*"))  # pushed
    html = (out / "report.html").read_text()
    assert "Synthetic top-up" in html and section["dvc"]["md5"] in html and "Per-class trust" in html
    # per-class trust: class accuracy of the synthetic samples beside its held-out real reference, audit per class
    assert {"class_accuracy", "holdout_class_accuracy"} <= metrics.keys()
    assert [row["class"] for row in report["trust"]["per_class"]] == report["dataset"]["classes"]
    assert any(k.startswith("nn_copy_fraction.") for k in metrics)
    run = RunTracker.of(tracking)
    assert run.client.get_run(run.run_id).data.tags["topup.dvc_md5"] == section["dvc"]["md5"]
    logged = {a.path for a in run.client.list_artifacts(run.run_id, "topup")}
    assert {"topup/dataset", "topup/topup.dvc"} <= logged
    files = {a.path for a in run.client.list_artifacts(run.run_id, "topup/dataset")}
    assert "topup/dataset/topup.parquet" in files


def test_other_strategies_build_no_topup_and_say_why(archive_dir, split_dir, trained_model, tmp_path):
    from components.evaluate.core import evaluate

    cfg = resolve("tiny", ["split.strategy=weighted-sampler"])
    topup_dir = tmp_path / "topup"
    metrics = evaluate(archive_dir, split_dir, trained_model, tmp_path / "eval", cfg, None, topup_dir=topup_dir)
    assert "topup_n" not in metrics
    assert json.loads((topup_dir / "topup.json").read_text())["built"] is False
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["topup"]["built"] is False
    assert "No top-up in this run: split.strategy=weighted-sampler" in (tmp_path / "eval" / "report.html").read_text()
