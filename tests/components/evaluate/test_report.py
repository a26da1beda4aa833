import json
import re

import numpy as np
import pytest

from components.evaluate.report import overlay, pair_grid, png_base64, write_report
from components.evaluate.report import render_report as render_html


def render_report(report: dict) -> str:
    """The page with the whitespace between tags removed (the template's indentation is not what is checked)."""
    return re.sub(r">\s+<", "><", render_html(report))


def full_report() -> dict:
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (3, 16, 16)).astype(np.float32)
    masks = np.zeros((3, 16, 16), np.uint8)
    masks[:, 4:9, 4:9] = 1
    tile = png_base64(pair_grid(images, masks))
    return {
        "run_key": "run-20260101-abc",
        "created": "2026-01-01T00:00:00Z",
        "dataset": {"version": {"rev": "deadbeef", "md5": "0123"}, "hash": "f" * 64, "split_sizes": "30 / 9 / 12"},
        "model": {"name": "model", "options": {"steps": 600}},
        "config": {"feature_extractor": "inception", "bootstrap": 50},
        "metrics": {
            "fid": 12.5,
            "fid_ci_low": 10.0,
            "fid_ci_high": 15.0,
            "fid.benign": 30.0,
            "fid_ci_low.benign": 20.0,
            "fid_ci_high.benign": 40.0,
            "kid": 0.01,
            "coverage": 0.42,
            "holdout_coverage": 0.8,
            "holdout_fid": 5.0,
            "dice_real": 0.6,
            "dice_real_synth": 0.65,
            "dice_gain": 0.05,
            "dice_real.malignant": None,
            "nn_copy_fraction": 0.0,
        },
        "notes": ["class rare: 1 real / 4 synthetic samples, too few for FID/KID"],
        "dice": {
            "arms": [
                {
                    "arm": arm,
                    "key": key,
                    "dice": value,
                    "ci": [value - 0.1, value + 0.1],
                    "per_class": {"benign": value},
                    "per_class_ci": {"benign": [value - 0.1, value + 0.1]},
                    "per_seed": [value - 0.02, value + 0.02],
                    "fp_rate": 0.1,
                    "fp_rate_ci": [0.0, 0.2],
                    "fp_area": 0.001,
                }
                for arm, key, value in (("real", "real", 0.6), ("real+synthetic", "real_synth", 0.65))
            ],
            "gains": [
                {"arm": "real+synthetic", "class": scope, "gain": 0.05, "ci": [0.01, 0.09], "verdict": "helped"}
                for scope in (None, "benign")
            ],
            "classes": [{"class": "benign", "n_test": 9, "n_patients": 3, "baseline": 0.6, "baseline_ok": True}],
            "baseline": 0.6,
            "baseline_ok": True,
            "min_baseline_dice": 0.2,
            "n_lesion_free": 12,
            "seeds": [7, 8],
            "steps": 200,
            "batch_size": 8,
            "n_synthetic": 96,
            "model": "MONAI BasicUNet(4, 8, 16, 32, 64, 4)",
            "schedule": "Adam, one-cycle",
        },
        "samples": [
            {"class": "benign", "synthetic": tile, "real": tile},
            {"class": "<script>", "synthetic": tile, "real": None},
        ],
        "memorization": {"threshold": 0.97, "copy_fraction": 0.1, "n_flagged": 1, "real_baseline_median": 0.8},
        "neighbours": [{"synthetic": tile, "real": tile, "similarity": 0.99, "flagged": True, "class": "benign"}],
        "consistency": {
            "contrast_gap": 0.1,
            "real": {"benign": {"contrast": 0.9, "mask_area": 0.02}},
            "synthetic": {"benign": {"contrast": 0.8, "mask_area": 0.03, "label_mismatch": 0.0}},
        },
        "losses": {
            "step": list(range(0, 100, 5)),
            "loss_g": list(np.linspace(2, 1, 20)),
            "loss_d": list(np.linspace(1, 0.5, 20)),
            "img_per_s": [30.0] * 20,
        },
        "class_distribution": {
            "train": {"normal": 20, "benign": 8},
            "val": {"normal": 5, "benign": 2},
            "test": {"normal": 6, "benign": 3},
        },
        "validation": {
            "results": [
                {
                    "expectation": "expect_column_values_to_be_unique",
                    "column": "content_hash",
                    "success": True,
                    "severity": "critical",
                    "unexpected_count": 0,
                },
                {
                    "expectation": "expect_column_values_to_be_between",
                    "column": "mask_fraction",
                    "success": False,
                    "severity": "warning",
                    "unexpected_count": 2,
                },
            ]
        },
        "timings": {"dice": 12.0},
    }


