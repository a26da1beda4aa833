"""The rare-class proof: does the synthetic top-up help a segmenter on real patients of the rarest lesion class?

Per training seed, the default model (``split.strategy=gan-topup``) is trained on the quickstart sample data (the
same data and split as ``bench/quality.py``) and the real evaluate stage builds the top-up from the generator it
selects and runs the Dice comparison with every arm (:data:`components.config.SEG_ARMS`) at ``--seg-seeds``
segmenter seeds: real only (the baseline of the same run), weighted sampler, class-weighted loss, real + top-up,
top-up only. Per seed it prints each arm's Dice on the rare class and the gain of real + top-up over real with its
patient-level paired-bootstrap interval; over seeds, the mean gain and a t-interval of the per-seed gains (seeds
whose real-only segmenter did not learn the class, ``eval.seg_min_baseline_dice``, have no gain and are left out).

    python bench/topup.py                                   # quickstart, seeds 0,1,2
    python bench/topup.py --preset quickstart-long          # the longer CPU budget (~30 min of training per seed)
    python bench/topup.py --seeds 1 --threads 1 --results r.jsonl   # one seed per process; rerun to summarise

Last line: ``topup: ratio=<mean rare-class Dice of real + top-up / mean of real only> (...)``; above 1 means the
top-up helped. ``--results`` caches finished seeds as in ``bench/quality.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import REPORTED, prepare, read_results, result_key  # noqa: E402

from components.config import SEG_ARMS, resolve  # noqa: E402
from components.evaluate.core import evaluate  # noqa: E402
from components.rebalance.core import load_split  # noqa: E402
from components.train.core import train  # noqa: E402

TOPUP = "real+synthetic"
# The generator's quality beside the Dice evidence (issue 11's goals): held-out real references and per-class spread.
QUALITY = (
    *REPORTED,
    "max_class_diversity_ratio",
    "holdout_fid",
    "holdout_medical_recall",
    "holdout_medical_coverage",
    "mask_label_mismatch",
)


def rare_class(split: Path) -> str:
    """The lesion class with the fewest train images (the sample data's: malignant)."""
    table = load_split(split)
    counts = table[table["split"] == "train"]["label"].value_counts()
    return str(counts[counts.index != "normal"].idxmin())


def run_seed(archive: Path, split: Path, out: Path, overrides: list[str], seed: int, preset: str, rare: str) -> dict:
    """Train and evaluate one seed; the rare class's Dice per arm, the top-up's gain with its interval, the top-up."""
    cfg = resolve(preset, [*overrides, f"seed={seed}"])
    clock = time.perf_counter()
    train(archive, split, out / "model", cfg)
    train_s = time.perf_counter() - clock
    clock = time.perf_counter()
    metrics = evaluate(
        archive, split, out / "model", out / "eval", cfg, cache_dir=out.parent / "cache", topup_dir=out / "topup"
    )
    report = json.loads((out / "eval" / "report.json").read_text())
    dice, topup = report["dice"], report["topup"]
    gain = next(g for g in dice["gains"] if g["arm"] == TOPUP and g["class"] == rare)
    baseline = next(c for c in dice["classes"] if c["class"] == rare)
    return {
        "rare": rare,
        "dice": {a["arm"]: a["per_class"][rare] for a in dice["arms"]},
        "dice_ci": {a["arm"]: a["per_class_ci"][rare] for a in dice["arms"]},
        "gain": gain["gain"],
        "gain_ci": gain["ci"],
        "verdict": gain["verdict"],
        "baseline_ok": baseline["baseline_ok"],
        "baseline_worst_seed": baseline["baseline_worst_seed"],
        "n_test_patients": baseline["n_patients"],
        "topup_kept": (topup.get("per_class") or {}).get(rare, {}).get("kept", 0),
        "topup_n": topup.get("n", 0),
        "selected_step": report["selection"]["selected_step"],
        "quality": {k: metrics.get(k) for k in QUALITY},
        "diversity_per_class": {c: metrics.get(f"diversity_ratio.{c}") for c in cfg.data.classes},
        "train_s": train_s,
        "eval_s": time.perf_counter() - clock,
    }


def signed(value: float | None) -> str:
    """A gain with its sign, or ``undefined`` (a baseline below the floor, or no top-up pairs)."""
    return "undefined" if value is None or not np.isfinite(value) else f"{value:+.3f}"


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (nan with fewer than two)."""
    if len(values) < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values))
    return float(np.mean(values) - half), float(np.mean(values) + half)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma list of training seeds")
    parser.add_argument("--preset", default="quickstart", help="config preset (e.g. quickstart-long)")
    parser.add_argument("--seg-seeds", type=int, default=3, help="segmenter seeds per arm, pooled per test slice")
    parser.add_argument("--override", action="append", default=[], help="extra config override (repeat)")
    parser.add_argument("--work", default="", help="keep the data and models here (default: a temporary folder)")
    parser.add_argument("--results", default="", help="JSON-lines file of finished seeds, read back and appended to")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    overrides = [
        "split.strategy=gan-topup",
        f"eval.seg_arms={','.join(SEG_ARMS)}",
        f"eval.seg_seeds={args.seg_seeds}",
        *args.override,
    ]
    results_file = Path(args.results) if args.results else None
    seeds = [int(s) for s in args.seeds.split(",")]
    keys = {seed: result_key(args.preset, ["bench/topup", *overrides], seed) for seed in seeds}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        cached = read_results(results_file)
        data = None if all(k in cached for k in keys.values()) else prepare(work, args.preset)
        for seed in seeds:
            if keys[seed] in cached:
                res = cached[keys[seed]]
            else:
                assert data is not None
                res = run_seed(*data, work / f"topup_s{seed}", overrides, seed, args.preset, rare_class(data[1]))
                if results_file is not None:
                    with open(results_file, "a") as f:
                        f.write(json.dumps({"key": keys[seed], "result": res}) + "\n")
            results.append(res)
            arms = " ".join(f"{a}={v:.3f}" for a, v in res["dice"].items())
            ci = "..".join(signed(v) for v in res["gain_ci"])
            print(
                f"seed={seed} {res['rare']}: {arms}; gain {signed(res['gain'])} [{ci}] {res['verdict']} "
                f"(baseline worst segmenter seed {res['baseline_worst_seed']:.3f}, {res['n_test_patients']} test "
                f"patients, top-up kept {res['topup_kept']} of {res['topup_n']}; selected step {res['selected_step']}; "
                f"train {res['train_s']:.0f} s, eval {res['eval_s']:.0f} s)",
                flush=True,
            )
    rare = results[0]["rare"]
    real = float(np.mean([r["dice"]["real"] for r in results]))
    with_topup = float(np.mean([r["dice"][TOPUP] for r in results]))
    gains = [r["gain"] for r in results if r["baseline_ok"] and r["gain"] is not None and np.isfinite(r["gain"])]
    low, high = t_interval(gains)
    for arm in SEG_ARMS:
        values = [r["dice"].get(arm) for r in results]
        print(f"{arm}: {rare} Dice mean over seeds {np.mean([v for v in values if v is not None]):.3f}")
    print(
        f"topup: ratio={with_topup / real:.3f} ({args.preset}, {rare} Dice over seeds {args.seeds}: real only "
        f"{real:.3f}, real+top-up {with_topup:.3f}; gain mean {signed(float(np.mean(gains)) if gains else None)} over "
        f"{len(gains)} seed(s) with a learned baseline, t-interval {signed(low)}..{signed(high)}; per seed "
        + ", ".join(f"s{s} {signed(r['gain'])}" for s, r in zip(seeds, results, strict=True))
        + ")"
    )


if __name__ == "__main__":
    main()
