"""Ingest every file bundled with pydicom: each is admitted with the right pixels or quarantined with the right reason.

The files are copied out of the installed package (never fetched: ``get_testdata_files`` may go to the network).
"""

import csv
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.pixels import apply_color_lut, apply_modality_lut

from components.archive import open_archive
from components.config import resolve
from components.dicomio import luminance, resize_square, window_unit
from components.ingest import core
from components.ingest.core import REASONS, ingest

BUNDLED = Path(pydicom.__file__).parent / "data" / "test_files"
SIZE = 32

# Files whose fate is known in advance (path relative to the bundled folder -> quarantine reason).
EXPECTED_REASONS = {
    "MR_truncated.dcm": "truncated",  # pixel data cut short
    "rtplan_truncated.dcm": "truncated",  # cut inside a sequence (not an image either)
    "meta_missing_tsyntax.dcm": "bad_header",  # pixel data, but no Rows / Columns
    "nested_priv_SQ.dcm": "bad_header",
    "MR_small_padded.dcm": "pixel_length_mismatch",  # 128 bytes after the image that the header does not describe
    "JPEG-lossy.dcm": "decode_error",  # pydicom's own decoders fail on these two
    "JPEG2000-embedded-sequence-delimiter.dcm": "decode_error",
    "badVR.dcm": "bad_header",
    "rtstruct.dcm": "no_pixel_data",
    "rtplan.dcm": "no_pixel_data",
    "waveform_ecg.dcm": "no_pixel_data",
    "test-SR.dcm": "no_pixel_data",
    "reportsi.dcm": "no_pixel_data",
    "dicomdirtests/DICOMDIR": "no_pixel_data",
    "ExplVR_BigEndNoMeta.dcm": "no_pixel_data",  # no file meta, parsed anyway: an RT plan
    "no_meta.dcm": "not_dicom",  # no preamble, no meta and no image attributes
    "README.txt": "not_dicom",
    "zipMR.gz": "not_dicom",
    "crayons.icc": "not_dicom",
    # Lossless encodings of MR_small decode to exactly the same image: later copies are duplicates.
    "MR_small_RLE.dcm": "duplicate",
    "MR_small_bigendian.dcm": "duplicate",
    "MR_small_expb.dcm": "duplicate",
    "MR_small_implicit.dcm": "duplicate",
    "MR_small_jp2klossless.dcm": "duplicate",
    "MR_small_jpeg_ls_lossless.dcm": "duplicate",
    "SC_rgb_jpeg_gdcm.dcm": "duplicate",  # lossless JPEG of SC_rgb_gdcm_KY's image
    "SC_rgb_rle.dcm": "duplicate",  # and its RLE copy
    "rtdose_rle.dcm": "duplicate",  # RLE copy of rtdose: every frame identical
    "rtdose_expb_1frame.dcm": "duplicate",
    "liver_expb_1frame.dcm": "duplicate",  # big-endian copy of liver_1frame
    "SC_rgb_dcmtk_+eb+cy+np.dcm": "duplicate",  # YBR_FULL_422 decodes exactly like the YBR_FULL copy
}
# Must be admitted (one sample per frame): one per transfer syntax / colour model we claim to read.
EXPECTED_ADMITTED = {
    "CT_small.dcm": 1,  # explicit VR little endian
    "MR_small.dcm": 1,
    "693_J2KI.dcm": 1,  # JPEG 2000
    "JPEGLSNearLossless_16.dcm": 1,  # JPEG-LS
    "JPGExtended.dcm": 1,  # JPEG extended (12 bit)
    "SC_rgb_gdcm_KY.dcm": 1,  # JPEG 2000, RGB
    "SC_rgb_dcmtk_+eb+cy+n1.dcm": 1,  # JPEG baseline, YBR_FULL
    "image_dfl.dcm": 1,  # deflated explicit VR little endian
    "ExplVR_BigEnd.dcm": 1,  # explicit VR big endian (RGB)
    "liver_1frame.dcm": 1,
    "rtdose.dcm": 15,  # implicit VR, multi-frame
    "examples_ybr_color.dcm": 28,  # multi-frame YBR JPEG; 2 of its 30 frames repeat earlier ones (duplicate)
    "examples_palette.dcm": 1,
    "examples_jpeg2k.dcm": 1,  # JPEG 2000 with YBR_RCT
    "dicomdirtests/77654033/CR1/6154": 1,  # MONOCHROME1
}


def reference(path: Path, frame: int) -> np.ndarray:
    """pydicom's own decoding of one frame through the documented steps, independently of ingest's code path."""
    ds = pydicom.dcmread(path, force=True)
    arr = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        arr = arr[frame]
    photometric = str(ds.PhotometricInterpretation)
    if photometric.startswith("MONOCHROME"):
        values = apply_modality_lut(arr, ds).astype(np.float64)
        center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
        if center is not None and width is not None:
            center = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
            width = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
        if center is None or width is None or not width > 0:
            lo, hi = np.percentile(values, [0.5, 99.5])
            center, width = (lo + hi) / 2, hi - lo
        unit = window_unit(values, center, width) if width > 0 else np.zeros_like(values)
        if photometric == "MONOCHROME1":
            unit = 1 - unit
    else:
        if photometric == "PALETTE COLOR":
            arr, top = apply_color_lut(arr, ds), 2 ** (16 if ds.RedPaletteColorLookupTableDescriptor[2] > 8 else 8)
        else:
            top = 2 ** int(ds.BitsStored)
        unit = luminance(arr) / (top - 1)
    return np.clip(resize_square(unit.astype(np.float32), SIZE, nearest=False) * 2 - 1, -1, 1)


