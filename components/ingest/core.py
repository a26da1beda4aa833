"""Ingest: a folder of DICOM files plus ``labels.csv`` -> one standard dataset archive.

Raw DICOM is parsed here once; every later stage reads the archive (see :mod:`components.archive`). Files that
cannot be used are quarantined with a reason code instead of failing the run, unless too many are; patient ids
are replaced by salted hashes and no PHI header value is written anywhere.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import multiprocessing
import os
import stat
import threading
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from components.archive import ArchiveWriter
from components.config import Config
from components.dicomio import INTERPOLATION, check_policy
from components.dicomio import REASONS as DECODE_REASONS
from components.errors import DataError, MedganError
from components.ingest.decode import _decode, _decode_chunk, _file_sha256, _init_worker, _Outcome, _ready, _Task
from components.ingest.labels import LabelsIndex, index_labels, iter_labels, unlisted_files
from components.ingest.masks import REASONS as MASK_REASONS

log = logging.getLogger(__name__)

# Reasons decided here, from labels.csv and the decoded arrays; decoding reasons come from components.dicomio, mask
# reasons from components.ingest.masks. Codes are stable: quarantine.csv and the table in docs/data.md use them.
INGEST_REASONS: dict[str, str] = {
    "path_escape": "the file or mask path leads outside the data folder ('..', absolute path or symlink); not read",
    "file_missing": "the file or mask named in labels.csv does not exist, or the file field is empty",
    "label_empty": "the row's label field is empty",
    "label_conflict": "the same file is listed more than once with different labels: every such row is refused",
    "unknown_class": "the label is not one of data.classes (counted per label in the summary)",
    "mask_missing": "a lesion-class row without a mask_file",
    "mask_empty": "a lesion-class row whose mask has no lesion pixel at the configured image size",
    "mask_conflict": "a non-lesion row whose mask marks lesion pixels",
    "patient_missing": "no patient_id in labels.csv and no PatientID in the header",
    "duplicate": "the same normalised image and mask as an earlier row",
    "internal_error": "an unexpected error while reading the file: a bug, please report it (the run goes on)",
}
REASONS: dict[str, str] = {**INGEST_REASONS, **DECODE_REASONS, **MASK_REASONS}

PATIENT_HASH_CHARS = 16
# Files per pool task: one hand-over (pickling, queues) per chunk rather than per file.
_CHUNK = 16
# Chunks decoded ahead of the writer, per worker: enough to keep workers busy, small enough for flat memory.
_IN_FLIGHT_PER_WORKER = 4
# When a pool pays off (bench/ingest.py, 2 vCPU VM): decoding one 256-px file here takes ~1 ms, and the fork server
# needs ~0.5 s to start (interpreter + numpy/pydicom/Pillow imports), during which this process decodes on its own.
# A pool is used when the job would take this process longer than that start-up (see _use_pool).
_DECODE_S = 1.0e-3
_POOL_START_S = 0.5


@dataclass
class _Row:
    """A labels.csv row after planning: a task to decode, or an early rejection."""

    number: int  # 1-based data row number in labels.csv (the header is row 0)
    rel: str
    label: str
    patient_id: str
    task: _Task | None = None
    reason: str | None = None
    message: str = ""


def ingest(
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    cfg: Config,
    dataset_version: dict[str, Any] | None = None,
    salt: str | None = None,
) -> dict[str, Any]:
    """Convert ``data_dir`` (DICOM files + ``labels.csv``) into the dataset archive at ``out_dir``.

    ``labels.csv`` needs columns ``file`` (path relative to ``data_dir``) and ``label`` (one of
    ``cfg.data.classes``); ``patient_id`` is optional (else the header's PatientID) and so is ``mask_file`` (a
    lesion mask image, required for ``cfg.data.lesion_classes``). The patient-id salt is ``salt``, else the
    environment variable named by ``cfg.ingest.salt_env``.

    Returns a summary: ``archive``, ``n_rows``, ``n_ok``, ``n_quarantined``, ``quarantined_by_reason``,
    ``counts`` (per class) and ``n_patients``, plus what a user should look at: ``unknown_classes`` (rows per
    label that is not in ``data.classes``), ``label_conflicts`` (files listed with different labels),
    ``n_unlisted`` / ``unlisted`` (files in the folder that no row names: not ingested) and ``warnings`` (each of
    these in words, also logged). Raises :class:`DataError` for a missing folder or a bad labels.csv, a missing
    salt, and when more than ``cfg.ingest.max_quarantine_fraction`` of the rows are quarantined; then nothing is
    written at ``out_dir``.
    """
    data = _data_folder(data_dir)
    labels_path = data / "labels.csv"
    index = index_labels(labels_path)  # checks the header; rows are then streamed, not held
    n_rows = index.n_rows
    salt_value = _salt(salt, cfg)
    check_policy(cfg)
    planner = _Planner(_Paths(data), index, cfg)
    planned = (planner.plan(i + 1, record) for i, record in enumerate(iter_labels(labels_path)))
    accepted = _Accepted(cfg, salt_value)
    out = Path(out_dir)
    with (
        ArchiveWriter(out, capacity=n_rows, image_size=cfg.data.image_size) as writer,
        _Decoder(planned, n_rows, cfg) as decoder,  # before tqdm, whose monitor thread would rule out fork
    ):
        for row, outcomes in tqdm(decoder, total=n_rows, desc="ingest", unit="file", mininterval=1.0):
            if outcomes is None:
                writer.reject(row.rel, str(row.reason), row.message)
                continue
            for got in outcomes:  # one outcome per frame, or a single rejection
                reason, message = accepted.check(row, got)
                if reason is None:
                    assert got.image is not None and got.mask is not None
                    writer.add(got.image, got.mask, accepted.add(row, got), got.digest, got.stats)
                else:
                    writer.reject(row.rel, reason, message)
        n_bad = len(writer.quarantine)
        n_units = len(writer) + n_bad  # samples (frames) admitted plus entries quarantined
        by_reason = dict(sorted(Counter(q["reason"] for q in writer.quarantine).items()))
        n_unlisted, unlisted = unlisted_files(data, index)
        notes = _notes(planner, index, n_unlisted, unlisted, cfg)
        for note in notes["warnings"]:
            log.warning("ingest: %s", note)
        _check_quarantine(labels_path, n_units, n_bad, by_reason, writer.quarantine, cfg)
        meta = {
            "classes": accepted.classes,
            "lesion_classes": list(cfg.data.lesion_classes),
            "dataset_version": dataset_version or {},
            "counts": dict(accepted.counts),
            "quarantined_by_reason": by_reason,
            "n_rows": n_rows,
            "n_patients": len(accepted.patients),
            "labels_sha256": _file_sha256(labels_path),
            "patient_hash": f"sha256(salt + patient_id)[:{PATIENT_HASH_CHARS}]",
            "window": {
                "center": cfg.data.window_center,
                "width": cfg.data.window_width,
                "sources": dict(sorted(accepted.window_sources.items())),
            },
            "interpolation": INTERPOLATION,
            "square": cfg.ingest.square,
            "multiframe": cfg.ingest.multiframe,
            "rgb": cfg.ingest.rgb,
            "label_maps": cfg.ingest.label_maps,
            **notes,
        }
        path = writer.commit(meta)
    summary = {
        "archive": str(path),
        "n_rows": n_rows,
        "n_ok": len(writer),
        "n_quarantined": n_bad,
        "quarantined_by_reason": by_reason,
        "counts": dict(accepted.counts),
        "n_patients": len(accepted.patients),
        **notes,
    }
    log.info(
        "ingest: %d of %d files accepted, %d quarantined %s -> %s", summary["n_ok"], n_rows, n_bad, by_reason, path
    )
    return summary


def hash_patient(salt: str, patient_id: str) -> str:
    """Salted, truncated SHA-256 of a patient id: stable within a project, not reversible without the salt."""
    return hashlib.sha256((salt + patient_id).encode("utf-8")).hexdigest()[:PATIENT_HASH_CHARS]


def _data_folder(data_dir: str | os.PathLike[str]) -> Path:
    data = Path(data_dir)
    if not data.exists():
        raise DataError(
            f"data folder {data} does not exist; create a sample with `medgan phantom --out {data}` "
            "or point --data at your DICOM folder"
        )
    if not data.is_dir():
        raise DataError(f"data path {data} is not a folder")
    return data.resolve()


def _salt(salt: str | None, cfg: Config) -> str:
    if salt:
        return salt
    value = os.environ.get(cfg.ingest.salt_env, "")
    if not value:
        raise DataError(
            f"no patient-id salt: set the environment variable {cfg.ingest.salt_env} (a long random "
            "secret kept with the project) or pass salt= to ingest()"
        )
    return value


def _inside(data: Path, rel: str) -> Path | None:
    """``data/rel`` with symlinks resolved, or None when it leads outside ``data`` (never opened in that case)."""
    try:
        resolved = (data / rel).resolve()
    except (OSError, ValueError):  # a NUL byte, a symlink loop: nothing we could safely open
        return None
    return resolved if resolved.is_relative_to(data) else None


class _Paths:
    """:func:`_inside` for many files of few folders: each folder is resolved once, each file costs one lstat.

    ``data/dir/name`` resolves to ``resolve(data/dir)/name`` unless ``name`` itself is a symlink (then it is
    resolved in full). At most ``_MAX_DIRS`` resolved folders are remembered, so memory stays bounded.
    """

    _MAX_DIRS = 4096

    def __init__(self, data: Path) -> None:
        self.data = data
        self.dirs: dict[str, Path | None] = {}

    def file(self, rel: str) -> tuple[Path | None, str]:
        """``(path, kind)`` for ``rel``: kind ``file``, ``missing`` or ``other`` (a folder, a device, ...).

        The path is None when it leads outside the data folder.
        """
        head, name = os.path.split(rel)
        if not name or name in (".", "..") or os.path.isabs(rel) or "\0" in rel:
            return self._resolved(rel)
        if head not in self.dirs:
            if len(self.dirs) >= self._MAX_DIRS:
                self.dirs.clear()
            self.dirs[head] = _inside(self.data, head) if head else self.data
        folder = self.dirs[head]
        if folder is None:
            return None, "missing"
        path = folder / name
        try:
            mode = path.lstat().st_mode
        except (OSError, ValueError):
            return path, "missing"
        if stat.S_ISLNK(mode):
            return self._resolved(rel)
        return path, _kind(mode)

    def _resolved(self, rel: str) -> tuple[Path | None, str]:
        path = _inside(self.data, rel)
        if path is None:
            return None, "missing"
        try:
            return path, _kind(path.stat().st_mode)
        except (OSError, ValueError):
            return path, "missing"


def _kind(mode: int) -> str:
    return "file" if stat.S_ISREG(mode) else "other"


def _what(path: Path) -> str:
    """How to call a path that is not a regular file."""
    return "a folder" if path.is_dir() else "not a regular file"


class _Planner:
    """The checks of each labels.csv row that need no decoding (paths, existence, label, mask presence).

    Rows are planned one at a time as decoding goes; the planner counts the labels that are not configured classes
    and the files whose labels conflict, for the summary.
    """

    def __init__(self, paths: _Paths, index: LabelsIndex, cfg: Config) -> None:
        self.paths, self.index, self.cfg = paths, index, cfg
        self.unknown: Counter[str] = Counter()

    def plan(self, number: int, record: dict[str, str]) -> _Row:
        """The row ``number`` (1-based) of labels.csv: with a decoding task, or rejected with a reason."""
        cfg, paths = self.cfg, self.paths
        rel, label = record.get("file", ""), record.get("label", "")
        mask_rel = record.get("mask_file", "")
        row = _Row(number, rel or f"<labels.csv row {number}>", label, record.get("patient_id", ""))

        def reject(reason: str, message: str) -> _Row:
            row.reason, row.message = reason, f"{row.rel}: {message}"
            return row

        if not rel:
            return reject("file_missing", f"labels.csv row {number} has an empty file field")
        path, kind = paths.file(rel)
        if path is None:
            return reject(
                "path_escape", "path leads outside the data folder ('..', absolute path or symlink); not read"
            )
        if kind == "missing":
            return reject("file_missing", "file not found in the data folder")
        if kind == "other":
            return reject("not_a_file", f"{_what(path)}, where labels.csv names a file")
        if not label:
            return reject("label_empty", f"labels.csv row {number} has an empty label field")
        conflicting = self.index.conflicting_labels(rel)
        if conflicting:
            return reject(
                "label_conflict",
                f"listed in labels.csv more than once with different labels ({', '.join(conflicting)}); which one is "
                "right cannot be told, so none is used: keep one row per file",
            )
        if label not in cfg.data.classes:
            self.unknown[label] += 1
            return reject(
                "unknown_class", f"class {label!r} is not one of data.classes ({', '.join(cfg.data.classes)})"
            )
        mask_path = None
        if mask_rel:
            mask_path, mask_kind = paths.file(mask_rel)
            if mask_path is None:
                return reject("path_escape", f"mask {mask_rel} leads outside the data folder; not read")
            if mask_kind == "missing":
                return reject("file_missing", f"mask file {mask_rel} not found in the data folder")
            if mask_kind == "other":
                return reject("not_a_file", f"mask {mask_rel} is {_what(mask_path)}, not a file")
        elif label in cfg.data.lesion_classes:
            return reject("mask_missing", f"class {label!r} is a lesion class but the row has no mask_file")
        row.task = _Task(rel, str(path), mask_rel, str(mask_path) if mask_path else None)
        return row


def _notes(planner: _Planner, index: LabelsIndex, n_unlisted: int, unlisted: list[str], cfg: Config) -> dict[str, Any]:
    """The summary's entries about labels.csv and the folder that a user should read, with warnings in words."""
    warnings = []
    unknown = dict(sorted(planner.unknown.items()))
    if unknown:
        listed = ", ".join(f"{label!r} ({n} row{'s' * (n > 1)})" for label, n in unknown.items())
        warnings.append(
            f"{sum(unknown.values())} row(s) have a class that is not in data.classes and were quarantined: {listed}; "
            f"configured: {', '.join(cfg.data.classes)}. Add the class to data.classes (and data.lesion_classes if "
            "it has lesion masks) or fix the label"
        )
    if index.conflicts:
        warnings.append(
            f"{len(index.conflicts)} file(s) are listed in labels.csv with different labels; all their rows were "
            "quarantined as label_conflict (see quarantine.csv)"
        )
    if n_unlisted:
        more = f" and {n_unlisted - len(unlisted)} more" if n_unlisted > len(unlisted) else ""
        warnings.append(
            f"{n_unlisted} file(s) in the data folder are not named in labels.csv and were not ingested: "
            f"{', '.join(unlisted)}{more}"
        )
    return {
        "unknown_classes": unknown,
        "label_conflicts": len(index.conflicts),
        "n_unlisted": n_unlisted,
        "unlisted": unlisted,
        "warnings": warnings,
    }


