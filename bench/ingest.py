"""Ingest throughput and memory: the project's parallel ingest vs a naive single-process loop.

Builds a phantom DICOM study set (``components.phantom.write_phantom``, 204 files) and replicates it to about N
files: copy k of a file has its pixel rows rolled by k (so every copy is new content, not a duplicate) and keeps
its header, label and mask. Then, in the same run:

* **naive**: one process, per file ``pydicom.dcmread`` + ``pixel_array`` + modality LUT + resize (Pillow,
  bilinear) appended to a Python list; no windowing, masks, hashing, quarantine or archive;
* **ingest**: ``components.ingest.core.ingest`` with ``cfg.ingest.workers = os.cpu_count()`` (the full stage:
  labels, masks, windowing, content hashes, duplicate check, memory-mapped archive, manifest, quarantine).

Both run in fresh child processes, timed around the work (the ingest worker pool's start-up is inside); peak
memory is the high-water RSS of the child (``VmHWM``, read by the child at its end), and for ingest separately of
the largest of its workers (sampled from ``/proc`` by this script every 20 ms). Ingest is then repeated on about
10N files to show that memory stays flat.

N defaults to 2000: one CT series alone is a few hundred slices, a training set thousands; a pool of worker
processes pays for its start-up only on such sizes (below ~500 files ingest decodes in its own process).

    python bench/ingest.py              # N=2000, 256-px phantoms
    python bench/ingest.py --n 200 --no-scale

Last line: ``ingest: ratio=<ingest files/s / naive files/s at N> (<details>)``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SLICES = 12  # phantom slices per patient
BASE_PATIENTS = 17  # 204 distinct phantom files, replicated to N

# The child's own peak RSS, read at its end: no sampling thread inside the child, whose presence would change how
# ingest starts its workers (it forks only from a single-threaded process).
PEAK = """
import os
def peaks():
    with open(f"/proc/{os.getpid()}/status") as fh:
        return {"rss_kb": next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:"))}
"""


def _hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return 0


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as fh:
                    kids = [int(c) for c in fh.read().split()]
                    found += kids
                    todo += kids
        except OSError:
            pass
    return found


NAIVE = (
    PEAK
    + """
import csv, json, sys, time
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
print(json.dumps({"files": len(out), "seconds": seconds, **peaks()}))
"""
)

INGEST = (
    PEAK
    + """
import json, logging, sys, time
from components.config import resolve
from components.ingest.core import ingest
logging.disable(logging.INFO)
data, out, size, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cfg = resolve("quickstart", [f"data.image_size={size}", f"ingest.workers={workers}"])
t = time.perf_counter()
summary = ingest(data, out, cfg, salt="bench-salt")
seconds = time.perf_counter() - t
print(json.dumps({"files": summary["n_rows"], "ok": summary["n_ok"], "seconds": seconds, **peaks()}))
"""
)


def child(code: str, *args: object) -> dict[str, float]:
    """Run ``code`` in a fresh interpreter; its JSON result plus the peak RSS of its workers (sampled from here)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *map(str, args)], env=env, cwd=ROOT, stdout=out, stderr=err
        )
        workers: dict[int, int] = {}
        while proc.poll() is None:
            for pid in _descendants(proc.pid):
                workers[pid] = max(workers.get(pid, 0), _hwm(pid))
            time.sleep(0.02)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"benchmark child failed:\n{err.read()[-3000:]}")
        result = json.loads(out.read().strip().splitlines()[-1])
    return {**result, "worker_rss_kb": max(workers.values(), default=0)}


def phantom(root: Path, size: int) -> Path:
    from components.phantom import write_phantom

    return write_phantom(root / "base", seed=0, n_patients=BASE_PATIENTS, slices_per_patient=SLICES, size=size)


