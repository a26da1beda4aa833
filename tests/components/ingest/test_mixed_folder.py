"""A folder of several hundred good and broken files, as a hospital export has them: every row gets the right outcome.

Built here from a phantom: every good file is admitted (old exporters' files without preamble, deflated files,
.npy and NIfTI masks included) and every broken one is quarantined with its reason, through the worker pool.
"""

import csv
import shutil
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from components.archive import open_archive
from components.config import resolve
from components.ingest import core
from components.ingest.core import REASONS, ingest
from components.phantom import write_phantom

SIZE = 32
COPIES = 12  # rows per kind of file (three times as many plain good files)


class Folder:
    """The data folder being built: its labels.csv rows and each row's expected outcome ("ok" or a reason)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.base = [r for r in csv.DictReader((root / "labels.csv").open()) if r["label"] == "normal"]
        self.rows: list[dict[str, str]] = []
        self.expected: list[str] = []
        self.shift = 0

    def add(self, expected, file, label="normal", mask_file="", patient_id="P-MIX"):
        self.rows.append({"file": file, "label": label, "patient_id": patient_id, "mask_file": mask_file})
        self.expected.append(expected)

    def dataset(self):
        """A normal phantom slice with new pixel content (rolled), so that no two files are duplicates."""
        self.shift += 1
        base, roll = self.shift % len(self.base), 1 + self.shift // len(self.base)  # each (file, roll) once
        ds = pydicom.dcmread(self.root / self.base[base]["file"])
        ds.PixelData = np.roll(ds.pixel_array, roll, axis=1).tobytes()
        return ds

    def write(self, name, ds=None):
        ds = self.dataset() if ds is None else ds
        ds.save_as(self.root / name, enforce_file_format=True)
        return name


def patch(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1 and len(old) == len(new)
    return data.replace(old, new)


def make_kinds(f: Folder, i: int) -> None:  # noqa: PLR0915 - one line per kind of file, read as a list
    """One row of every kind, the i-th copy."""
    root = f.root
    # --- admitted ---
    for j in range(3):
        f.add("ok", f.write(f"good{i}_{j}.dcm"))
    ds = f.dataset()
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = True, True
    write_dataset(fp, ds)  # no preamble, no File Meta: as old exporters wrote
    (root / f"old{i}.dcm").write_bytes(fp.getvalue())
    f.add("ok", f"old{i}.dcm")
    ds = f.dataset()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    f.add("ok", f.write(f"deflated{i}.dcm", ds))
    lesion = np.zeros((SIZE, SIZE), np.uint8)
    lesion[8:16, 8 + i : 16 + i] = 1
    np.save(root / f"mask{i}.npy", lesion.astype(bool))
    f.add("ok", f.write(f"npy{i}.dcm"), "benign", f"mask{i}.npy")
    nib.save(nib.Nifti1Image(lesion, np.eye(4)), root / f"mask{i}.nii.gz")
    f.add("ok", f.write(f"nifti{i}.dcm"), "malignant", f"mask{i}.nii.gz")
    # --- the file ---
    (root / f"empty{i}.dcm").write_bytes(b"")
    f.add("empty_file", f"empty{i}.dcm")
    (root / f"series{i}.dcm").mkdir()
    f.add("not_a_file", f"series{i}.dcm")
    (root / f"notes{i}.dcm").write_text("referral letter, not an image\n" * (i + 1))
    f.add("not_dicom", f"notes{i}.dcm")
    data = (root / f.write(f"cut{i}.dcm")).read_bytes()
    (root / f"cut{i}.dcm").write_bytes(data[: len(data) - 1 - i])
    f.add("truncated", f"cut{i}.dcm")
    data = (root / f.write(f"malformed{i}.dcm")).read_bytes()
    at = data.index(b"\x08\x00\x60\x00")  # before Modality: an undefined-length sequence of garbage
    garbage = struct.pack("<HH2sHI", 8, 0x1115, b"SQ", 0, 0xFFFFFFFF) + bytes(range(1, 41))
    (root / f"malformed{i}.dcm").write_bytes(data[:at] + garbage + data[at:])
    f.add("corrupt", f"malformed{i}.dcm")
    ds = f.dataset()
    ds.PixelData = b""
    f.add("no_pixel_data", f.write(f"nopixels{i}.dcm", ds))
    ds = f.dataset()
    ds.RescaleSlope = 1.3579
    f.write(f"slope{i}.dcm", ds)
    (root / f"slope{i}.dcm").write_bytes(patch((root / f"slope{i}.dcm").read_bytes(), b"1.3579", b"a.bcde"))
    f.add("bad_header", f"slope{i}.dcm")
    ds = f.dataset()
    ds.PixelData = ds.PixelData * 2
    f.add("pixel_length_mismatch", f.write(f"long{i}.dcm", ds))
    shutil.copyfile(root / "bomb.dcm", root / f"bomb{i}.dcm")
    f.add("too_large", f"bomb{i}.dcm")
    # --- the row ---
    f.add("label_empty", f.write(f"nolabel{i}.dcm"), "")
    f.add("unknown_class", f.write(f"cyst{i}.dcm"), "cyst")
    f.add("file_missing", f"gone{i}.dcm")
    f.add("path_escape", f"../outside{i}.dcm")
    name = f.write(f"twice{i}.dcm")
    f.add("label_conflict", name)
    f.add("label_conflict", name, "benign", f"mask{i}.npy")
    f.add("duplicate", f"good{i}_0.dcm")
    # --- the mask ---
    labels = lesion.copy()
    labels[20:24, 20:24] = 2
    Image.fromarray(labels).save(root / f"labelmap{i}.png")
    f.add("mask_label_map", f.write(f"lm{i}.dcm"), "benign", f"labelmap{i}.png")
    Image.fromarray(lesion[:16] * 255).save(root / f"half{i}.png")
    f.add("mask_size_mismatch", f.write(f"half{i}.dcm"), "benign", f"half{i}.png")
    f.add("mask_missing", f.write(f"nomask{i}.dcm"), "malignant")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mixed")
    root = write_phantom(tmp / "data", seed=7, n_patients=6, slices_per_patient=4, size=SIZE)
    f = Folder(root)
    phantom_rows = list(csv.DictReader((root / "labels.csv").open()))
    for row in phantom_rows:
        f.add("ok", row["file"], row["label"], row["mask_file"], row["patient_id"])
    bomb = f.dataset()  # 32x32 declared, 24 MiB of pixel data: refused before inflating it
    bomb.PixelData = bytes(24 << 20)
    bomb.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    f.write("bomb.dcm", bomb)
    for i in range(COPIES):
        make_kinds(f, i)
    (root / "bomb.dcm").unlink()
    for stray in ("notes.txt", "dicom/extra.dcm", "masks/unused.png"):
        (root / stray).write_text("not listed in labels.csv")
    with (root / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "label", "patient_id", "mask_file"])
        writer.writeheader()
        writer.writerows(f.rows)
    cfg = resolve(
        "tiny",
        [
            f"data.image_size={SIZE}",
            "ingest.workers=2",
            "ingest.max_quarantine_fraction=0.8",
            "ingest.max_decoded_bytes=1048576",
        ],
    )
    with pytest.MonkeyPatch.context() as mp:  # through the worker pool: every outcome crosses a process boundary
        mp.setattr(core, "_POOL_START_S", 0.0)
        mp.setattr(core.os, "cpu_count", lambda: 2)
        summary = ingest(root, tmp / "archive", cfg, salt="mixed")
    quarantine = pd.read_csv(tmp / "archive" / "quarantine.csv", keep_default_na=False)
    return f, summary, open_archive(summary["archive"]), quarantine


def test_several_hundred_rows_of_every_kind(mixed):
    f, summary, _, _ = mixed
    assert len(f.rows) >= 300
    kinds = set(f.expected)
    assert len(kinds - {"ok"}) == 18 and kinds - {"ok"} <= set(REASONS)
    assert summary["n_rows"] == len(f.rows)


def test_every_good_file_is_admitted(mixed):
    f, summary, archive, _ = mixed
    good = [row["file"] for row, outcome in zip(f.rows, f.expected, strict=True) if outcome == "ok"]
    assert archive.manifest["source_file"].tolist() == good
    assert summary["n_ok"] == len(good)


def test_every_broken_row_is_quarantined_with_its_reason(mixed):
    f, summary, _, quarantine = mixed
    expected = [(row["file"], outcome) for row, outcome in zip(f.rows, f.expected, strict=True) if outcome != "ok"]
    assert sorted(zip(quarantine["path"], quarantine["reason"], strict=True)) == sorted(expected)
    counts = pd.Series([reason for _, reason in expected]).value_counts().to_dict()
    assert summary["quarantined_by_reason"] == dict(sorted(counts.items()))
    assert all(message and "Error" not in message for message in quarantine["message"])


def test_summary_names_unknown_classes_conflicts_and_unlisted_files(mixed):
    _, summary, _, _ = mixed
    assert summary["unknown_classes"] == {"cyst": COPIES}
    assert summary["label_conflicts"] == COPIES
    assert summary["n_unlisted"] == 3
    assert summary["unlisted"] == ["notes.txt", "dicom/extra.dcm", "masks/unused.png"]  # folder by folder
    text = " ".join(summary["warnings"])
    assert f"'cyst' ({COPIES} rows)" in text and "notes.txt" in text and "label_conflict" in text