class _Accepted:
    """The samples admitted so far: duplicate detection, patient hashes and per-class counts."""

    def __init__(self, cfg: Config, salt: str) -> None:
        self.classes = list(cfg.data.classes)
        self.lesion_classes = set(cfg.data.lesion_classes)
        self.size = cfg.data.image_size
        self.salt = salt
        self.seen: dict[str, str] = {}  # content hash -> first file with it
        self.patients: set[str] = set()
        self.counts: Counter[str] = Counter({c: 0 for c in self.classes})
        self.window_sources: Counter[str] = Counter()

    def check(self, row: _Row, got: _Outcome) -> tuple[str | None, str]:
        """Reason and message if the decoded sample cannot be admitted, else ``(None, "")``."""
        if got.reason is not None:
            where = f"{row.rel} (mask {row.task.mask_rel})" if got.on_mask and row.task else row.rel
            return got.reason, f"{where}: {got.detail}"
        if got.n_frames > 1:
            row = _Row(row.number, f"{row.rel} [frame {got.frame}]", row.label, row.patient_id, row.task)
        assert got.mask is not None and got.image is not None
        lesion_pixels = got.lesion_pixels
        if row.label in self.lesion_classes and lesion_pixels == 0:
            return "mask_empty", (
                f"{row.rel}: lesion mask is empty at image size {self.size} (empty mask file, or a lesion too small "
                "to survive resizing)"
            )
        if row.label not in self.lesion_classes and lesion_pixels > 0:
            return (
                "mask_conflict",
                f"{row.rel}: class {row.label!r} has no lesions but its mask marks {lesion_pixels} px",
            )
        if not self._patient(row, got):
            return "patient_missing", f"{row.rel}: no patient_id in labels.csv and no PatientID in the header"
        if got.digest in self.seen:
            return "duplicate", f"{row.rel}: same image and mask as {self.seen[got.digest]}"
        return None, ""

    def add(self, row: _Row, got: _Outcome) -> dict[str, Any]:
        """Record an admitted sample; return its manifest row (the archive writer adds stats and hashes)."""
        info = dict(got.info)
        self.seen[got.digest] = row.rel
        self.window_sources[info.pop("window_source")] += 1
        patient = hash_patient(self.salt, self._patient(row, got))
        self.patients.add(patient)
        self.counts[row.label] += 1
        return {
            **info,
            "source_file": row.rel,
            "patient": patient,
            "label": row.label,
            "label_idx": self.classes.index(row.label),
            "frame": got.frame,
        }

    @staticmethod
    def _patient(row: _Row, got: _Outcome) -> str:
        return row.patient_id or (got.header_patient_id or "").strip()