@pytest.fixture(scope="module")
def bundled_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundled")
    data = root / "data"
    files = sorted(p.relative_to(BUNDLED).as_posix() for p in BUNDLED.rglob("*") if p.is_file())
    for rel in files:
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(BUNDLED / rel, data / rel)
    # MR_small first, so that its lossless copies are the duplicates.
    files.sort(key=lambda rel: (rel != "MR_small.dcm", rel))
    with (data / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label", "patient_id"])
        writer.writerows([rel, "normal", f"p{i % 4}"] for i, rel in enumerate(files))
    cfg = resolve("tiny", [f"data.image_size={SIZE}", "ingest.max_quarantine_fraction=0.95", "ingest.workers=2"])
    with pytest.MonkeyPatch.context() as mp:  # through the worker pool: rejections must cross process boundaries
        mp.setattr(core, "_POOL_START_S", 0.0)
        mp.setattr(core.os, "cpu_count", lambda: 2)
        summary = ingest(data, root / "archive", cfg, salt="bundled")
    archive = open_archive(summary["archive"])
    quarantine = pd.read_csv(Path(summary["archive"]) / "quarantine.csv")
    return data, files, archive, quarantine


def test_every_bundled_file_is_admitted_or_quarantined_with_a_known_reason(bundled_run):
    _, files, archive, quarantine = bundled_run
    admitted = set(archive.manifest["source_file"])
    quarantined = set(quarantine["path"])
    assert admitted | quarantined == set(files)
    assert set(quarantine["reason"]) <= set(REASONS)
    reasons = dict(zip(quarantine["path"], quarantine["reason"], strict=True))
    for rel, reason in EXPECTED_REASONS.items():
        assert reasons.get(rel) == reason, (rel, reasons.get(rel))
    frames = archive.manifest.groupby("source_file").size()
    for rel, n in EXPECTED_ADMITTED.items():
        assert frames.get(rel) == n, (rel, frames.get(rel))
    assert (quarantine["path"] == "rtdose_rle.dcm").sum() == 15  # one entry per duplicate frame


# Decoded by pydicom, refused by ingest on purpose: pydicom drops pixel data beyond what the header declares.
REFUSED_ON_PURPOSE = {"MR_small_padded.dcm": "pixel_length_mismatch"}


def test_every_file_pydicom_decodes_is_admitted_unless_a_duplicate(bundled_run):
    data, files, archive, quarantine = bundled_run
    reasons = dict(zip(quarantine["path"], quarantine["reason"], strict=True))
    for rel in files:
        try:
            ds = pydicom.dcmread(data / rel)
            ds.pixel_array  # noqa: B018 - decodes or raises
        except Exception:  # noqa: BLE001, S112 - not decodable by pydicom: any documented reason will do
            continue
        expected = REFUSED_ON_PURPOSE.get(rel, "duplicate")
        assert rel in set(archive.manifest["source_file"]) or reasons.get(rel) == expected, (rel, reasons.get(rel))


def test_admitted_pixels_match_pydicoms_decoding(bundled_run):
    data, _, archive, _ = bundled_run
    for i, row in enumerate(archive.manifest.itertuples()):
        expected = reference(data / row.source_file, int(row.frame))
        np.testing.assert_allclose(archive.images[i], expected, atol=2e-5, err_msg=f"{row.source_file}[{row.frame}]")
    assert archive.manifest["frame"].max() == 29  # examples_ybr_color's last frame
    ct = archive.manifest.set_index("source_file").loc["CT_small.dcm"]
    ds = pydicom.dcmread(data / "CT_small.dcm")
    assert (ct.pixel_spacing_row, ct.pixel_spacing_col) == tuple(float(v) for v in ds.PixelSpacing)


def test_rgb_reject_policy_quarantines_colour(bundled_run, tmp_path):
    data, *_ = bundled_run
    rows = ["SC_rgb_rle.dcm", "examples_palette.dcm", "CT_small.dcm", "MR_small.dcm", "rtdose_1frame.dcm"]
    (tmp_path / "d").mkdir()
    for rel in rows:
        shutil.copyfile(data / rel, tmp_path / "d" / rel)
    with (tmp_path / "d" / "labels.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["file", "label", "patient_id"], *([rel, "normal", "p"] for rel in rows)])
    cfg = resolve("tiny", [f"data.image_size={SIZE}", "ingest.rgb=reject", "ingest.max_quarantine_fraction=0.5"])
    summary = ingest(tmp_path / "d", tmp_path / "a", cfg, salt="s")
    quarantine = pd.read_csv(tmp_path / "a" / "quarantine.csv")
    assert summary["n_ok"] == 3
    assert dict(zip(quarantine["path"], quarantine["reason"], strict=True)) == {
        "SC_rgb_rle.dcm": "unsupported_photometric",
        "examples_palette.dcm": "unsupported_photometric",
    }
