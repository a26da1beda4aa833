"""GAN training throughput: fp32 eager vs the fast path (bf16 autocast + channels_last + torch.compile).

Both modes train the real ``Trainer`` on the same synthetic archive (random anatomy-like blobs with masks, so the
benchmark needs no DICOM stack and runs on a bare GPU box) for the quickstart model and the 128-px preset model.
Reported: images/s after warm-up steps, the ratio fast/eager, and the share of a step spent drawing the batch
(the loader), which must stay small for the GPU to be kept busy.

    python bench/train.py                 # auto device; CPU runs fp32 eager vs bf16 (compile off)
    python bench/train.py --steps 200 --presets quickstart,ct-128

Last line: ``train: ratio=<fast/eager img/s, quickstart> (...)``.
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

from components.archive import ArchiveWriter  # noqa: E402
from components.config import resolve  # noqa: E402
from components.rebalance.core import rebalance  # noqa: E402
from components.train.trainer import Trainer  # noqa: E402

CLASSES = ("normal", "benign", "malignant")
PREFETCH = [2]  # train.prefetch of the measured runs (--prefetch)


def synthetic_archive(root: Path, size: int, n: int = 384, seed: int = 0) -> Path:
    """Ellipse 'bodies' with a lesion disc for lesion classes: cheap data with the real archive layout."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    with ArchiveWriter(root / "archive", n, size) as writer:
        for i in range(n):
            label = CLASSES[0 if i % 10 < 7 else 1 if i % 10 < 9 else 2]
            body = ((xx - 0.5) / 0.4) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
            image = np.where(body, 0.2, -1.0) + rng.normal(0, 0.05, (size, size))
            mask = np.zeros((size, size), np.uint8)
            if label != "normal":
                cx, cy, r = rng.uniform(0.35, 0.65), rng.uniform(0.4, 0.6), 0.05 if label == "benign" else 0.1
                mask = (((xx - cx) ** 2 + (yy - cy) ** 2) < r**2).astype(np.uint8)
                image = np.where(mask > 0, 0.8, image)
            writer.add(
                np.clip(image, -1, 1).astype(np.float32),
                mask,
                {
                    "source_file": f"s{i}",
                    "source_sha256": f"{i:064x}",
                    "patient": f"p{i % 24}",
                    "label": label,
                    "label_idx": CLASSES.index(label),
                    "modality": "CT",
                    "pixel_spacing_row": 1.0,
                    "pixel_spacing_col": 1.0,
                    "orig_rows": size,
                    "orig_cols": size,
                },
            )
        writer.commit({"classes": list(CLASSES), "lesion_classes": list(CLASSES[1:]), "dataset_version": {}})
    return root / "archive"


def measure(preset: str, fast: bool, device: str, steps: int, warmup: int, work: Path) -> dict[str, float]:
    """Train ``warmup + steps`` steps; return img/s over the timed steps and the loader share of a step."""
    cuda = device == "cuda"
    overrides = [
        f"train.steps={warmup + steps}",
        f"train.device={device}",
        "train.checkpoint_every=100000",
        "train.sample_every=100000",
        "train.log_every=100000",
        f"train.precision={'bf16' if fast else 'fp32'}",
        f"train.channels_last={'true' if fast else 'false'}",
        f"train.compile={'true' if fast and cuda else 'false'}",
        f"train.prefetch={PREFETCH[0]}",
    ]
    cfg = resolve(preset, overrides)
    size = cfg.data.image_size
    archive = work / f"data{size}" / "archive"
    if not archive.exists():
        synthetic_archive(work / f"data{size}", size)
        rebalance(archive, work / f"data{size}" / "split", cfg, check=False)  # no GX needed on a bare GPU box
    out = work / f"{preset}-{'fast' if fast else 'eager'}"
    trainer = Trainer(archive, work / f"data{size}" / "split", out, cfg)
    batch_time = [0.0]
    draw = trainer._batch

    def timed_batch(step: int):  # noqa: ANN202 - wraps the loader (prefetch wait + host-to-device copy) to time it
        t0 = time.perf_counter()
        result = draw(step)
        if cuda:
            torch.cuda.synchronize()
        batch_time[0] += time.perf_counter() - t0 if trainer.step >= warmup else 0.0
        return result

    trainer._batch = timed_batch  # type: ignore[method-assign]
    trainer.fit()
    timed = [r["step_time_s"] for r in trainer.records if r["step"] > warmup]
    total = float(np.sum(timed))
    return {
        "img_s": cfg.train.batch_size * len(timed) / total,
        "loader_share": batch_time[0] / total,
        "step_ms": 1000 * total / len(timed),
        "batch": cfg.train.batch_size,
        "size": size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--presets", default="quickstart,ct-128")
    parser.add_argument("--prefetch", type=int, default=2, help="train.prefetch (0: draw the batch in-step)")
    args = parser.parse_args()
    PREFETCH[0] = args.prefetch
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; {args.steps} timed steps after {args.warmup} warm-up")
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            results[preset] = {}
            for fast in (False, True):
                r = measure(preset, fast, device, args.steps, args.warmup, Path(tmp))
                mode = "fast" if fast else "eager-fp32"
                results[preset][mode] = r
                print(
                    f"{preset:>10} {mode:>10}: {r['img_s']:9.1f} img/s  {r['step_ms']:7.1f} ms/step  "
                    f"loader {100 * r['loader_share']:4.1f}% of step  (batch {r['batch']}, {r['size']} px)",
                    flush=True,
                )
    ratios = {p: results[p]["fast"]["img_s"] / results[p]["eager-fp32"]["img_s"] for p in results}
    first = next(iter(results))
    details = "; ".join(
        f"{p}: {results[p]['eager-fp32']['img_s']:.0f} -> {results[p]['fast']['img_s']:.0f} img/s, x{ratios[p]:.2f}, "
        f"loader {100 * results[p]['fast']['loader_share']:.1f}%"
        for p in results
    )
    print(f"train: ratio={ratios[first]:.2f} ({name}; {details})")


if __name__ == "__main__":
    main()