class _Decoder:
    """Decode the tasks of planned rows across ``cfg.ingest.workers`` processes: ``(row, outcomes)`` in row order.

    Use as a context manager, then iterate; ``outcomes`` is None for a row rejected by planning (no task). Small jobs
    are decoded in this process (see :func:`_use_pool`). Large ones go to a pool of worker processes (see
    :func:`_pool_context` for how they start); until a worker is up, this process decodes the first chunks itself,
    so a slow start-up is never waited for. Either way the outcomes, hence the archive, are the same.

    Rows are read from ``rows`` only as work goes out, in chunks of ``_CHUNK``, and at most
    ``_IN_FLIGHT_PER_WORKER`` chunks per worker are out at a time: memory stays flat whatever the dataset size,
    and the output order does not depend on which worker finishes first.
    """

    def __init__(self, rows: Iterator[_Row], n_rows: int, cfg: Config) -> None:
        self.rows, self.cfg = rows, cfg
        self.parallel = min(max(1, int(cfg.ingest.workers)), os.cpu_count() or 1)
        self.use_pool = _use_pool(n_rows, self.parallel)
        self.pool: ProcessPoolExecutor | None = None
        self.started: list[Future[bool]] = []
        self.starter: threading.Thread | None = None

    def __enter__(self) -> _Decoder:
        if not self.use_pool:
            return self
        context = _pool_context()
        self.pool = ProcessPoolExecutor(
            max_workers=self.parallel, mp_context=context, initializer=_init_worker, initargs=(self.cfg,)
        )
        if context.get_start_method() == "fork":
            _start_workers(self.pool, self.parallel, self.started)  # forks now, from this one thread
        else:
            # Starting a worker blocks until the fork server is up: a thread waits for that, not the decoding.
            self.starter = threading.Thread(
                target=_start_workers, args=(self.pool, self.parallel, self.started), daemon=True
            )
            self.starter.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.starter is not None:
            self.starter.join()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def __iter__(self) -> Iterator[tuple[_Row, list[_Outcome] | None]]:
        cfg = self.cfg
        if self.pool is None:
            for row in self.rows:
                yield row, None if row.task is None else _decode(row.task, cfg)
            return
        chunks = iter(lambda: list(itertools.islice(self.rows, _CHUNK)), [])
        ahead: deque[tuple[list[_Row], Future[list[list[_Outcome]]]]] = deque()
        while True:
            if any(f.done() and not f.exception() for f in list(self.started)):
                while len(ahead) < self.parallel * _IN_FLIGHT_PER_WORKER:
                    chunk = next(chunks, None)
                    if chunk is None:
                        break
                    tasks = [r.task for r in chunk if r.task is not None]
                    try:
                        ahead.append((chunk, self.pool.submit(_decode_chunk, tasks)))
                    except BrokenProcessPool:  # a worker died since the last hand-over: name the oldest chunk out
                        raise _worker_died(ahead[0][0] if ahead else chunk) from None
            if ahead:  # the pool's chunks come first in row order: they were taken from the front
                chunk, future = ahead.popleft()
                results = None if future.cancel() else iter(_result(future, chunk))
            else:
                chunk, results = next(chunks, None), None
                if chunk is None:
                    break
            for row in chunk:
                if row.task is None:
                    yield row, None
                else:
                    yield row, _decode(row.task, cfg) if results is None else next(results)


