"""The standard dataset archive that ingest writes once and every later stage reads.

Layout of an archive folder::

    images.npy        float32 (N, S, S), normalised to [-1, 1]        (memory-mapped)
    masks.npy         uint8   (N, S, S), lesion mask in {0, 1}         (memory-mapped)
    manifest.parquet  one row per sample, row i describes images[i]   (see MANIFEST_COLUMNS)
    quarantine.csv    path, reason, message of every file that could not be used
    archive.json      format version, size, classes, counts, dataset version, content hash

It is written into a hidden temporary folder beside the target and renamed into place only when complete,
so a killed writer never leaves something that :func:`open_archive` accepts.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import mmap
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, stale temporary folders are then left for the user
    fcntl = None  # type: ignore[assignment]

from components.errors import DataError
from components.samples import content_hash, sample_stats

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

MANIFEST_COLUMNS = [
    "sample_id",  # stable id: first 16 hex chars of the content hash
    "source_file",  # path relative to the data folder
    "source_sha256",  # hash of the source file bytes
    "content_hash",  # hash of the normalised image+mask arrays
    "patient",  # salted hash of the patient id
    "label",  # class name
    "label_idx",  # index of label in archive classes
    "modality",
    "pixel_spacing_row",
    "pixel_spacing_col",
    "orig_rows",
    "orig_cols",
    "img_min",
    "img_max",
    "img_mean",
    "img_std",
    "mask_fraction",
    "mask_binary",
    "frame",  # 0-based frame index within source_file (0 for single-frame files)
]

# Arrow types of the manifest columns: the manifest is streamed to parquet in batches, so its types are fixed here.
_MANIFEST_TYPES = {
    "label_idx": pa.int64(),
    "pixel_spacing_row": pa.float64(),
    "pixel_spacing_col": pa.float64(),
    "orig_rows": pa.int64(),
    "orig_cols": pa.int64(),
    "img_min": pa.float64(),
    "img_max": pa.float64(),
    "img_mean": pa.float64(),
    "img_std": pa.float64(),
    "mask_fraction": pa.float64(),
    "mask_binary": pa.bool_(),
    "frame": pa.int64(),
}
MANIFEST_SCHEMA = pa.schema([(c, _MANIFEST_TYPES.get(c, pa.string())) for c in MANIFEST_COLUMNS])
# Manifest rows kept in memory before they are appended to the parquet file (one row group each).
_ROW_BATCH = 1024

QUARANTINE_COLUMNS = ["path", "reason", "message"]


@dataclass
class Archive:
    """An opened dataset archive: memory-mapped arrays plus the manifest and metadata."""

    path: Path
    images: np.ndarray
    masks: np.ndarray
    manifest: pd.DataFrame
    meta: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        """Class names, in label-index order."""
        return list(self.meta["classes"])

    @property
    def lesion_classes(self) -> list[str]:
        """Classes whose samples carry a lesion mask."""
        return list(self.meta["lesion_classes"])

    def __len__(self) -> int:
        return len(self.manifest)


def open_archive(path: str | os.PathLike[str]) -> Archive:
    """Open an archive written by :class:`ArchiveWriter`; raise :class:`DataError` if it is missing or broken."""
    root = Path(path)
    meta_file = root / "archive.json"
    if not meta_file.is_file():
        raise DataError(f"{root}: not a dataset archive (no archive.json); run the ingest stage first")
    meta = json.loads(meta_file.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{root}: archive format {meta.get('format_version')} is not {FORMAT_VERSION}; re-ingest")
    images = np.load(root / "images.npy", mmap_mode="r")
    masks = np.load(root / "masks.npy", mmap_mode="r")
    manifest = pd.read_parquet(root / "manifest.parquet")
    if not (len(images) == len(masks) == len(manifest) == meta["n"]):
        raise DataError(
            f"{root}: archive is inconsistent ({len(images)} images, {len(masks)} masks, "
            f"{len(manifest)} manifest rows, {meta['n']} declared)"
        )
    return Archive(root, images, masks, manifest, meta)


# Pages of the memory-mapped arrays that were written count in the writer's RSS until dropped: drop them this often.
_DROP_EVERY = 128


def _drop_pages(arr: np.ndarray) -> None:
    """Let the kernel drop a memory-mapped array's pages from this process: the file keeps the data.

    No flush first: for a shared file mapping, MADV_DONTNEED only unmaps the pages; written ones stay in the page
    cache, dirty, and reach the file by the kernel's write-back or the flush before commit, without this process
    waiting for the disk every ``_DROP_EVERY`` samples.
    """
    mapped = getattr(arr, "_mmap", None)
    if mapped is not None and hasattr(mmap, "MADV_DONTNEED"):
        mapped.madvise(mmap.MADV_DONTNEED)


class ArchiveWriter:
    """Streams samples into a new archive; use as a context manager and call :meth:`commit` at the end.

    Memory stays flat: arrays are written into memory-mapped files of ``capacity`` rows as samples arrive (the
    capacity doubles when more samples come, e.g. from multi-frame files), written pages are released every
    ``_DROP_EVERY`` samples, manifest rows are appended to the parquet file every ``_ROW_BATCH`` samples, and
    commit truncates the files in place to the accepted count. Only 32 bytes per sample (its content hash, for the
    dataset hash) stay in memory. Leaving the ``with`` block without commit removes everything.
    """

    def __init__(self, path: str | os.PathLike[str], capacity: int, image_size: int) -> None:
        self.path = Path(path)
        self.capacity = max(int(capacity), 1)
        self.size = int(image_size)
        self.n = 0  # samples added
        self._batch: list[dict[str, Any]] = []  # manifest rows not yet in the parquet file
        self._manifest: pq.ParquetWriter | None = None
        self._digests: list[bytes] = []  # content hashes (32 bytes each) for the dataset hash
        self.quarantine: list[dict[str, str]] = []
        self._tmp: Path | None = None
        self._lock: IO[str] | None = None

    def __enter__(self) -> ArchiveWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for stale in sweep_stale(self.path):
            log.warning("removed %s: the temporary folder of an interrupted writer of %s", stale, self.path.name)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-", dir=self.path.parent))
        self._lock = _hold_lock(self._tmp)
        shape = (self.capacity, self.size, self.size)
        self._images = np.lib.format.open_memmap(self._tmp / "images.full.npy", "w+", np.float32, shape)
        self._masks = np.lib.format.open_memmap(self._tmp / "masks.full.npy", "w+", np.uint8, shape)
        return self

    def add(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        row: dict[str, Any],
        digest: str | None = None,
        stats: dict[str, Any] | None = None,
    ) -> None:
        """Append one normalised sample and its manifest row (stats and hashes are filled in here).

        ``digest`` and ``stats`` are the sample's :func:`content_hash` and :func:`sample_stats` when the caller has
        computed them already (ingest does, in its decoding workers).
        """
        i = self.n
        if i >= self.capacity:
            self._grow(2 * self.capacity)
        self._images[i] = image
        self._masks[i] = mask
        digest = digest or content_hash(image, mask)
        stats = stats or sample_stats(image, mask)
        self._batch.append({**row, **stats, "content_hash": digest, "sample_id": digest[:16]})
        self._digests.append(bytes.fromhex(digest))
        self.n += 1
        if len(self._batch) >= _ROW_BATCH:
            self._write_rows()
        if self.n % _DROP_EVERY == 0:
            _drop_pages(self._images)
            _drop_pages(self._masks)

    def reject(self, path: str, reason: str, message: str) -> None:
        """Record a file that cannot be used."""
        self.quarantine.append({"path": path, "reason": reason, "message": message})

    def _grow(self, capacity: int) -> None:
        assert self._tmp is not None
        n = self.n
        for name in ("images", "masks"):
            old = getattr(self, f"_{name}")
            new = np.lib.format.open_memmap(
                self._tmp / f"{name}.grow.npy", "w+", old.dtype, (capacity, self.size, self.size)
            )
            for start in range(0, n, 1024):  # chunked copy keeps memory flat
                new[start : min(start + 1024, n)] = old[start : min(start + 1024, n)]
            new.flush()
            del old, new
            setattr(self, f"_{name}", None)
            os.replace(self._tmp / f"{name}.grow.npy", self._tmp / f"{name}.full.npy")
            setattr(self, f"_{name}", np.lib.format.open_memmap(self._tmp / f"{name}.full.npy", "r+"))
        self.capacity = capacity

    def _compact(self) -> None:
        """Shrink the over-allocated ``.npy`` files to the accepted rows.

        The accepted rows are a prefix of each file, so rewriting the header with the final row count and truncating
        gives byte for byte the files a copy would, without pulling the archive through this process's memory. Only
        when the new header would change length (never for realistic sizes) is the prefix copied in chunks.
        """
        assert self._tmp is not None
        n = self.n
        shape = (n, self.size, self.size)
        for name in ("images", "masks"):
            full = getattr(self, f"_{name}")
            header = io.BytesIO()
            descr = np.lib.format.dtype_to_descr(full.dtype)
            np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False, "shape": shape})
            source, target = self._tmp / f"{name}.full.npy", self._tmp / f"{name}.npy"
            if len(header.getvalue()) == full.offset:
                end = full.offset + n * full[0].nbytes
                full.flush()
                setattr(self, f"_{name}", None)  # unmap before truncating
                del full
                with source.open("r+b") as fh:
                    fh.write(header.getvalue())
                    fh.truncate(end)
                os.replace(source, target)
            else:
                out = np.lib.format.open_memmap(target, "w+", full.dtype, shape)
                for start in range(0, n, 1024):
                    out[start : start + 1024] = full[start : min(start + 1024, n)]
                out.flush()
                del out, full
                setattr(self, f"_{name}", None)
                source.unlink()

    def commit(self, meta: dict[str, Any], sidecars: dict[str, pd.DataFrame] | None = None) -> Path:
        """Compact, write manifest/quarantine/metadata and atomically move the archive into place.

        ``sidecars`` are further tables (file name -> frame, written as parquet) that move into place with it.
        """
        assert self._tmp is not None, "commit() outside of a with block"
        n = self.n
        self._compact()
        self._write_rows()
        assert self._manifest is not None
        self._manifest.close()
        self._manifest = None
        pd.DataFrame(self.quarantine, columns=QUARANTINE_COLUMNS).to_csv(self._tmp / "quarantine.csv", index=False)
        dataset_hash = hashlib.sha256("".join(sorted(d.hex() for d in self._digests)).encode()).hexdigest()
        full_meta = {
            **meta,
            "format_version": FORMAT_VERSION,
            "n": n,
            "image_size": self.size,
            "n_quarantined": len(self.quarantine),
            "dataset_hash": dataset_hash,
        }
        (self._tmp / "archive.json").write_text(json.dumps(full_meta, indent=2, sort_keys=True))
        for name, frame in (sidecars or {}).items():
            frame.to_parquet(self._tmp / name, index=False)
        (self._tmp / _LOCK_NAME).unlink()  # still held through the open file; gone from the archive's files
        old = None
        if self.path.exists():  # set the previous archive aside first: there is always a whole archive or none
            old = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
            os.replace(self.path, old)
        os.replace(self._tmp, self.path)
        self._tmp = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self._release()
        return self.path

    def __len__(self) -> int:
        return self.n

    def _write_rows(self) -> None:
        """Append the buffered manifest rows to ``manifest.parquet`` (created with the first call)."""
        assert self._tmp is not None
        if self._manifest is None:
            self._manifest = pq.ParquetWriter(self._tmp / "manifest.parquet", MANIFEST_SCHEMA)
        if self._batch:
            self._manifest.write_table(pa.Table.from_pylist(self._batch, schema=MANIFEST_SCHEMA))
            self._batch.clear()

    def __exit__(self, *exc: object) -> None:
        if self._manifest is not None:
            self._manifest.close()
            self._manifest = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


_LOCK_NAME = ".writer.lock"


def _hold_lock(folder: Path) -> IO[str] | None:
    """Lock ``folder`` as this process's work in progress for as long as the returned file is open.

    The lock file is created and locked under another name, then renamed into place: a sweeper never finds it
    unlocked while its writer lives. The kernel drops the lock when the writer dies, however it dies. None where
    ``fcntl`` is missing (Windows): there nothing is ever swept.
    """
    if fcntl is None:
        return None
    fd, name = tempfile.mkstemp(prefix=".lock-", dir=folder)
    handle = os.fdopen(fd, "w")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.replace(name, folder / _LOCK_NAME)
    return handle


def sweep_stale(path: str | os.PathLike[str]) -> list[Path]:
    """Remove what writers of the archive at ``path`` left behind when they were killed (SIGKILL, OOM, power loss).

    Their temporary folders are hidden and never accepted as an archive, but they hold a dataset's worth of disk.
    A folder is removed only when its lock file is there and nobody holds the lock: the temporary folder of a
    writer that is still running (here or in another process) is left alone, and so is anything without a lock
    file (another program's, or one being set up this instant). Also removes a previous archive set aside by a
    commit that was killed before deleting it.
    """
    path = Path(path)
    removed = []
    if fcntl is None or not path.parent.is_dir():
        return removed
    for folder in sorted(path.parent.glob(f".{path.name}.tmp-*")):
        try:
            handle = (folder / _LOCK_NAME).open()
        except OSError:
            continue
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its writer is alive
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    if path.exists():
        for old in sorted(path.parent.glob(f".{path.name}.old-*")):
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old)
    return removed
