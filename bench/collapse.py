"""Within-class collapse over training, a training variant against a baseline: a fast screen before bench/quality.py.

Both arms train the quickstart model on the same sample data as ``bench/quality.py`` (its ``prepare``); no evaluate
stage runs. Instead every EMA snapshot the trainer keeps (steps 200, 400, ... 1000 at the quickstart) and the final
generator draw ``--per-class`` pairs of every class from one latent seed, and their per-class statistics are read
against the real train split with the evaluate stage's own collapse metrics (:mod:`components.metrics.collapse`):
pixel-spread ratio per class, lesion-position spread ratio per lesion class, and the share of samples whose mask
contradicts the class (a lesion class without a lesion, or the reverse). Seconds per snapshot on top of the training,
so about 5 min per arm and seed on one CPU thread, against about 8 min for a ``bench/quality.py`` arm; it says nothing
about fidelity (no FID): confirm what it finds with ``bench/quality.py`` over 3 seeds.

    python bench/collapse.py --seeds 0 --threads 1 --variant train.diffaugment=cutout
    python bench/collapse.py --seeds 0,1 --baseline train.diffaugment_per_group=false --variant ...

Last line: ``collapse: ratio=<mean worst-class diversity ratio, variant / baseline> (...)``; above 1, the variant's
worst class is the more varied (a ratio far above 1 per class is noise, not variety: read the per-class lines).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import prepare  # noqa: E402

from components.archive import open_archive  # noqa: E402
from components.config import resolve  # noqa: E402
from components.evaluate.core import check_split, load_split, train_split_data  # noqa: E402
from components.gan.sampling import generate, list_snapshots, load_generator  # noqa: E402
from components.metrics.collapse import class_statistics, collapse_ratios  # noqa: E402
from components.metrics.consistency import pair_statistics  # noqa: E402
from components.train.core import train  # noqa: E402

LATENT_SEED = 123  # every generator of a run draws the same latents


def generator_collapse(
    path: Path, real: dict, classes: list[str], lesion: list[str], per_class: int
) -> dict[str, dict[str, float]]:
    """Per class: ``diversity`` and (lesion classes) ``lesion`` ratios, and ``mismatch`` (mask contradicts class)."""
    generator, _ = load_generator(path)
    labels = np.repeat(np.arange(len(classes)), per_class)
    images, masks = generate(generator, labels, seed=LATENT_SEED)
    synth = pair_statistics(images, masks, np.asarray(classes)[labels], classes, lesion)
    ratios = collapse_ratios(real, synth)["per_class"]
    return {
        cls: {
            "diversity": ratios[cls]["diversity_ratio"],
            "lesion": ratios[cls].get("lesion_spread_ratio", float("nan")),
            "mismatch": synth[cls]["label_mismatch"],
        }
        for cls in classes
    }


def real_statistics(data: tuple[Path, Path]) -> tuple[dict, list[str], list[str]]:
    """The real train split's per-class statistics, every arm's reference, with the classes and lesion classes."""
    archive_dir, split_dir = data
    archive = open_archive(archive_dir)
    fit = train_split_data(archive, check_split(load_split(split_dir), split_dir, len(archive)))
    classes, lesion = archive.classes, archive.lesion_classes
    return class_statistics(fit.images, fit.masks, np.asarray(classes)[fit.labels], classes, lesion), classes, lesion


def run_arm(
    data: tuple[Path, Path],
    reference: tuple[dict, list[str], list[str]],
    out: Path,
    overrides: list[str],
    seed: int,
    per_class: int,
    preset: str = "quickstart",
) -> dict:
    """Train one arm; the collapse statistics of each snapshot (by step) and of the final generator."""
    archive_dir, split_dir = data
    cfg = resolve(preset, [*overrides, f"seed={seed}"])
    clock = time.perf_counter()
    train(archive_dir, split_dir, out / "model", cfg)
    train_s = time.perf_counter() - clock
    steps = {step: generator_collapse(p, *reference, per_class) for step, p in list_snapshots(out / "model")}
    return {"steps": steps, "final": generator_collapse(out / "model", *reference, per_class), "train_s": train_s}


def line(stats: dict[str, dict[str, float]]) -> str:
    """``diversity normal/benign/... lesion ... mismatch ...`` of one generator."""
    div = "/".join(f"{s['diversity']:.2f}" for s in stats.values())
    les = "/".join(f"{s['lesion']:.2f}" for s in stats.values() if np.isfinite(s["lesion"]))
    mis = np.mean([s["mismatch"] for s in stats.values()])
    return f"diversity {div} lesion {les or '-'} mismatch {mis:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0", help="comma list of training seeds")
    parser.add_argument("--baseline", action="append", default=None, help="override of the baseline arm (repeat)")
    parser.add_argument("--variant", action="append", default=None, help="override of the variant arm (repeat)")
    parser.add_argument("--preset", default="quickstart", help="config preset of both arms (tiny: a smoke run)")
    parser.add_argument("--per-class", type=int, default=64, help="samples per class behind each statistic")
    parser.add_argument("--work", default="", help="keep the data and models here (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = {"baseline": args.baseline or [], "variant": args.variant or []}
    worst: dict[str, list[float]] = {name: [] for name in arms}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        data = prepare(work, args.preset)
        reference = real_statistics(data)
        for seed in seeds:
            for name, overrides in arms.items():
                res = run_arm(data, reference, work / f"{name}_s{seed}", overrides, seed, args.per_class, args.preset)
                for step, stats in res["steps"].items():
                    print(f"{name} seed={seed} step {step}: {line(stats)}", flush=True)
                print(
                    f"{name} {overrides or 'defaults'} seed={seed} final: {line(res['final'])} "
                    f"(train {res['train_s']:.0f} s)",
                    flush=True,
                )
                worst[name].append(min(s["diversity"] for s in res["final"].values()))
    base, var = float(np.mean(worst["baseline"])), float(np.mean(worst["variant"]))
    per_seed = ", ".join(
        f"s{s} {b:.2f}->{v:.2f}" for s, b, v in zip(seeds, worst["baseline"], worst["variant"], strict=True)
    )
    print(
        f"collapse: ratio={var / base:.3f} ({args.preset}, worst-class diversity ratio of the final EMA generator, "
        f"mean over seeds {args.seeds}: baseline {arms['baseline'] or 'defaults'} {base:.2f}, variant "
        f"{arms['variant'] or 'defaults'} {var:.2f}; {per_seed})"
    )


if __name__ == "__main__":
    main()