def _result(future: Future[list[list[_Outcome]]], chunk: list[_Row]) -> list[list[_Outcome]]:
    try:
        return future.result()
    except BrokenProcessPool:
        raise _worker_died(chunk) from None


def _worker_died(chunk: list[_Row]) -> MedganError:
    """The error for a pool broken by a dead worker, naming the files of the oldest chunk still out."""
    return MedganError(
        f"a decoding worker died while reading {chunk[0].rel} .. {chunk[-1].rel} (killed by the system, most "
        "likely out of memory): lower ingest.workers or ingest.max_decoded_bytes, or check those files"
    )


def _start_workers(pool: ProcessPoolExecutor, n: int, started: list[Future[bool]]) -> None:
    """Start the pool's ``n`` workers (each submit starts one); their futures complete once they are ready."""
    try:
        for _ in range(n):
            started.append(pool.submit(_ready))
    except RuntimeError:  # the ingest ended (finished or failed) before the pool was up: nothing to start
        pass


def _pool_context() -> multiprocessing.context.BaseContext:
    """How worker processes start: fork when that is safe, else a fork server, else spawn.

    Fork is instant (the workers share this process's imported modules), but only safe while this process runs a
    single thread: a fork copies the locks other threads hold (logging, MLflow's and tqdm's threads) in whatever
    state they are. Otherwise workers fork from a fork server, a clean process that imports the decoder once (about
    half a second, during which this process decodes on its own); spawn where neither exists.
    """
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    if "forkserver" not in methods:
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["components.ingest.decode"])
    return context


def _use_pool(n_tasks: int, workers: int) -> bool:
    """Whether a worker pool is expected to finish ``n_tasks`` files sooner than this process alone.

    The pool is joined when it shuts down, so a job this process finishes before the fork server is up would wait
    for it: only jobs longer than that start-up use a pool.
    """
    parallel = min(workers, os.cpu_count() or 1)
    return parallel > 1 and n_tasks > 2 * _CHUNK and n_tasks * _DECODE_S > _POOL_START_S


def _check_quarantine(
    labels: Path, n_rows: int, n_bad: int, by_reason: dict[str, int], quarantine: list[dict[str, str]], cfg: Config
) -> None:
    limit = cfg.ingest.max_quarantine_fraction
    if n_bad < n_rows and n_bad / n_rows <= limit:
        return
    reasons = ", ".join(f"{reason} {n}" for reason, n in by_reason.items())
    examples = "; ".join(q["message"] for q in quarantine[:5])
    what = "every row was quarantined" if n_bad == n_rows else f"{n_bad / n_rows:.1%} > {limit:.1%}"
    raise DataError(
        f"{labels}: {n_bad} of {n_rows} files quarantined ({what}, ingest.max_quarantine_fraction); "
        f"by reason: {reasons}. First: {examples}"
    )
