"""The first screen a data scientist decides from, and the defects issue 14 found in it, one test each."""

import re

import numpy as np
import pytest

from components.evaluate.report import pair_grid, png_base64
from components.evaluate.report import render_report as render_html
from components.evaluate.verdict import sanity_checks, verdict


def render_report(report: dict) -> str:
    return re.sub(r">\s+<", "><", render_html(report))


def first_screen(html: str) -> str:
    """The verdict panel: everything from the title to the first section of evidence."""
    return html.split("<h2>Metrics</h2>")[0]


def identity(name="inception", fingerprint="tf-inception-sha1", n_real=132, n_fake=128, **extra) -> dict:
    return {
        "role": "primary",
        "prefix": "",
        "fingerprint": fingerprint,
        "dim": 2048,
        "n_real": n_real,
        "n_fake": n_fake,
        "n_holdout": 40,
        "n_patients": 14,
        "metrics": ["fid", "kid", "precision", "recall", "density", "coverage"],
        "also": ["nn_copy_fraction"],
        "reference_sha256": "9" * 64,
        "resampling": "patients (cluster bootstrap of the real side; synthetic samples row by row)",
        "n_real_per_class": {"normal": 90, "benign": 32, "malignant": 10},
        "n_fake_per_class": {"normal": 88, "benign": 31, "malignant": 9},
        "min_class_samples": 20,
        **extra,
    }


def quickstart_like(**metrics) -> dict:
    """A report as the quickstart's evaluation writes it, promoted by the gate although the samples are poor."""
    values = {
        "fid": 218.0,
        "fid_ci_low": 205.0,
        "fid_ci_high": 231.0,
        "kid": 0.2,
        "kid_ci_low": 0.15,
        "kid_ci_high": 0.25,
        "precision": 0.0,
        "recall": 0.0,
        "density": 0.0,
        "coverage": 0.0,
        "coverage_ci_low": 0.0,
        "coverage_ci_high": 0.0,
        "holdout_precision": 0.7,
        "fid.malignant": 300.0,
        "fid_ci_low.malignant": 250.0,
        "fid_ci_high.malignant": 350.0,
        "fid.normal": 200.0,
        "diversity_ratio": 0.72,
        "diversity_ratio_weighted": 0.31,
        "min_class_diversity_ratio": 0.2,
        "diversity_ratio.normal": 0.2,
        "dice_gain": None,
        "dice_gain_ci_low": None,
        "dice_baseline_ok": 0.0,
        "nn_copy_fraction": 0.0,
        "n_real_train": 132.0,
        "n_synthetic": 128.0,
        "selected_step": 400.0,
        "final_step": 1000.0,
        **metrics,
    }
    return {
        "model": {"name": "model", "generator": {"step": 400, "kwargs": {"z_dim": 128}}},
        "selection": {
            "mode": "best_fid",
            "selected_step": 400,
            "final_step": 1000,
            "steps": [200, 400, 1000],
            "fid": [230.0, 219.0, 220.0],
            "gap": {
                "compared": True,
                "gap": 1.0,
                "ci": [-1.9, 3.8],
                "verdict": "within noise of the final model",
                "n_real": 40,
                "n_patients": 5,
                "n_synthetic": 64,
                "resamples": 50,
            },
        },
        "metrics": values,
        "extractors": {"inception": identity()},
        "memorization": {"threshold": 0.97, "n_flagged": 0, "similarity_mean": 0.2, "real_baseline_median": 0.9},
        "dice": {
            "arms": [{"arm": "real", "dice": 0.0, "per_seed": [0.0, 0.42]}],
            "classes": [
                {
                    "class": "malignant",
                    "baseline": 0.0,
                    "baseline_worst_seed": 0.0,
                    "baseline_ok": False,
                    "n_patients": 2,
                }
            ],
            "baseline_ok": False,
            "min_baseline_dice": 0.2,
            "seeds": [1, 2],
        },
        "gate": {
            "action": "promoted",
            "version": "2",
            "champion_version": "1",
            "reason": "fid: 218 meets < 220 (champion 220, margin 0)",
            "rules": [{"name": "fid", "mode": "min", "margin": 0.0}],
            "floor": [],
            "challenger_metrics": values,
            "champion_metrics": {"fid": 220.0, "kid": 0.21, "precision": 0.01},
        },
    }


def test_a_promotion_with_failed_sanity_checks_is_not_green_and_says_why():
    report = quickstart_like()
    html = render_report(report)
    screen = first_screen(html)
    assert 'class="verdict v-warn"' in screen and 'class="verdict v-good"' not in screen
    assert "promoted &mdash; despite" in screen
    assert "FAILED: Samples off the real manifold" in screen and "precision 0, recall 0, coverage 0" in screen
    assert "FAILED: Dice baseline failed" in screen  # every Dice value 0: the real-only baseline failed
    assert "CHECK: Dice unstable across segmenter seeds" in screen and "0 / 0.42" in screen
    v = verdict(report)
    assert v["css"] == "warn" and v["n_failed"] == 2
    healthy = quickstart_like(precision=0.6, recall=0.4, density=0.9, coverage=0.5, min_class_diversity_ratio=0.8)
    healthy["dice"] = {}
    assert verdict(healthy)["css"] == "good"  # a warning (few malignant samples) does not stop the green
    assert [c["key"] for c in verdict(healthy)["checks"]] == ["few_class_samples"]


