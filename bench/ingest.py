"""Ingest throughput and memory: the project's parallel ingest vs a naive single-process loop.

Builds a phantom DICOM study set (``components.phantom.write_phantom``) of about N files and, in the same run:

* **naive**: one process, per file ``pydicom.dcmread`` + ``pixel_array`` + modality LUT + resize (Pillow,
  bilinear) appended to a Python list; no windowing, masks, hashing, quarantine or archive;
* **ingest**: ``components.ingest.core.ingest`` with ``cfg.ingest.workers = os.cpu_count()`` (the full stage:
  labels, masks, windowing, content hashes, duplicate check, memory-mapped archive, manifest, quarantine).

Both run in fresh child processes, so their start-up (imports, spawning the worker pool) is counted and their
peak memory is the child's own RSS high-water mark (``resource.getrusage``: the ingest parent, and separately the
largest of its pool workers). Ingest is then repeated on about 10N files to show that memory stays flat.

    python bench/ingest.py              # N=200, 256-px phantoms
    python bench/ingest.py --n 100 --size 512 --repeats 3

Last line: ``ingest: ratio=<ingest files/s / naive files/s at N> (<details>)``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SLICES = 12  # phantom slices per patient

NAIVE = """
import csv, json, resource, sys, time
import numpy as np, pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut
data, size = sys.argv[1], int(sys.argv[2])
files = [r["file"] for r in csv.DictReader(open(f"{data}/labels.csv"))]
t = time.perf_counter()
out = []
for rel in files:
    ds = pydicom.dcmread(f"{data}/{rel}")
    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    out.append(np.asarray(Image.fromarray(values).resize((size, size), Image.Resampling.BILINEAR)))
seconds = time.perf_counter() - t
print(json.dumps({"files": len(out), "seconds": seconds,
                  "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""

INGEST = """
import json, logging, resource, sys, time
from components.config import resolve
from components.ingest.core import ingest
logging.disable(logging.INFO)
data, out, size, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cfg = resolve("quickstart", [f"data.image_size={size}", f"ingest.workers={workers}"])
t = time.perf_counter()
summary = ingest(data, out, cfg, salt="bench-salt")
seconds = time.perf_counter() - t
print(json.dumps({"files": summary["n_rows"], "ok": summary["n_ok"], "seconds": seconds,
                  "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "worker_rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def child(code: str, *args: object) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], env=env, cwd=ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def phantom(root: Path, n: int, size: int) -> Path:
    from components.phantom import write_phantom

    patients = max(3, round(n / SLICES))
    return write_phantom(root / f"data{n}", seed=0, n_patients=patients, slices_per_patient=SLICES, size=size)


def best(runs: list[dict[str, float]]) -> dict[str, float]:
    return min(runs, key=lambda r: r["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="files at the small size (default 200)")
    parser.add_argument("--size", type=int, default=256, help="phantom image size in pixels (default 256)")
    parser.add_argument("--image-size", type=int, default=64, help="archive image size (data.image_size)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method; the fastest counts")
    parser.add_argument("--no-scale", action="store_true", help="skip the 10N memory run")
    args = parser.parse_args()
    workers = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"machine: {platform.processor() or platform.machine()}, {workers} CPUs, load {load:.2f}; "
        f"python {platform.python_version()}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        root = Path(tmp)
        data = phantom(root, args.n, args.size)
        n = sum(1 for _ in (data / "dicom").rglob("*.dcm"))
        print(
            f"phantom: {n} files of {args.size}x{args.size} px -> archive {args.image_size} px; "
            f"ingest.workers={workers}"
        )
        naive = best([child(NAIVE, data, args.image_size) for _ in range(args.repeats)])
        ing = best([child(INGEST, data, root / "archive", args.image_size, workers) for _ in range(args.repeats)])
        naive_fps, ingest_fps = n / naive["seconds"], n / ing["seconds"]
        ratio = ingest_fps / naive_fps
        print(
            f"naive  (1 process): {naive_fps:8.1f} files/s  ({naive['seconds']:.2f} s)  "
            f"peak RSS {naive['rss_kb'] / 1024:.0f} MiB"
        )
        print(
            f"ingest ({workers} workers): {ingest_fps:8.1f} files/s  ({ing['seconds']:.2f} s)  "
            f"peak RSS parent {ing['rss_kb'] / 1024:.0f} MiB, worker {ing['worker_rss_kb'] / 1024:.0f} MiB"
        )
        print(f"ratio ingest/naive: {ratio:.2f}x")
        details = (
            f"{workers} CPUs, load {load:.1f}; N={n} {args.size}px: ingest {ingest_fps:.1f} files/s vs "
            f"naive {naive_fps:.1f} files/s"
        )
        if not args.no_scale:
            big = phantom(root, 10 * args.n, args.size)
            n10 = sum(1 for _ in (big / "dicom").rglob("*.dcm"))
            ing10 = child(INGEST, big, root / "archive10", args.image_size, workers)
            naive10 = child(NAIVE, big, args.image_size)
            peak_n = max(ing["rss_kb"], ing["worker_rss_kb"])
            peak_10 = max(ing10["rss_kb"], ing10["worker_rss_kb"])
            print(
                f"ingest at 10N={n10}: {n10 / ing10['seconds']:8.1f} files/s  peak RSS parent "
                f"{ing10['rss_kb'] / 1024:.0f} MiB, worker {ing10['worker_rss_kb'] / 1024:.0f} MiB; "
                f"peak 10N/N = {peak_10 / peak_n:.2f}x (naive list: {naive10['rss_kb'] / naive['rss_kb']:.2f}x)"
            )
            details += (
                f"; peak RSS {peak_n / 1024:.0f} -> {peak_10 / 1024:.0f} MiB at 10N "
                f"({peak_10 / peak_n:.2f}x; naive {naive10['rss_kb'] / naive['rss_kb']:.2f}x)"
            )
    print(f"ingest: ratio={ratio:.2f} ({details})")


if __name__ == "__main__":
    main()
