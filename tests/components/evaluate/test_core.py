import json

import numpy as np
import pytest

from components.errors import DataError
from components.evaluate.core import check_split, metric_key, synthetic_label_plan
from components.evaluate.selection import choose, eligible


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


def lesion_slices(n: int, seed: int, size: int = 32):
    """Tiny slices of three classes: bright discs in the lesion classes, none in normal; 3 patients per class."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.array(["normal", "benign", "malignant"])[np.arange(n) % 3]
    patients = np.array([f"{c}-{i // 3 % 3}" for i, c in enumerate(labels)])
    images = rng.normal(-0.5, 0.05, (n, size, size)).astype(np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    for i in np.flatnonzero(labels != "normal"):
        cy, cx = rng.integers(8, size - 8, 2)
        masks[i] = (yy - cy) ** 2 + (xx - cx) ** 2 < (9 if labels[i] == "benign" else 25)
        images[i][masks[i] > 0] += 0.8
    return images, masks, labels, patients


@pytest.mark.parametrize(("floor", "informative"), [(0.0, True), (1.01, False)])
def test_dice_comparison_arms_seeds_patients_and_the_floor(floor, informative):
    from components.config import SEG_ARMS, resolve
    from components.evaluate.core import arm_key, dice_comparison, gain_key

    overrides = [f"eval.seg_arms={','.join(SEG_ARMS)}", "eval.seg_seeds=2", "eval.seg_steps=3"]
    cfg = resolve("tiny", [*overrides, f"eval.seg_min_baseline_dice={floor}", "eval.bootstrap=20"])
    images, masks, labels, _ = lesion_slices(18, seed=1)
    synthetic = lesion_slices(6, seed=3)[:3]
    test = lesion_slices(18, seed=2)
    lesion = ["benign", "malignant"]
    metrics, section = dice_comparison((images, masks, labels), synthetic, test, lesion, cfg, seed=5)

    assert [a["arm"] for a in section["arms"]] == list(SEG_ARMS)
    assert section["seeds"] == [5, 6] and section["steps"] == 3 and section["n_synthetic"] == 6
    assert all(len(a["per_seed"]) == 2 and len(a["final_loss"]) == 2 for a in section["arms"])
    assert [(c["n_test"], c["n_patients"]) for c in section["classes"]] == [(6, 3), (6, 3)]
    assert section["n_lesion_free"] == 6  # the normal slices: false positives, not Dice
    for arm in SEG_ARMS:
        k = arm_key(arm)
        assert {f"dice_{k}", f"dice_{k}.benign", f"dice_{k}_ci_low.malignant", f"seg_fp_rate_{k}"} <= set(metrics)
        assert 0 <= metrics[f"seg_fp_rate_{k}"] <= 1
    assert gain_key("real+synthetic") == "dice_gain" and gain_key("synthetic") == "dice_gain_synth"
    gains = {g for a in SEG_ARMS[1:] for g in (gain_key(a), f"{gain_key(a)}.malignant", f"{gain_key(a)}_ci_low")}
    assert gains <= set(metrics) and "dice_gain_real" not in metrics
    assert metrics["dice_baseline_ok"] == float(informative) and section["baseline_ok"] is informative
    if informative:
        expected = metrics["dice_real_synth.benign"] - metrics["dice_real.benign"]
        assert metrics["dice_gain.benign"] == pytest.approx(expected)
        assert {g["verdict"] for g in section["gains"]} <= {"helped", "hurt", "no detectable difference"}
    else:  # a baseline below the floor: no gain to compare, said as such
        assert all(np.isnan(metrics[g]) for g in gains)
        assert {g["verdict"] for g in section["gains"]} == {"not informative"}
        assert metrics["dice_baseline_ok.malignant"] == 0.0
    worst = [c["baseline_worst_seed"] for c in section["classes"]]  # the floor applies to every seed
    assert all(w <= c["baseline"] + 1e-9 for w, c in zip(worst, section["classes"], strict=True))


def test_dice_comparison_without_synthetic_pairs_skips_those_arms():
    """An empty top-up (every candidate rejected) leaves the synthetic arms undefined, never fails the evaluation."""
    from components.config import SEG_ARMS, resolve
    from components.evaluate.core import SKIPPED, dice_comparison
    from components.evaluate.report import render_report

    cfg = resolve("tiny", [f"eval.seg_arms={','.join(SEG_ARMS)}", "eval.seg_seeds=1", "eval.seg_steps=2"])
    images, masks, labels, _ = lesion_slices(18, seed=1)
    empty = (images[:0], masks[:0], labels[:0])
    metrics, section = dice_comparison((images, masks, labels), empty, lesion_slices(18, seed=2), ["benign"], cfg, 5)

    assert [a["arm"] for a in section["arms"]] == ["real", "weighted-sampler", "class-weighted-loss"]
    assert [k["arm"] for k in section["skipped"]] == ["real+synthetic", "synthetic"]
    for name in ("dice_real_synth", "dice_gain", "dice_gain.benign", "dice_gain_synth", "seg_fp_rate_synth"):
        assert np.isnan(metrics[name]), name
    assert np.isfinite(metrics["dice_real"]) and section["n_synthetic"] == 0
    assert {g["verdict"] for g in section["gains"] if g["arm"] in ("real+synthetic", "synthetic")} == {SKIPPED}
    html = render_report({"dice": section})
    assert "Arm real+synthetic was not trained" in html and "not measured: the top-up holds no pairs" in html


def test_seg_config_is_checked():
    from components.config import resolve
    from components.errors import ConfigError

    with pytest.raises(ConfigError, match="among them real"):
        resolve("quickstart", ["eval.seg_arms=real+synthetic"])
    with pytest.raises(ConfigError, match="from real, weighted-sampler"):
        resolve("quickstart", ["eval.seg_arms=real,topup"])
    with pytest.raises(ConfigError, match="eval.seg_seeds must be at least 1"):
        resolve("quickstart", ["eval.seg_seeds=0"])
    with pytest.raises(ConfigError, match="registry.gate mode must be one of min, max, at_least"):
        resolve("quickstart", ['registry.gate=[{"name": "fid", "mode": "lower"}]'])


def test_new_seed_streams_leave_the_earlier_ones_unchanged():
    from components.evaluate.core import _seeds

    before = _seeds(0, "fid", "metrics", "seg_synth", "seg", "champion")
    now = _seeds(0, "fid", "metrics", "seg_synth", "seg", "champion", "headline", "interpret")
    assert {k: now[k] for k in before} == before
    assert len(set(now.values())) == len(now)  # the headline's latents are not the selection's ("fid")


def test_collapse_weights_classes_by_their_samples():
    """diversity_ratio is a plain mean that a class of 4 samples moves as much as one of 90; the weighted one not."""
    from components.evaluate.core import collapse_metrics

    consistency = {
        "diversity_ratio": 0.7,
        "min_class_diversity_ratio": 0.3,
        "max_class_diversity_ratio": 1.3,
        "lesion_spread_ratio": 0.5,
        "per_class": {"normal": {"diversity_ratio": 0.3}, "rare": {"diversity_ratio": 1.1}},
    }
    out = collapse_metrics(consistency, {"normal": 90, "rare": 4})
    assert out["diversity_ratio"] == 0.7 and out["diversity_ratio.rare"] == 1.1
    assert out["diversity_ratio_weighted"] == pytest.approx((90 * 0.3 + 4 * 1.1) / 94)
    assert "diversity_ratio_weighted" not in collapse_metrics(consistency)


def test_report_images_draw_the_real_grid_from_different_patients():
    from components.evaluate.core import REPORT_SAMPLES, report_images

    n = 24  # one class, 4 patients of 6 consecutive slices each
    images = np.linspace(-1, 1, n * 16 * 16, dtype=np.float32).reshape(n, 16, 16)
    masks = np.zeros((n, 16, 16), np.uint8)
    labels = np.zeros(n, dtype=np.int64)
    patients = np.repeat(["p1", "p2", "p3", "p4"], 6)
    real = (images, masks, labels)
    samples, _ = report_images(real, real, ["normal"], [], np.arange(n).astype(str), patients)
    assert samples[0]["n_real"] == REPORT_SAMPLES and samples[0]["n_real_patients"] == 4
    samples, _ = report_images(real, real, ["normal"], [], np.arange(n).astype(str))  # old behaviour: first rows
    assert samples[0]["n_real_patients"] is None


def test_evaluate_writes_metrics_report_and_tracks(
    archive_dir, split_dir, trained_model, tiny_cfg, tmp_path, monkeypatch
):
    from components.archive import open_archive
    from components.evaluate.core import _seeds, evaluate, split_rows
    from components.evaluate.report import SECTIONS
    from components.gan import sampling
    from components.metrics import features, medical
    from components.metrics.features import array_fingerprint
    from components.rebalance.core import load_split
    from components.tracking import RunTracker

    drawn = []  # (seed, number of samples) of every generator draw
    generate = sampling.generate
    monkeypatch.setattr(
        sampling,
        "generate",
        lambda g, labels, seed, **k: drawn.append((seed, len(labels))) or generate(g, labels, seed, **k),
    )

    assert tiny_cfg.eval.extra_extractors == ["medical"]  # the second feature space, beside pixels
    fitted = []  # what the medical network is trained on
    train_network = medical.train_network
    monkeypatch.setattr(
        medical, "train_network", lambda fit, *a, **k: fitted.append(fit) or train_network(fit, *a, **k)
    )
    features._fitted_memo.clear()

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
    spaces = metrics.pop("extractors")  # the one non-scalar entry: which feature space produced what
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
        "dice_baseline_ok",
        "seg_fp_rate_real",
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

    # Both feature spaces, each with its identity; the medical one learned from the train split's rows only.
    archive, split = open_archive(archive_dir), load_split(split_dir)
    train_rows = split_rows(split, "train")
    n_val = len(split_rows(split, "val"))
    assert set(spaces) == {"pixels", "medical"}
    val_rows = split_rows(split, "val")
    per_class = split.set_index("index").loc[train_rows, "label"].value_counts().to_dict()
    assert spaces["pixels"] == {
        "role": "primary",
        "prefix": "",
        "fingerprint": "area-16",
        "dim": 256,
        "n_real": len(train_rows),
        "n_fake": metrics["n_synthetic"],
        "n_holdout": n_val,
        "metrics": ["fid", "kid", "precision", "recall", "density", "coverage"],
        # comparable numbers: the real reference set's content, its patients, how intervals resample them
        "reference_sha256": array_fingerprint(np.asarray(archive.images[train_rows], dtype=np.float32)),
        "holdout_sha256": array_fingerprint(np.asarray(archive.images[val_rows], dtype=np.float32)),
        "n_patients": split.set_index("index").loc[train_rows, "patient"].nunique(),
        "resampling": spaces["pixels"]["resampling"],
        "n_real_per_class": {c: int(per_class.get(c, 0)) for c in archive.classes},
        "n_fake_per_class": spaces["pixels"]["n_fake_per_class"],
        "min_class_samples": 20,
        "also": ["nn_copy_fraction", "nn_similarity_max", "nn_similarity_mean", "nn_real_baseline_median"],
    }
    assert spaces["pixels"]["resampling"].startswith("patients")
    assert sum(spaces["pixels"]["n_fake_per_class"].values()) == metrics["n_synthetic"]
    med = spaces["medical"]
    for key in ("reference_sha256", "holdout_sha256", "n_patients", "n_real_per_class", "n_fake_per_class"):
        assert med[key] == spaces["pixels"][key], key  # the same real and synthetic samples in both spaces
    assert med["role"] == "extra" and med["prefix"] == "medical_" and med["dim"] == medical.FEATURE_DIM
    assert len(med["fingerprint"]) == 64 and (med["n_real"], med["n_holdout"]) == (len(train_rows), n_val)
    assert med["trained_on"] == "real train split" and med["n_train"] == len(train_rows)
    assert "from_cache" not in med and "train_seconds" not in med  # volatile: report.json only
    assert len(fitted) == 1
    np.testing.assert_array_equal(fitted[0].rows, train_rows)
    np.testing.assert_array_equal(fitted[0].images, np.asarray(archive.images[train_rows]))
    assert not set(fitted[0].rows) & (set(split_rows(split, "val")) | set(split_rows(split, "test")))
    for name in ("fid", "kid", "precision", "recall", "density", "coverage"):
        assert f"medical_{name}" in metrics and f"holdout_medical_{name}" in metrics, name
        assert f"medical_{name}_ci_low" in metrics
    assert metrics["medical_fid"] >= 0 and 0 <= metrics["medical_coverage"] <= 1
    assert metrics["holdout_medical_fid"] != metrics["holdout_fid"]  # another space, not a copy
    assert any(k.startswith("medical_fid.") for k in metrics)  # per class too

    # Collapse metrics, overall and per class
    assert metrics["min_class_diversity_ratio"] <= metrics["diversity_ratio"]
    assert "lesion_spread_ratio" in metrics and "diversity_ratio.normal" in metrics
    assert {"lesion_spread_ratio.benign", "lesion_spread_ratio.malignant"} <= set(metrics)
    assert "diversity_ratio_weighted" in metrics
    html = (out / "report.html").read_text()
    assert "Samples per class" in html and "expect_x" in html and "pending" in html
    assert all(section in html for section in SECTIONS)
    assert "<script" not in html.lower() and "http://" not in html and "https://" not in html
    report = json.loads((out / "report.json").read_text())
    assert report["run_key"] == "k1" and report["class_distribution"]["train"]
    assert len(list((tmp_path / "cache").glob("pixels-*.npy"))) == 2  # the train split's, and val's for the selection
    assert len(list((tmp_path / "cache").glob("medical-*.npy"))) == 2  # the same in the medical space
    assert len(list((tmp_path / "cache").glob("medical-net-*.pt"))) == 1  # its weights
    assert report["extractors"]["medical"]["from_cache"] is False
    assert report["extractors"]["medical"]["fingerprint"] == med["fingerprint"]
    assert "Feature space <b>medical</b> (extra)" in html and med["fingerprint"][:24] in html
    assert "Feature space <b>pixels</b> (primary)" in html

    # One FID per EMA snapshot of the tiny run (6 steps, 5 snapshots); the last point is the final model, whose
    # samples (all of them: fid_curve_samples exceeds fid_samples) are the headline FID's when the selection kept it.
    curve = report["fid_curve"]
    assert curve["steps"] == [1, 2, 3, 4, 6] and len(curve["fid"]) == 5
    assert curve["n_samples"] == curve["n_samples_headline"] == metrics["n_synthetic"]
    assert all(v >= 0 for v in curve["fid"])
    # collapse over training from the same samples, one value per snapshot
    for name in ("diversity_ratio", "min_class_diversity_ratio", "lesion_spread_ratio"):
        assert len(curve[name]) == 5, name
    assert all(v is None or v >= 0 for v in curve["diversity_ratio"])
    assert set(curve["per_class"]) <= {"normal", "benign", "malignant"}
    selection = report["selection"]
    assert selection["steps"] == curve["steps"] and selection["final_step"] == metrics["final_step"] == 6
    # the lowest selection FID among the candidates not passed over for a collapsed class
    keep = eligible(selection["min_class_diversity"], tiny_cfg.eval.select_min_diversity)
    assert selection["passed_over"] == [s for i, s in enumerate(curve["steps"]) if i not in keep]
    best = keep[choose([selection["fid"][i] for i in keep])]
    assert metrics["selected_step"] == selection["selected_step"] == curve["steps"][best]
    assert selection["min_class_diversity"] == curve["min_class_diversity_ratio"]
    # The headline's latents are a stream of their own, not the selection's: the curve (and the selection) drew with
    # the "fid" stream, the headline (all fid_samples) with the "headline" stream.
    seeds = _seeds(tiny_cfg.seed, "fid", "metrics", "seg_synth", "seg", "champion", "headline", "interpret")
    n = int(metrics["n_synthetic"])
    assert (seeds["headline"], n) in drawn and (seeds["fid"], n) in drawn
    assert [s for s, k in drawn if k == n].count(seeds["headline"]) == 1  # one headline draw, for every metric
    assert curve["fid"][-1] != pytest.approx(metrics["fid"])  # not the final point's samples any more
    # Does the selection's winner beat the final model beyond noise? Said either way.
    gap = selection["gap"]
    if metrics["selected_step"] == metrics["final_step"]:
        assert gap == {"compared": False, "reason": "the final model was selected: no gap to test"}
    else:
        assert gap["verdict"] in (
            "beats the final model beyond noise",
            "within noise of the final model",
            "no interval",
        )
        assert metrics["selection_fid_gap"] == pytest.approx(gap["gap"])
    # Interpretability: a latent walk per class, saliency from the training checkpoint's discriminator
    it = report["interpretability"]
    assert [i["class"] for i in it["interpolations"]] == list(archive.classes)
    assert it["discriminator"]["step"] == metrics["final_step"] and it["saliency"]
    assert {"real", "synthetic"} <= set(it["saliency"][0])
    # Real grids from different patients
    assert all(s["n_real_patients"] >= min(2, s["n_real"]) for s in report["samples"])
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
    history = logged.client.get_metric_history(logged.run_id, "eval/diversity_ratio_curve")
    defined = [s for s, v in zip(curve["steps"], curve["diversity_ratio"], strict=True) if v is not None]
    assert [m.step for m in history] == defined
    assert run.data.metrics["eval/medical_fid"] == pytest.approx(metrics["medical_fid"])
    assert run.data.metrics["eval/min_class_diversity_ratio"] == pytest.approx(metrics["min_class_diversity_ratio"])
    assert run.data.tags["eval.extractor.medical.fingerprint"] == med["fingerprint"]
    assert run.data.tags["eval.extractor.pixels.n_fake"] == str(int(metrics["n_synthetic"]))
    assert run.data.tags["eval.extractor.pixels.reference_sha256"] == spaces["pixels"]["reference_sha256"]
    assert run.data.tags["eval.extractor.medical.n_patients"] == str(spaces["medical"]["n_patients"])

    # Same inputs, same outputs on CPU (the real features and the medical weights now come from the cache).
    features._fitted_memo.clear()  # as in a new process
    again = evaluate(
        archive_dir, split_dir, trained_model, tmp_path / "eval2", tiny_cfg, None, cache_dir=tmp_path / "cache"
    )
    assert again == {**metrics, "extractors": spaces}
    assert len(fitted) == 1  # not trained again
    assert json.loads((tmp_path / "eval2" / "report.json").read_text())["extractors"]["medical"]["from_cache"]
