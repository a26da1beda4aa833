"""``labels.csv``: its rows, streamed, and what ingest must know about the whole file before the first row.

One pass over the file (:func:`index_labels`) counts the rows, finds the files listed more than once with different
labels (every such row is refused: which label is right cannot be told), and remembers which paths the rows name,
so that files on disk that no row names can be listed afterwards (:func:`unlisted_files`). Paths are remembered as
64-bit hashes of their normalised form, not as strings: memory stays small for hundreds of thousands of rows.
"""

from __future__ import annotations

import csv
import hashlib
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from components.errors import DataError

REQUIRED_COLUMNS = ("file", "label")
OPTIONAL_COLUMNS = ("patient_id", "mask_file")
# Files on disk that no row names: how many are named in the summary (all are counted).
UNLISTED_EXAMPLES = 20


def path_key(rel: str) -> int:
    """A 64-bit key of a relative path after normalisation (``./a//b.dcm`` and ``a/b.dcm`` are the same file)."""
    normal = posixpath.normpath(rel.replace(os.sep, "/")) if rel else ""
    return int.from_bytes(hashlib.blake2b(normal.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "big")


@dataclass
class LabelsIndex:
    """What :func:`index_labels` learnt from the whole of ``labels.csv``."""

    n_rows: int = 0
    # key of a file listed with different (non-empty) labels -> those labels, sorted
    conflicts: dict[int, tuple[str, ...]] = field(default_factory=dict)
    # key of every file and mask_file a row names -> the file's first non-empty label ("" for none, or a mask)
    named: dict[int, str] = field(default_factory=dict)

    def conflicting_labels(self, rel: str) -> tuple[str, ...]:
        """The labels of ``rel`` when rows give it different ones, else ``()``."""
        return self.conflicts.get(path_key(rel), ()) if self.conflicts else ()


def index_labels(path: Path) -> LabelsIndex:
    """One pass over ``labels.csv``: row count, conflicting labels, named paths. DataError if unusable or empty."""
    index = LabelsIndex()
    named = index.named
    spelled: dict[str, str] = {}  # one string object per distinct label, shared by every row that has it
    for row in iter_labels(path):
        index.n_rows += 1
        rel, label, mask = row.get("file", ""), row.get("label", ""), row.get("mask_file", "")
        if mask:
            named.setdefault(path_key(mask), "")
        key = path_key(rel)
        seen = named.get(key) or ""
        label = spelled.setdefault(label, label) if rel else ""
        if not seen:
            named[key] = label
        elif label and label != seen:
            index.conflicts[key] = tuple(sorted({*index.conflicts.get(key, (seen,)), label}))
    if index.n_rows == 0:
        raise DataError(f"{path} has a header but no rows: add one row per image (file,label,...)")
    return index


def iter_labels(path: Path) -> Iterator[dict[str, str]]:
    """Stream the rows of ``labels.csv`` as dicts with stripped values (``""`` for missing cells).

    The header is checked before the first row; a file that is not UTF-8 CSV is a DataError wherever it breaks.
    """
    if not path.is_file():
        raise DataError(
            f"{path} not found: the data folder needs a labels.csv with columns file,label "
            "(optional: patient_id, mask_file)"
        )
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip().lower() for h in reader.fieldnames or []]
            if not header:
                raise DataError(
                    f"{path} is empty: it needs a header line (file,label[,patient_id,mask_file]) and one row per image"
                )
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise DataError(
                    f"{path} lacks required column(s) {', '.join(missing)}; found columns: "
                    f"{', '.join(header)} (expected file,label[,patient_id,mask_file])"
                )
            reader.fieldnames = header
            for record in reader:
                row = {k: (v or "").strip() for k, v in record.items() if k is not None}
                if any(row.values()):  # blank lines are not rows
                    yield row
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise DataError(f"{path} is not a valid CSV file: {exc}") from None


def unlisted_files(data: Path, index: LabelsIndex) -> tuple[int, list[str]]:
    """Files under ``data`` that no row of labels.csv names: their number and the first few, folder by folder.

    ``labels.csv`` itself, hidden files and folders (``.dvc``, ``.git``, ...) are not counted; symlinked folders
    are not entered (ingest never reads through them to outside the data folder either).
    """
    count, examples = 0, []
    for folder, dirs, files in os.walk(data):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel_folder = Path(folder).relative_to(data).as_posix()
        for name in sorted(files):
            if name.startswith(".") or (rel_folder == "." and name == "labels.csv"):
                continue
            rel = name if rel_folder == "." else f"{rel_folder}/{name}"
            if path_key(rel) not in index.named:
                count += 1
                if len(examples) < UNLISTED_EXAMPLES:
                    examples.append(rel)
    return count, examples