def test_the_rule_table_holds_the_rules_and_the_deciding_numbers_not_alphabetical_metric_names():
    html = render_report(quickstart_like())
    screen = first_screen(html)
    rule = screen.split("<h3>The rule</h3>")[1].split("</table>")[0]
    assert rule.count("<tr class") == 1 and "<td>fid (gate)</td>" in rule
    assert "<td>lower than the champion&#x27;s by more than 0</td>" in rule
    assert '<td class="n">218</td><td class="n">[205, 231]</td><td class="n">220</td>' in rule  # CI, champion
    numbers = screen.split("<h3>Deciding numbers</h3>")[1].split("</table>")[0]
    for name in ("fid", "kid", "precision", "recall", "coverage", "nn_copy_fraction"):
        assert f"<tr><td>{name}</td>" in numbers, name
    for name in ("coverage_ci_high", "dice_gain_ci_low", "n_real_train", "selected_step"):
        assert f"<td>{name}</td>" not in numbers, name
    assert '<tr><td>kid</td><td class="n">0.2</td><td class="n">[0.15, 0.25]</td><td>lower</td>' in numbers


def test_counts_are_counts_and_every_metric_has_a_direction():
    html = render_report(quickstart_like())
    evidence = html.split("<h2>Metrics</h2>")[1].split("<h2>")[0]
    counts = evidence.split("<h3>Counts and steps</h3>")[1].split("</table>")[0]
    assert (
        '<td>n_real_train</td><td class="n">132</td>' in counts
        and '<td>selected_step</td><td class="n">400</td>' in counts
    )
    assert '<td>dice_baseline_ok</td><td class="n">no</td>' in counts
    for name in ("n_real_train", "selected_step", "final_step", "n_synthetic"):
        assert f"<tr><td>{name}</td>" not in evidence.split("<h3>Counts and steps</h3>")[0], name
    for name in ("density", "diversity_ratio", "diversity_ratio_weighted"):
        assert re.search(
            rf"<tr><td>{name}</td><td[^>]*>[^<]*</td><td[^>]*>[^<]*</td><td>\u2248 1 \(as real\)</td>", evidence
        )
    assert "Model</td><td>model" not in html
    assert "<td>Generator</td><td>EMA generator of step 400 (snapshot selected by val FID; final step 1000)" in html


def test_every_value_names_its_extractor_samples_and_reference_set():
    report = quickstart_like()
    html = render_report(report)
    fid = re.search(r"<tr><td>fid</td>(.*?)</tr>", html.split("<h2>Metrics</h2>")[1]).group(1)
    assert (
        "132 real (14 patients) / 128 synthetic" in fid and "inception tf-incep\u2026 \u00b7 ref 99999999\u2026" in fid
    )
    spaces = html.split("<h3>Feature spaces</h3>")[1]
    assert "reference set <code>9999999999999999\u2026</code>" in spaces and "intervals resample patients" in spaces


def test_an_extractor_mismatch_with_the_champion_is_a_red_banner():
    report = quickstart_like()
    report["extractors"] = {"pixels": identity("pixels", "area-16")}
    report["champion_registry"] = {"version": "1", "spaces": {"inception": {"fingerprint": "tf-inception-sha1"}}}
    checks = {c["key"]: c for c in sanity_checks(report)}
    assert checks["extractor_mismatch"]["level"] == "fail" and "inception" in checks["extractor_mismatch"]["text"]
    assert checks["nonstandard_extractor"]["level"] == "warn"
    screen = first_screen(render_report(report))
    assert "FAILED: Extractor mismatch with the champion" in screen
    # same name, other weights: a mismatch as well; same weights, other reference set: a warning
    report["champion_registry"] = {"version": "1", "spaces": {"pixels": {"fingerprint": "area-8"}}}
    assert {c["key"]: c["level"] for c in sanity_checks(report)}["extractor_mismatch"] == "fail"
    report["champion_registry"] = {
        "version": "1",
        "spaces": {"pixels": {"fingerprint": "area-16", "reference_sha256": "8" * 64, "n_real": "100"}},
    }
    assert {c["key"]: c["level"] for c in sanity_checks(report)}["reference_mismatch"] == "warn"
    report["champion_registry"] = {"version": "1", "spaces": {}}  # registered before identities existed
    assert {c["key"]: c["level"] for c in sanity_checks(report)}["extractor_mismatch"] == "warn"