def replicate(base: Path, out: Path, n: int) -> Path:
    """About ``n`` files from the phantom at ``base``: copy k of each file has its pixel rows rolled by k."""
    import numpy as np
    import pydicom

    rows = list(csv.DictReader((base / "labels.csv").open()))
    copies = math.ceil(n / len(rows))
    if copies > SLICES * 10:
        raise SystemExit(f"--n {n}: at most {SLICES * 10 * len(rows)} files from one phantom")
    shutil.copytree(base / "masks", out / "masks")
    table = []
    for row in rows:
        raw = (base / row["file"]).read_bytes()
        ds = pydicom.dcmread(base / row["file"])
        nbytes = len(ds.PixelData)
        assert raw[-nbytes:] == ds.PixelData, "pixel data is not the file's last element"
        pixels = np.frombuffer(ds.PixelData, dtype="<u2" if ds.PixelRepresentation == 0 else "<i2")
        pixels = pixels.reshape(int(ds.Rows), int(ds.Columns))
        for k in range(copies):
            rel = f"dicom/copy{k:03d}/{row['file'].removeprefix('dicom/')}"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(raw[:-nbytes] + np.roll(pixels, k, axis=0).tobytes())
            table.append({**row, "file": rel})
    with (out / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(table)
    return out


def _cpu_model() -> str:
    """The CPU's model name (the ratio depends on it: pydicom's Python vs ingest's numpy work), else the arch."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def best(runs: list[dict[str, float]]) -> dict[str, float]:
    return min(runs, key=lambda r: r["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="files at the small size (default 2000)")
    parser.add_argument("--size", type=int, default=256, help="phantom image size in pixels (default 256)")
    parser.add_argument("--image-size", type=int, default=64, help="archive image size (data.image_size)")
    parser.add_argument("--repeats", type=int, default=4, help="timed runs per method, alternating; the fastest counts")
    parser.add_argument("--no-scale", action="store_true", help="skip the 10N memory run")
    args = parser.parse_args()
    workers = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cpu = _cpu_model()
    print(f"machine: {cpu}, {workers} CPUs, load {load:.2f}; python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        root = Path(tmp)
        base = phantom(root, args.size)
        data = replicate(base, root / f"data{args.n}", args.n)
        n = sum(1 for _ in (data / "dicom").rglob("*.dcm"))
        print(
            f"phantom: {n} files of {args.size}x{args.size} px -> archive {args.image_size} px; "
            f"ingest.workers={workers}"
        )
        # Alternating runs, fastest of each: a slow spell of this (shared, virtual) machine hits both alike.
        naive_runs, ingest_runs = [], []
        for _ in range(args.repeats):
            naive_runs.append(child(NAIVE, data, args.image_size))
            ingest_runs.append(child(INGEST, data, root / "archive", args.image_size, workers))
        naive, ing = best(naive_runs), best(ingest_runs)
        print(
            "runs (s): naive "
            + " ".join(f"{r['seconds']:.2f}" for r in naive_runs)
            + " | ingest "
            + " ".join(f"{r['seconds']:.2f}" for r in ingest_runs)
        )
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
            f"{cpu}, {workers} CPUs, load {load:.1f}; N={n} {args.size}px: ingest {ingest_fps:.1f} files/s vs "
            f"naive {naive_fps:.1f} files/s"
        )
        if not args.no_scale:
            shutil.rmtree(data)
            big = replicate(base, root / f"data{10 * args.n}", 10 * args.n)
            n10 = sum(1 for _ in (big / "dicom").rglob("*.dcm"))
            ing10 = child(INGEST, big, root / "archive10", args.image_size, workers)
            naive10 = child(NAIVE, big, args.image_size)
            peak_n = max(ing["rss_kb"], ing["worker_rss_kb"])
            peak_10 = max(ing10["rss_kb"], ing10["worker_rss_kb"])
            ratio10 = naive10["seconds"] / ing10["seconds"]
            print(f"naive at 10N={n10}: {n10 / naive10['seconds']:8.1f} files/s; ingest/naive at 10N: {ratio10:.2f}x")
            print(
                f"ingest at 10N={n10}: {n10 / ing10['seconds']:8.1f} files/s  peak RSS parent "
                f"{ing10['rss_kb'] / 1024:.0f} MiB, worker {ing10['worker_rss_kb'] / 1024:.0f} MiB; "
                f"peak 10N/N = {peak_10 / peak_n:.2f}x (naive list: {naive10['rss_kb'] / naive['rss_kb']:.2f}x)"
            )
            details += (
                f"; at 10N={n10} (one run each) ingest/naive {ratio10:.2f}x"
                f"; peak RSS {peak_n / 1024:.0f} -> {peak_10 / 1024:.0f} MiB at 10N "
                f"({peak_10 / peak_n:.2f}x; naive {naive10['rss_kb'] / naive['rss_kb']:.2f}x)"
            )
    print(f"ingest: ratio={ratio:.2f} ({details})")


if __name__ == "__main__":
    main()
