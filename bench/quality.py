"""GAN quality of a training variant against a baseline: headline FID, diversity and k-NN metrics over seeds.

Both arms train the quickstart model on the same sample data (``medgan phantom``, ingested with a fixed patient-ID
salt, so the split is the same every run) and are evaluated by the real evaluate stage (best-snapshot selection,
FID/KID, precision/recall/density/coverage, ``diversity_ratio``); only the Dice part is shortened
(:data:`SHORT_DICE`), since it does not enter the comparison. Training on CPU is deterministic, so a seed's
figures repeat exactly on the same machine and torch build. GAN quality varies by tens of FID points between seeds:
compare the arms seed by seed, over several seeds.

    python bench/quality.py                                   # baseline train.mbstd_group=0 vs the default (4)
    python bench/quality.py --seeds 0 --baseline train.mode_seeking=0 --variant train.mode_seeking=0.005
    python bench/quality.py --preset quickstart-long ...      # the longer CPU budget (~30 min of training per arm)

Last line: ``quality: ratio=<mean variant FID / mean baseline FID> (...)``; below 1 means the variant is better.

With ``--results FILE`` every finished arm and seed is appended to FILE (JSON lines) under a key of the preset, the
overrides, the seed, the torch thread count and a hash of the project's code (``components/``), and an arm already
in FILE under the same key is read back instead of trained again. A long comparison can so be resumed, or split
into one process per seed that share the two cores (``--threads 1``) and a last call that only reads the results.
A seed's figures depend on the thread count (summation order), so compare arms run with the same ``--threads``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.config import resolve  # noqa: E402
from components.evaluate.core import evaluate  # noqa: E402
from components.ingest.core import ingest  # noqa: E402
from components.metric_names import HEADLINE_DISTRIBUTION  # noqa: E402
from components.phantom import write_phantom  # noqa: E402
from components.rebalance.core import rebalance  # noqa: E402
from components.train.core import train  # noqa: E402

SALT = "experiment-salt-0123456789abcdef"
# One segmenter seed of 20 steps per Dice arm: the Dice evidence is not what this benchmark compares.
SHORT_DICE = ("eval.seg_seeds=1", "eval.seg_steps=20")
REPORTED = (
    *HEADLINE_DISTRIBUTION,
    "diversity_ratio",
    "min_class_diversity_ratio",
    "lesion_spread_ratio",
    "selected_step",
)


# Averaged over the seeds beside FID in the summary lines (collapse within a class, the medical feature space).
SUMMARY = ("min_class_diversity_ratio", "lesion_spread_ratio", "medical_fid", "medical_recall", "medical_coverage")
ROOT = Path(__file__).resolve().parents[1]


def code_hash() -> str:
    """SHA-256 over the project's stage code, so cached results are reused only for the code that made them."""
    h = hashlib.sha256()
    for path in sorted((ROOT / "components").rglob("*.py")):
        h.update(path.relative_to(ROOT).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def result_key(preset: str, overrides: list[str], seed: int) -> str:
    """What a cached arm result must match: preset, overrides, seed, threads and code."""
    return json.dumps([preset, sorted(overrides), seed, torch.get_num_threads(), code_hash()])


def read_results(path: Path | None) -> dict[str, dict]:
    """The cached arm results of ``path`` by :func:`result_key` (empty without a file)."""
    if path is None or not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["key"]: row["result"] for row in rows}


def prepare(work: Path, preset: str = "quickstart") -> tuple[Path, Path]:
    """The sample data as the quickstart builds it: phantom DICOM -> archive -> patient-level split."""
    cfg = resolve(preset)
    write_phantom(work / "data")
    ingest(work / "data", work / "archive", cfg, dataset_version={"tracked": False}, salt=SALT)
    rebalance(work / "archive", work / "split", cfg)
    return work / "archive", work / "split"


def run_arm(
    archive: Path, split: Path, out: Path, overrides: list[str], seed: int, preset: str = "quickstart"
) -> dict[str, float]:
    """Train and evaluate one arm at one seed; the flat metrics plus the stage times."""
    cfg = resolve(preset, [*overrides, f"seed={seed}", *SHORT_DICE])
    clock = time.perf_counter()
    train(archive, split, out / "model", cfg)
    train_s = time.perf_counter() - clock
    clock = time.perf_counter()
    metrics = evaluate(archive, split, out / "model", out / "eval", cfg, cache_dir=out.parent / "cache")
    report = json.loads((out / "eval" / "report.json").read_text())
    return {
        **{k: metrics.get(k) for k in REPORTED},
        "curve": report["fid_curve"]["fid"],
        "train_s": train_s,
        "eval_s": time.perf_counter() - clock,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma list of training seeds")
    parser.add_argument("--preset", default="quickstart", help="config preset of both arms (e.g. quickstart-long)")
    parser.add_argument("--baseline", action="append", default=None, help="override of the baseline arm (repeat)")
    parser.add_argument("--variant", action="append", default=None, help="override of the variant arm (repeat)")
    parser.add_argument("--work", default="", help="keep the data and models here (default: a temporary folder)")
    parser.add_argument("--results", default="", help="JSON-lines file of finished arms, read back and appended to")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    results_file = Path(args.results) if args.results else None
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = {"baseline": args.baseline or ["train.mbstd_group=0"], "variant": args.variant or []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        cached = read_results(results_file)
        keys = {(n, seed): result_key(args.preset, o, seed) for n, o in arms.items() for seed in seeds}
        data = None if all(k in cached for k in keys.values()) else prepare(work, args.preset)
        fids: dict[str, list[float]] = {name: [] for name in arms}
        others: dict[str, dict[str, list[float]]] = {name: {k: [] for k in SUMMARY} for name in arms}
        for seed in seeds:
            for name, overrides in arms.items():
                key = keys[(name, seed)]
                if key in cached:
                    res = cached[key]
                else:
                    res = run_arm(*data, work / f"{name}_s{seed}", overrides, seed, args.preset)
                    if results_file is not None:
                        with open(results_file, "a") as f:
                            f.write(json.dumps({"key": key, "result": res}) + "\n")
                fids[name].append(res["fid"])
                for k in SUMMARY:
                    others[name][k].append(np.nan if res.get(k) is None else res[k])
                shown = " ".join(f"{k}={res[k]:.4g}" for k in REPORTED if res[k] is not None)
                curve = "/".join(f"{v:.0f}" for v in res["curve"] if v is not None)
                print(
                    f"{name} {overrides or 'defaults'} seed={seed}: {shown} curve={curve} "
                    f"(train {res['train_s']:.0f} s, eval {res['eval_s']:.0f} s)",
                    flush=True,
                )
    base, var = float(np.mean(fids["baseline"])), float(np.mean(fids["variant"]))
    per_seed = ", ".join(
        f"s{s} {b:.1f}->{v:.1f}" for s, b, v in zip(seeds, fids["baseline"], fids["variant"], strict=True)
    )
    for name in arms:
        means = ", ".join(f"{k} {np.nanmean(v):.3f}" for k, v in others[name].items() if np.isfinite(v).any())
        print(f"{name} mean over seeds: FID {np.mean(fids[name]):.1f}, {means}")
    print(
        f"quality: ratio={var / base:.3f} ({args.preset}, headline FID, mean over seeds {args.seeds}: "
        f"baseline {arms['baseline']} "
        f"{base:.1f}, variant {arms['variant'] or 'defaults'} {var:.1f}; {per_seed})"
    )


if __name__ == "__main__":
    main()