def test_the_champions_identity_is_read_back_from_the_registry(tmp_path):
    from mlflow.tracking import MlflowClient

    from components.evaluate.provenance import champion_spaces

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert champion_spaces(None, "m") is None and champion_spaces(uri, "m") is None  # no model, no champion
    client = MlflowClient(uri)
    client.create_registered_model("m")
    tags = {"extractor.inception.fingerprint": "tf-inception-sha1", "extractor.inception.n_real": "132", "x": "y"}
    version = client.create_model_version("m", str(tmp_path), tags=tags)
    assert champion_spaces(uri, "m") is None  # registered, but not champion
    client.set_registered_model_alias("m", "champion", version.version)
    assert champion_spaces(uri, "m") == {
        "version": str(version.version),
        "spaces": {"inception": {"fingerprint": "tf-inception-sha1", "n_real": "132"}},
    }


def test_too_few_samples_and_per_class_values_on_few_samples_are_flagged():
    report = quickstart_like()
    report["extractors"] = {"inception": identity(n_real=30, n_fake=16)}
    checks = {c["key"]: c for c in sanity_checks(report)}
    assert checks["few_samples"]["level"] == "fail"
    assert (
        checks["few_class_samples"]["level"] == "warn"
        and "malignant (10 real / 9 synthetic)" in checks["few_class_samples"]["text"]
    )
    html = render_report(report)
    table = html.split("Fidelity per class")[1].split("</table>")[0]
    malignant = re.search(r'<tr class="lown"><td>malignant(.*?)</tr>', table).group(1)
    assert "n &lt; 20" in malignant and ">300<" in malignant and "[250, 350]" in malignant  # flagged, not hidden
    assert '<tr><td>normal</td><td class="n">90</td>' in table  # enough samples: no flag


def test_the_selection_says_whether_its_winner_beats_the_final_model():
    html = render_report(quickstart_like())
    screen = first_screen(html)
    assert "step 400 was kept over the final model (step 1000)" in screen
    assert "+1.00 [-1.9, 3.8]: it within noise of the final model" in screen
    details = html.split("<h2>FID over training</h2>")[1]
    assert "The choice is not evidence that the snapshot is better" in details and "5 patients" in details


def test_memorization_all_clear_is_not_green_when_the_samples_are_off_the_manifold():
    tile = png_base64(pair_grid(np.zeros((1, 8, 8)), np.zeros((1, 8, 8))))
    report = quickstart_like()
    report["neighbours"] = [
        {
            "synthetic": tile,
            "real": tile,
            "similarity": 0.31,
            "flagged": False,
            "class": "benign",
            "synthetic_index": 7,
            "real_sample_id": "s-12",
        }
    ]
    section = render_report(report).split("<h2>Memorization audit")[1].split("<h2>")[0]
    assert (
        '<p class="pending">No synthetic sample exceeds the near-copy threshold, but that says nothing here' in section
    )
    assert "synthetic #7" in section and "nearest real (train)" in section  # which image is which
    assert "class benign, similarity 0.31" in section
    report["metrics"]["precision"] = 0.6
    section = render_report(report).split("<h2>Memorization audit")[1].split("<h2>")[0]
    assert '<p class="good">No synthetic sample exceeds the near-copy threshold.</p>' in section


@pytest.mark.parametrize("missing", ["interpretability", "samples"])
def test_interpretability_sections_render_or_say_what_is_missing(missing):
    tile = png_base64(pair_grid(np.zeros((2, 8, 8)), np.zeros((2, 8, 8))))
    report = {
        "interpretability": {
            "interpolations": [{"class": "benign", "steps": 7, "grid": tile}],
            "discriminator": {"step": 1000, "arch": "sn", "checkpoint_sha256": "c" * 64, "note": "D of step 1000"},
            "saliency": [
                {
                    "class": "benign",
                    "real": {"grid": tile, "logits": [1.5, 0.2], "lesion_share": 0.4, "mask_area": 0.05},
                    "synthetic": {"grid": tile, "logits": [-0.3, -1.0], "lesion_share": 0.1, "mask_area": 0.04},
                }
            ],
        },
        "samples": [
            {"class": "benign", "synthetic": tile, "real": tile, "n_synthetic": 2, "n_real": 2, "n_real_patients": 2}
        ],
    }
    del report[missing]
    html = render_report(report)
    if missing == "interpretability":
        assert "No latent interpolations in this report." in html and "No saliency maps in this report." in html
        return
    interp = html.split("<h2>Latent interpolations</h2>")[1].split("<h2>")[0]
    assert interp.count("data:image/png;base64,") == 1 and "benign: 7 steps" in interp
    sal = html.split("<h2>Discriminator saliency</h2>")[1].split("<h2>")[0]
    assert sal.count("data:image/png;base64,") == 2 and "logits +1.50, +0.20" in sal
    assert "0.4 of the saliency inside the lesion mask (mask area 0.05)" in sal and "D of step 1000" in sal