def assert_self_contained(html: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//|ftp:)""", html, re.I)
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html.lower()
    assert "url(" not in html and "@import" not in html


def test_minimal_report_renders_every_section_as_missing_or_pending():
    html = render_report({})
    for section in ("Metrics", "Samples", "Memorization audit", "Training curves", "Class distribution"):
        assert section in html
    for section in ("Data validation", "Gate decision", "Latent interpolations", "Discriminator saliency"):
        assert section in html
    assert "pending" in html
    assert_self_contained(html)


def metric_row(name: str, html: str) -> list[str]:
    """The cells of the metrics table row of ``name`` (metric, value, CI, better, held-out, champion, n, source)."""
    rows = re.findall(rf"<tr><td>{re.escape(name)}</td>(.*?)</tr>", html)
    assert rows, name
    return re.findall(r"<td[^>]*>(.*?)</td>", rows[-1])


def test_full_report_has_sections_images_curves_and_escapes_data():
    html = render_report(full_report())
    for section in ("Metrics", "Samples", "Memorization audit", "Training curves", "Class distribution"):
        assert section in html
    assert "run-20260101-abc" in html and "rev=deadbeef" in html
    assert html.count("data:image/png;base64,") == 5
    assert html.count("<svg") == 2  # the losses chart + img_per_s
    assert "[10, 15]" in html  # the CI
    evidence = html.split("<h2>Metrics</h2>")[1]
    assert metric_row("fid", evidence)[:5] == ["12.5", "[10, 15]", "lower", "5", ""]
    assert metric_row("coverage", evidence)[:5] == ["0.42", "", "higher", "0.8", ""]
    assert "<td>holdout_fid</td>" not in html  # a column, not a row of its own
    assert "expect_column_values_to_be_between" in html and "FAIL" in html
    assert "FLAGGED" in html
    assert "&lt;script&gt;" in html
    assert "pending" in html
    assert_self_contained(html)


def test_dice_section_states_the_convention_and_a_verdict_per_class():
    html = render_report(full_report())
    section = html.split("<h2>Downstream segmentation")[1].split("<h2>")[0]
    assert (
        "<b>benign</b>: top-up helped: gain +0.050 (95 % CI 0.010..0.090 over 3 test patients, 2 segmenter seeds)"
        in (section)
    )
    assert "lesion-free slice (12 in the test split) has no Dice and counts as a false positive" in section
    assert "over test patients" in section and "WARNING" not in html
    assert "<td>real+synthetic</td><td>0.65 [0.55, 0.75]</td>" in section  # per arm, with its interval
    assert "0.63 / 0.67" in section  # per seed


def test_dice_warns_loudly_when_the_real_only_baseline_did_not_learn():
    report = full_report()
    d = report["dice"]
    failed = {"class": "malignant", "n_test": 4, "n_patients": 1, "baseline": 0.26, "baseline_worst_seed": 0.0}
    d["classes"].append({**failed, "baseline_ok": False})  # one seed of two did not learn the class
    d["baseline_ok"] = False
    d["gains"].append(
        {"arm": "real+synthetic", "class": "malignant", "gain": None, "ci": [None, None], "verdict": "not informative"}
    )
    d["gains"][1].update(ci=[-0.02, 0.09], verdict="no detectable difference")
    html = render_report(report)
    assert html.count('class="bad warning"') == 1  # in the section
    verdict = html.split("Gate decision")[1].split("<h2>")[0]  # the first screen: a red banner in the verdict
    assert "FAILED: Dice baseline failed" in verdict and "malignant (Dice 0.26, worst seed 0)" in verdict
    assert html.index("FAILED: Dice baseline failed") < html.index("<h2>Metrics") < html.index("WARNING")
    assert "not informative for malignant (Dice 0.26, worst seed 0)" in html and "dice_baseline_ok" in html
    floor = "<b>malignant</b>: not informative: the real-only baseline (Dice 0.26, worst seed 0) is below the floor 0.2"
    assert floor in html
    assert "<b>benign</b>: no detectable difference: gain +0.050 (95 % CI -0.020..0.090 over 3 test patients" in html
    d["gains"][1].update(ci=[None, None], verdict="no interval")
    assert "gain +0.050, no interval (3 test patients, 2 segmenter seeds" in render_report(report)


def test_gate_section_shows_decision(tmp_path):
    report = full_report()
    report["gate"] = {
        "decision": "reject",
        "action": "rejected",
        "reason": "fid: 12.5 misses <= 10",
        "challenger_metrics": {"fid": 12.5},
        "champion_metrics": {"fid": 10.0},
        "rules": [{"name": "fid", "mode": "min", "margin": 0.0}],
    }
    path = write_report(report, tmp_path)
    html = re.sub(r">\s+<", "><", path.read_text())
    assert "rejected" in html and "fid: 12.5 misses" in html and "fid (gate)" in html
    assert "pending" not in html.split("Gate decision")[1].split("<h2>")[0]
    stored = json.loads((tmp_path / "report.json").read_text())
    assert stored["gate"]["action"] == "rejected"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.json"]


def test_non_finite_values_become_null_in_json(tmp_path):
    write_report({"metrics": {"fid": float("nan"), "kid": np.float32(0.5)}}, tmp_path)
    text = (tmp_path / "report.json").read_text()
    assert "NaN" not in text
    assert json.loads(text)["metrics"] == {"fid": None, "kid": 0.5}


def test_overlay_marks_mask_in_red():
    image = np.zeros((8, 8), np.float32)
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 1
    rgb = overlay(image, mask)
    assert rgb.shape == (8, 8, 3)
    assert rgb[3, 3, 0] > rgb[3, 3, 1]  # inside: tinted red
    assert rgb[0, 0, 0] == rgb[0, 0, 1]  # outside: gray
    assert pair_grid(np.zeros((2, 8, 8)), np.zeros((2, 8, 8))).shape == (18, 18, 3)


@pytest.mark.parametrize("gate", [None, {}, "pending"])
def test_gate_absent_is_pending(gate):
    assert "pending" in render_report({"gate": gate})


@pytest.mark.parametrize(
    ("fid", "verdict"),
    [
        ([90.0, 60.0, None, 41.5], '<p class="good">FID fell from 90 at step 200 to 41.5 at step 1000.</p>'),
        (
            [90.0, 30.0, 35.0, 41.5],
            '<p class="good">FID fell from 90 at step 200 to 41.5 at step 1000 (lowest: 30 at step 400).</p>',
        ),
        ([40.0, 60.0, 55.0, 41.5], '<p class="bad">FID did not fall: 40 at step 200, 41.5 at step 1000.</p>'),
    ],
)
def test_fid_curve_is_charted_with_a_verdict_from_first_to_last_point(fid, verdict):
    curve = {"steps": [200, 400, 800, 1000], "fid": fid, "n_samples": 64, "n_samples_headline": 128, "notes": []}
    html = render_report({"fid_curve": curve})
    section = html.split("<h2>FID over training</h2>")[1].split("<h2>")[0]
    assert verdict in section and 'aria-label="FID by training step"' in section
    assert "FID of 64 synthetic samples" in section and "the headline FID uses 128" in section
    assert section.count("<tr>") == 1 + sum(v is not None for v in fid)  # header + one row per finite point
    assert_self_contained(html)


def test_fid_curve_absent_says_why():
    assert "the trainer kept no snapshots" in render_report({"fid_curve": {"steps": [], "fid": []}})
    assert "no trend to read" in render_report({"fid_curve": {"steps": [1000], "fid": [50.0]}})


def test_split_check_is_shown_beside_the_dataset_validation():
    leak = {
        "batch": "patients",
        "expectation": "expect_column_values_to_be_null",
        "column": "leak",
        "success": False,
        "severity": "critical",
        "unexpected_count": 2,
    }
    ok = {**leak, "batch": "split", "column": "split", "success": True, "unexpected_count": 0}
    report = {**full_report(), "split_validation": {"success": False, "results": [ok, leak]}}
    section = render_report(report).split("<h3>Patient-level split (rebalance stage)</h3>")[1]
    assert "2 expectations, 1 failed (1 critical, 0 warnings)." in section
    rows = section.split("<tbody>")[1].split("</tbody>")[0].split("<tr>")[1:]
    assert rows[0] == (
        "<td>patients</td><td>expect_column_values_to_be_null</td><td>leak</td>"
        '<td><span class="bad">FAIL</span></td><td>critical</td><td>2</td></tr>'
    )  # failures first, with the rows affected
    assert "No patient is in two splits" not in section

    passed = render_report({**report, "split_validation": {"success": True, "results": [ok]}})
    assert "No patient is in two splits" in passed
    assert "the split was made without the check" in render_report(full_report())


def test_split_check_names_the_classes_with_too_few_patients_in_a_split():
    short = "malignant: 1 patient in val, below validate.min_patients_per_class=2"
    warning = {
        "batch": "class_patients",
        "expectation": "expect_column_values_to_be_null",
        "column": "shortfall",
        "success": False,
        "severity": "warning",
        "unexpected_count": 1,
    }
    per_class = {"min_patients_per_class": 2, "severity": "warning", "shortfalls": [short]}
    check = {"success": True, "results": [warning], "patients_per_class": per_class}
    section = render_report({**full_report(), "split_validation": check}).split("Patient-level split")[1]
    assert "No patient is in two splits" in section  # a warning about class counts is no leak
    assert '<p class="pending">Classes with fewer than 2 patients in a split' in section
    assert f"<li>{short}</li>" in section and "1 failed (0 critical, 1 warnings)" in section
    enough = {**check, "results": [{**warning, "success": True}], "patients_per_class": {**per_class, "shortfalls": []}}
    assert "Every class has at least 2 patients in every split." in render_report(
        {**full_report(), "split_validation": enough}
    )


def test_each_feature_space_has_its_rows_with_the_extractor_and_sample_counts():
    report = full_report()
    report["metrics"].update({"medical_fid": 40.0, "holdout_medical_fid": 18.0, "medical_fid.benign": 60.0})
    report["metrics"].update({"diversity_ratio": 0.4, "min_class_diversity_ratio": 0.1})
    ident = {"dim": 2048, "n_real": 168, "n_fake": 128, "n_holdout": 48, "metrics": ["fid", "kid", "coverage"]}
    report["extractors"] = {
        "medical": {
            **ident,
            "role": "extra",
            "prefix": "medical_",
            "fingerprint": "ab" * 32,
            "dim": 128,
            "trained_on": "real train split",
            "n_train": 168,
            "from_cache": True,
        },
        "inception": {**ident, "role": "primary", "prefix": "", "fingerprint": "tf-inception-" + "c" * 40},
    }
    report["metrics"]["extractors"] = report["extractors"]  # as metrics.json carries it: not a metric row
    html = render_report(report)
    section = html.split("<h2>Metrics</h2>")[1].split("<h2>")[0]
    spaces = section.split("<h3>Feature spaces</h3>")[1]
    primary, rest = spaces.split("Feature space <b>inception</b> (primary)")[1].split("Feature space <b>medical</b>")
    assert (
        "weights <code>tf-inception-ccccccccccc\u2026</code>, 2048-d; 168 real (train split) vs 128 synthetic"
        in primary
    )
    assert "held-out real: 48 (val split)" in primary
    assert "<code>" + "ab" * 12 + "\u2026</code>, 128-d" in rest and "loaded from the cache" in rest
    assert "trained here on the 168 images of the real train split only" in rest
    # every row names its extractor (name + weights) and its sample counts; one row per space, never mixed
    assert metric_row("fid", section) == [
        "12.5",
        "[10, 15]",
        "lower",
        "5",
        "",
        "168 real / 128 synthetic",
        "inception tf-incep\u2026",
    ]
    assert metric_row("medical_fid", section) == [
        "40",
        "",
        "lower",
        "18",
        "",
        "168 real / 128 synthetic",
        "medical abababab\u2026",
    ]
    fidelity, diversity = section.split('<h3 id="group-fidelity">')[1].split('<h3 id="group-diversity">')
    assert "<td>medical_fid</td>" in fidelity and "<td>dice_gain</td>" not in fidelity
    assert "<td>dice_gain</td>" in section.split('<h3 id="group-utility">')[1]
    assert metric_row("min_class_diversity_ratio", diversity)[:4] == ["0.1", "", "\u2248 1 (as real)", ""]
    assert "<td>extractors</td>" not in section
    # per class: a table per feature space, the class's value with its interval
    medical = section.split("Fidelity per class &mdash; medical space")[1].split("</table>")[0]
    assert "<td>benign" in medical and ">60<" in medical
    assert "inception (primary, tf-inception\u2026), medical (extra, abababababab\u2026)" in html  # header: both
    assert_self_contained(html)


def test_collapse_ratios_are_charted_and_listed_beside_the_fid_curve():
    curve = {
        "steps": [200, 400, 1000],
        "fid": [90.0, 60.0, 41.5],
        "diversity_ratio": [0.2, 0.5, 0.7],
        "min_class_diversity_ratio": [0.05, 0.3, None],
        "lesion_spread_ratio": [0.0, 0.4, 0.8],
        "n_samples": 64,
    }
    section = render_report({"fid_curve": curve}).split("<h2>FID over training</h2>")[1].split("<h2>")[0]
    assert 'aria-label="collapse ratios by training step"' in section
    assert "<th>diversity ratio (worst class)</th><th>lesion spread ratio (worst class)</th>" in section
    assert "<td>400</td><td>60</td><td>0.5</td><td>0.3</td><td>0.4</td>" in section
    assert "<td>1000</td><td>41.5</td><td>0.7</td><td>\u2013</td><td>0.8</td>" in section


def test_consistency_section_shows_the_lesion_spread_and_worst_class():
    report = full_report()
    report["consistency"].update(min_class_diversity_ratio=0.12, lesion_spread_ratio=0.05, diversity_ratio=0.5)
    report["consistency"]["real"]["benign"]["lesion_spread"] = 9.5
    report["consistency"]["synthetic"]["benign"]["lesion_spread"] = 0.5
    section = render_report(report).split("consistency and diversity</h2>")[1].split("<h2>")[0]
    assert "worst class: 0.12" in section and "worst lesion class: 0.05" in section
    assert "<td>9.5</td><td>0.5</td></tr>" in section
