"""The review report in a real browser (headless Chromium): every section present, nothing wider than a 1280 px
window, images decoded, printable; the screenshot is kept as a test artifact (runs/test-artifacts/)."""

import re

import numpy as np

from components.evaluate.interpret import saliency_grid
from components.evaluate.report import SECTIONS, pair_grid, png_base64, write_report

CLASSES = ["normal", "benign", "malignant_lesion_with_a_long_name"]
ARMS = [
    ("real", "real"),
    ("weighted-sampler", "weighted_sampler"),
    ("class-weighted-loss", "class_weighted_loss"),
    ("real+synthetic", "real_synth"),
    ("synthetic", "synth"),
]


def tiles(n: int, size: int = 64, seed: int = 0) -> str:
    """A quickstart-sized grid (``n`` image + mask pairs of ``size`` px) as base64 PNG."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (n, size, size)).astype(np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    masks[:, 20:34, 24:40] = 1
    return png_base64(pair_grid(images, masks))


def space_metrics(prefix: str, rng: np.random.Generator) -> dict:
    out = {}
    for name in ("fid", "kid", "precision", "recall", "density", "coverage"):
        for scope in ["", *(f".{c}" for c in CLASSES)]:
            v = float(rng.uniform(0.05, 0.9)) * (200 if name == "fid" else 1)
            out[f"{prefix}{name}{scope}"] = v
            out[f"{prefix}{name}_ci_low{scope}"] = v * 0.9
            out[f"{prefix}{name}_ci_high{scope}"] = v * 1.1
        out[f"holdout_{prefix}{name}"] = float(rng.uniform(0.1, 0.9))
    return out


def quickstart_sized_report() -> dict:
    """Every section of the report, at the quickstart's sizes (64 px, 3 classes, 8 samples, all five Dice arms)."""
    rng = np.random.default_rng(0)
    metrics = {**space_metrics("", rng), **space_metrics("medical_", rng)}
    for _, key in ARMS:
        for scope in ["", ".benign", f".{CLASSES[2]}"]:
            metrics.update(
                {f"dice_{key}{scope}": 0.6, f"dice_{key}_ci_low{scope}": 0.5, f"dice_{key}_ci_high{scope}": 0.7}
            )
            if key != "real":
                gain = "dice_gain" if key == "real_synth" else f"dice_gain_{key}"
                metrics.update({f"{gain}{scope}": 0.05, f"{gain}_ci_low{scope}": -0.01, f"{gain}_ci_high{scope}": 0.1})
        metrics[f"seg_fp_rate_{key}"] = 0.17
    metrics.update(
        {
            "diversity_ratio": 0.72,
            "diversity_ratio_weighted": 0.4,
            "min_class_diversity_ratio": 0.31,
            "max_class_diversity_ratio": 1.2,
            "lesion_spread_ratio": 0.5,
            "nn_copy_fraction": 0.0,
            "nn_similarity_max": 0.91,
            "nn_similarity_mean": 0.7,
            "nn_real_baseline_median": 0.8,
            "class_accuracy": 0.6,
            "holdout_class_accuracy": 0.9,
            "selection_fid_gap": 1.0,
            "selection_fid_gap_ci_low": -1.9,
            "selection_fid_gap_ci_high": 3.8,
            "n_real_train": 132.0,
            "n_synthetic": 128.0,
            "selected_step": 400.0,
            "final_step": 1000.0,
            "dice_baseline_ok": 1.0,
            "topup_n": 40.0,
        }
    )
    ident = {
        "dim": 2048,
        "n_real": 132,
        "n_fake": 128,
        "n_holdout": 40,
        "n_patients": 14,
        "metrics": ["fid", "kid", "precision", "recall", "density", "coverage"],
        "reference_sha256": "9" * 64,
        "holdout_sha256": "8" * 64,
        "resampling": "patients (cluster bootstrap of the real side; synthetic samples row by row)",
        "n_real_per_class": dict(zip(CLASSES, [90, 32, 10], strict=True)),
        "n_fake_per_class": dict(zip(CLASSES, [88, 31, 9], strict=True)),
        "min_class_samples": 20,
    }
    steps = list(range(0, 1000, 5))
    grid8, one = tiles(8), tiles(1)
    interp = tiles(7, seed=3)
    sal = png_base64(saliency_grid(np.zeros((2, 64, 64), np.float32), rng.uniform(0, 1, (2, 64, 64))))
    return {
        "title": "medgan-ops evaluation report",
        "run_key": "20261203-074128-5503e2",
        "created": "2026-12-03T08:00:00Z",
        "preset": "quickstart",
        "dataset": {
            "version": {"rev": "6e4291b" * 3, "md5": "0123456789abcdef" * 2},
            "hash": "f" * 64,
            "split_sizes": "132 / 40 / 44",
        },
        "model": {
            "name": "model",
            "generator": {"step": 400, "kwargs": {"z_dim": 128}},
            "options": {"train": {"steps": 1000}},
        },
        "config": {"feature_extractor": "inception", "bootstrap": 50, "long": "x" * 300},
        "metrics": metrics,
        "extractors": {
            "inception": {
                **ident,
                "role": "primary",
                "prefix": "",
                "fingerprint": "tf-inception-" + "c" * 40,
                "also": ["nn_copy_fraction"],
            },
            "medical": {
                **ident,
                "role": "extra",
                "prefix": "medical_",
                "fingerprint": "ab" * 32,
                "dim": 128,
                "trained_on": "real train split",
                "n_train": 132,
            },
        },
        "notes": [],
        "dice": {
            "arms": [
                {
                    "arm": arm,
                    "key": key,
                    "dice": 0.6,
                    "ci": [0.5, 0.7],
                    "per_class": {c: 0.6 for c in CLASSES[1:]},
                    "per_class_ci": {c: [0.5, 0.7] for c in CLASSES[1:]},
                    "per_seed": [0.55, 0.6, 0.65],
                    "fp_rate": 0.17,
                    "fp_rate_ci": [0.1, 0.25],
                    "fp_area": 0.001,
                }
                for arm, key in ARMS
            ],
            "gains": [
                {"arm": arm, "class": scope, "gain": 0.05, "ci": [-0.01, 0.1], "verdict": "no detectable difference"}
                for arm, _ in ARMS[1:]
                for scope in (None, *CLASSES[1:])
            ],
            "classes": [
                {"class": c, "n_test": 9, "n_patients": 3, "baseline": 0.6, "baseline_ok": True} for c in CLASSES[1:]
            ],
            "baseline": 0.6,
            "baseline_ok": True,
            "min_baseline_dice": 0.2,
            "n_lesion_free": 30,
            "seeds": [1, 2, 3],
            "steps": 100,
            "batch_size": 16,
            "n_synthetic": 40,
            "model": "MONAI BasicUNet(4, 8, 16, 32, 64, 4)",
            "schedule": "Adam, one-cycle to lr 0.01 (30% warm-up), Dice + BCE, random left-right flips, "
            "lesion prior 3%",
        },
        "samples": [
            {"class": c, "synthetic": grid8, "real": grid8, "n_synthetic": 8, "n_real": 8, "n_real_patients": 6}
            for c in CLASSES
        ],
        "interpretability": {
            "interpolations": [{"class": c, "steps": 7, "grid": interp} for c in CLASSES],
            "discriminator": {
                "step": 1000,
                "arch": "sn",
                "checkpoint_sha256": "d" * 64,
                "note": "the discriminator is the checkpoint's, of step 1000; the generator evaluated is of step 400",
            },
            "saliency": [
                {
                    "class": c,
                    "real": {"grid": sal, "logits": [1.2, 0.3], "lesion_share": 0.3, "mask_area": 0.05},
                    "synthetic": {"grid": sal, "logits": [-0.4, -1.1], "lesion_share": 0.1, "mask_area": 0.05},
                }
                for c in CLASSES
            ],
        },
        "memorization": {
            "threshold": 0.97,
            "copy_fraction": 0.0,
            "n_flagged": 0,
            "similarity_mean": 0.7,
            "similarity_max": 0.91,
            "real_baseline_median": 0.8,
        },
        "neighbours": [
            {
                "synthetic": one,
                "real": one,
                "similarity": 0.9,
                "flagged": i == 0,
                "class": CLASSES[i % 3],
                "synthetic_index": i,
                "real_sample_id": f"s{i}",
            }
            for i in range(8)
        ],
        "trust": {
            "classifier": "medical feature network's classifier",
            "threshold": 0.97,
            "per_class": [
                {
                    "class": c,
                    "accuracy": 0.6,
                    "n": 40,
                    "holdout_accuracy": 0.9,
                    "holdout_n": 13,
                    "memorization": {"copy_fraction": 0.0, "similarity_max": 0.9, "real_baseline_median": 0.8},
                }
                for c in CLASSES
            ],
        },
        "topup": {
            "built": True,
            "n": 40,
            "generator_step": 400,
            "generator_sha256": "e" * 64,
            "target_ratio": 0.5,
            "per_class": {
                c: {
                    "real": 32,
                    "need": 13,
                    "drawn": 260,
                    "acceptance_rate": 0.05,
                    "kept": 13,
                    "shortfall": 0,
                    "rejected": {"outlier": 200, "mask": 40, "copy": 7},
                }
                for c in CLASSES
            },
            "dvc": {
                "tracked": True,
                "md5": "a" * 32 + ".dir",
                "nfiles": 80,
                "remote": "/work/main/.dvc-storage/" + "deep/" * 8,
            },
            "feature_space": {"name": "medical"},
        },
        "consistency": {
            "diversity_ratio": 0.72,
            "min_class_diversity_ratio": 0.31,
            "lesion_spread_ratio": 0.5,
            "real": {c: {"contrast": 0.9, "mask_area": 0.02, "spread": 0.3, "lesion_spread": 9.5} for c in CLASSES},
            "synthetic": {
                c: {"contrast": 0.8, "mask_area": 0.03, "label_mismatch": 0.0, "spread": 0.2, "lesion_spread": 4.0}
                for c in CLASSES
            },
        },
        "losses": {
            "step": steps,
            **{
                k: list(rng.normal(1, 0.2, len(steps)))
                for k in ("loss_g", "loss_d", "d_real", "d_fake", "img_per_s", "r1", "grad_norm_d")
            },
        },
        "fid_curve": {
            "steps": [200, 400, 600, 800, 1000],
            "fid": [260.0, 219.0, 225.0, 222.0, 220.0],
            "diversity_ratio": [0.2, 0.5, 0.6, 0.6, 0.7],
            "lesion_spread_ratio": [0.1, 0.4, 0.5, 0.5, 0.5],
            "n_samples": 64,
            "n_samples_headline": 128,
            "notes": [],
        },
        "selection": {
            "mode": "best_fid",
            "selected_step": 400,
            "final_step": 1000,
            "steps": [200, 400, 600, 800, 1000],
            "fid": [262.0, 219.0, 226.0, 223.0, 220.0],
            "n_samples": 64,
            "real_split": "val",
            "notes": [],
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
        "champion": {
            "compared": True,
            "version": "3",
            "champion_fid": 225.0,
            "challenger_fid": 219.0,
            "improvement": 6.0,
            "ci": [-2.0, 14.0],
            "verdict": "within noise",
            "n_synthetic": 128,
            "n_real": 132,
            "resamples": 50,
            "extractor": {"name": "inception", "fingerprint": "tf-inception-" + "c" * 40},
        },
        "class_distribution": {
            s: dict(zip(CLASSES, [n, n // 3, n // 10], strict=True))
            for s, n in (("train", 90), ("val", 27), ("test", 30))
        },
        "validation": {
            "results": [
                {
                    "expectation": "expect_column_values_to_be_in_set_with_a_long_name_" * 2,
                    "column": "label_idx" * 3,
                    "success": i % 4 != 0,
                    "severity": "critical",
                    "unexpected_count": i,
                }
                for i in range(15)
            ]
        },
        "split_validation": {
            "success": True,
            "results": [
                {
                    "batch": "split",
                    "expectation": "expect_column_values_to_be_null",
                    "column": "leak",
                    "success": True,
                    "severity": "critical",
                    "unexpected_count": 0,
                }
            ],
        },
        "gate": {
            "action": "promoted",
            "version": "4",
            "champion_version": "3",
            "model_name": "medgan-generator",
            "reason": "floor dice_gain_ci_low.malignant_lesion_with_a_long_name: -0.01 meets >= -0.05; "
            "fid: 219 meets < 225 (champion 225, margin 0)",
            "rules": [{"name": "fid", "mode": "min", "margin": 0.0}],
            "floor": [{"name": f"dice_gain_ci_low.{CLASSES[2]}", "mode": "at_least", "margin": -0.05}],
            "challenger_metrics": metrics,
            "champion_metrics": {"fid": 225.0, "kid": 0.2},
            "lock": "postgresql+psycopg2://postgres@127.0.0.1:5432/" + "medgan" * 10,
        },
        "timings": {"dice": 12.0, "interpretability": 0.4},
    }


def test_the_report_fits_1280px_has_every_section_and_prints(chromium, artifacts_dir, tmp_path):
    page = write_report(quickstart_sized_report(), tmp_path)
    text = page.read_text()
    assert "<script" not in text.lower() and not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text)

    layout = chromium.measure(page, width=1280)
    assert layout["scrollWidth"] <= layout["clientWidth"] == 1280, f"wider than the window: {layout['wide']}"
    assert not layout["wide"], layout["wide"]
    headings = " | ".join(layout["headings"])
    for section in SECTIONS:
        assert section in headings, section
    assert headings.index("Verdict") < headings.index("Metrics") < headings.index("Details")  # top-down
    assert layout["images"] >= 20 and layout["brokenImages"] == 0  # every embedded PNG decodes

    out = artifacts_dir()
    shot = chromium.screenshot(page, out / "report-1280.png", width=1280, height=min(layout["scrollHeight"], 12000))
    from PIL import Image

    with Image.open(shot) as im:
        assert im.width == 1280 and im.height > 900
    chromium.pdf(page, out / "report.pdf")
