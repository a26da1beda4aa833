"""Reading one DICOM slice (and its lesion mask) into the normalised arrays of the dataset archive.

The pipeline, in order, for a single-frame greyscale image:

1. header only (``stop_before_pixels``): refuse multi-frame, colour and oversized images before any pixel is
   decoded; the declared Rows x Columns x Frames x Samples x BitsAllocated/8 and the file size are checked against
   ``cfg.ingest.max_decoded_bytes``, so a hostile file cannot make us allocate much memory;
2. decode the pixel data (pydicom, with pylibjpeg for compressed transfer syntaxes);
3. Modality LUT (rescale slope/intercept or a Modality LUT Sequence): stored values -> modality units (HU for CT);
4. linear window to [0, 1]: the configured window, else the header's first WindowCenter/WindowWidth, else the
   0.5/99.5 percentiles of the image;
5. MONOCHROME1: invert (DICOM applies the window before this presentation inversion, so header windows of
   MONOCHROME1 files are in the uninverted modality units);
6. pad to a square with black, resize to ``cfg.data.image_size`` (bilinear, antialiased when shrinking, Pillow)
   and map to [-1, 1].

Masks are binarised (any non-zero pixel is lesion), padded the same way and resized with nearest-neighbour so
they stay binary. Every refusal is an :class:`ImageRejected` with a reason code from :data:`REASONS`.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

from components.config import Config
from components.errors import DataError

# Header keywords whose values identify a patient, a clinician or a visit. Ingest never copies them anywhere, error
# messages are scrubbed of them, and the tests scan every output byte for the values the phantom puts in them.
PHI_TAGS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "OtherPatientIDs",
    "OtherPatientNames",
    "AccessionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "StationName",
)

# Reason codes of a rejected image or mask, with what each means. Ingest adds its own (see components.ingest).
REASONS: dict[str, str] = {
    "not_dicom": "not a DICOM file",
    "unreadable": "a DICOM file whose header cannot be parsed (truncated or corrupt)",
    "no_pixel_data": "a DICOM object without an image (e.g. a structured report)",
    "bad_header": "image attributes missing or inconsistent (Rows, Columns, BitsAllocated, ...)",
    "too_large": "declared decoded size or file size above ingest.max_decoded_bytes",
    "unsupported_photometric": "colour or palette image; only MONOCHROME1/MONOCHROME2 are supported",
    "multiframe": "more than one frame; only single-frame images are supported",
    "decode_error": "the pixel data could not be decoded",
    "mask_unreadable": "the mask file is not an image Pillow can read",
    "mask_size_mismatch": "the mask's size differs from the image's Rows x Columns",
}

# Header, tags and file-meta overhead tolerated on top of the decoded pixel size before a file counts as too large.
_HEADER_ALLOWANCE = 16 * 1024 * 1024
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
INTERPOLATION = "bilinear, antialiased when shrinking (Pillow); masks nearest"


class ImageRejected(DataError):
    """One image or mask cannot be used; ``reason`` is a code from :data:`REASONS`, ``detail`` says why.

    ``detail`` never contains header values that identify a patient, so it can go into the quarantine table.
    """

    def __init__(self, reason: str, path: str | os.PathLike[str], detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.reason = reason
        self.path = str(path)
        self.detail = detail

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        # Custom __init__ arguments: without this the exception cannot cross a process boundary.
        return (type(self), (self.reason, self.path, self.detail))


@dataclass
class DicomImage:
    """A decoded, normalised slice plus the header facts the manifest keeps."""

    image: np.ndarray  # float32 (S, S) in [-1, 1]
    rows: int
    cols: int
    modality: str
    photometric: str
    pixel_spacing: tuple[float, float] | None
    window: tuple[float, float] | None  # (center, width) in modality units; None when percentiles were used
    window_source: str  # config | header | percentile
    # PHI: only ever used to derive a salted hash, never written anywhere.
    patient_id: str | None


def read_header(path: str | os.PathLike[str], cfg: Config) -> Dataset:
    """Parse the header of ``path`` without its pixel data and check that it is an image we can decode safely."""
    path = Path(path)
    limit = cfg.ingest.max_decoded_bytes
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageRejected("unreadable", path, f"cannot read the file ({_exc_name(exc)})") from None
    if size > limit + _HEADER_ALLOWANCE:
        # Checked before parsing: even the header parser would read large elements into memory.
        raise ImageRejected(
            "too_large",
            path,
            f"file of {size} bytes exceeds ingest.max_decoded_bytes={limit} "
            f"(+{_HEADER_ALLOWANCE} bytes header allowance)",
        )
    ds = _parse(path, stop_before_pixels=True)
    if "Rows" not in ds and "Columns" not in ds and "NumberOfFrames" not in ds:
        raise ImageRejected("no_pixel_data", path, f"no image in this DICOM object (SOP class {_sop_class(ds)})")
    try:
        rows, cols, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageRejected("bad_header", path, f"image attributes missing or invalid ({_exc_name(exc)})") from None
    if rows <= 0 or cols <= 0 or bits not in (1, 8, 16, 32, 64) or samples <= 0 or frames <= 0:
        raise ImageRejected(
            "bad_header",
            path,
            f"invalid image attributes: Rows={rows} Columns={cols} "
            f"BitsAllocated={bits} SamplesPerPixel={samples} NumberOfFrames={frames}",
        )
    declared = math.ceil(rows * cols * frames * samples * bits / 8)
    if declared > limit:
        raise ImageRejected(
            "too_large",
            path,
            f"declared pixel data of {rows}x{cols}x{frames} frames x {samples} "
            f"samples x {bits} bits = {declared} bytes exceeds ingest.max_decoded_bytes={limit}",
        )
    if frames > 1:
        raise ImageRejected("multiframe", path, f"{frames} frames; only single-frame images are supported")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageRejected(
            "unsupported_photometric",
            path,
            f"PhotometricInterpretation {photometric or 'missing'!r}"
            f" with {samples} samples per pixel; only MONOCHROME1/MONOCHROME2 are supported",
        )
    return ds


def read_dicom(path: str | os.PathLike[str], cfg: Config) -> DicomImage:
    """Decode ``path`` into a float32 image in [-1, 1] of size ``cfg.data.image_size``; see the module docstring."""
    path = Path(path)
    header = read_header(path, cfg)
    ds = _parse(path, stop_before_pixels=False)
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise ImageRejected(
            "no_pixel_data", path, "the header declares an image but the file has no pixel data (truncated?)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stored = ds.pixel_array
            values = apply_modality_lut(stored, ds).astype(np.float64, copy=False)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is this file's problem, not a bug of ours
        raise ImageRejected("decode_error", path, f"pixel data could not be decoded: {_scrub(exc, header)}") from None
    if values.shape != (int(header.Rows), int(header.Columns)):
        raise ImageRejected(
            "decode_error",
            path,
            f"decoded shape {values.shape} differs from the declared {int(header.Rows)}x{int(header.Columns)}",
        )
    if not np.isfinite(values).all():
        raise ImageRejected("decode_error", path, "pixel data contains NaN or infinite values")
    center, width, source = _choose_window(header, cfg)
    if source == "percentile":
        lo, hi = np.percentile(values, [0.5, 99.5])
        unit = _linear(values, float(lo), float(hi))
    else:
        unit = _linear(values, center - width / 2, center + width / 2)
    photometric = str(header.PhotometricInterpretation).strip()
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    image = resize_square(unit.astype(np.float32), cfg.data.image_size, nearest=False) * 2.0 - 1.0
    return DicomImage(
        image=np.clip(image, -1.0, 1.0).astype(np.float32),
        rows=int(header.Rows),
        cols=int(header.Columns),
        modality=str(header.get("Modality", "")),
        photometric=photometric,
        pixel_spacing=_pixel_spacing(header),
        window=None if source == "percentile" else (center, width),
        window_source=source,
        patient_id=str(header.PatientID) if header.get("PatientID") else None,
    )


def read_mask(path: str | os.PathLike[str], rows: int, cols: int, image_size: int) -> np.ndarray:
    """Load a lesion mask image as uint8 {0, 1} of ``image_size``; it must be ``rows`` x ``cols`` like its DICOM."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # A decompression bomb must fail, not warn: turn Pillow's size warning into an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.size != (cols, rows):
                    raise ImageRejected(
                        "mask_size_mismatch",
                        path,
                        f"mask is {img.size[1]}x{img.size[0]} (rows x cols) but its image is {rows}x{cols}",
                    )
                img.load()
                if img.mode not in ("1", "L", "I", "I;16", "F"):
                    img = img.convert("L")
                arr = np.asarray(img)
    except ImageRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
        raise ImageRejected("mask_unreadable", path, f"cannot read the mask image ({_exc_name(exc)})") from None
    binary = (arr > 0).astype(np.uint8)
    return resize_square(binary, image_size, nearest=True)


def window_unit(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear window: ``center - width/2`` maps to 0, ``center + width/2`` to 1, values outside are clipped."""
    return _linear(values, center - width / 2, center + width / 2)


def resize_square(arr: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    """Pad ``arr`` with zeros (black / background) to a centred square, then resize it to ``size`` x ``size``.

    Bilinear for images (Pillow widens the filter when shrinking, i.e. antialiases), nearest for masks.
    """
    rows, cols = arr.shape
    side = max(rows, cols)
    if rows != cols:
        top, left = (side - rows) // 2, (side - cols) // 2
        padded = np.zeros((side, side), dtype=arr.dtype)
        padded[top : top + rows, left : left + cols] = arr
        arr = padded
    if side == size:
        return arr.copy()
    if nearest:
        out = Image.fromarray(arr.astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST)
        return np.asarray(out, dtype=arr.dtype)
    out = Image.fromarray(arr.astype(np.float32)).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32)


def header_phi(ds: Dataset) -> list[str]:
    """The non-empty values of the PHI header elements of ``ds`` (to redact them from any text we emit)."""
    values = []
    for keyword in PHI_TAGS:
        value = ds.get(keyword)
        if value is None:
            continue
        items = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
        values.extend(str(v).strip() for v in items if str(v).strip())
    return values


def _parse(path: Path, stop_before_pixels: bool) -> Dataset:
    try:
        with warnings.catch_warnings():
            # pydicom's value-validation warnings quote element values, which may be PHI: keep them out of logs.
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
            except InvalidDicomError:
                pass
            else:
                # pydicom stops quietly at the end of a truncated file; an empty data set is the tell-tale.
                if len(ds) == 0 or "TransferSyntaxUID" not in ds.file_meta:
                    raise ImageRejected("unreadable", path, "DICOM file ends before its data set (truncated?)")
                return ds
            # Old files may lack the 128-byte preamble and 'DICM'; accept them only if they parse into an image.
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
            if "SOPClassUID" not in ds and "Rows" not in ds:
                raise InvalidDicomError("no DICOM preamble and no image attributes")
            return ds
    except ImageRejected:
        raise
    except InvalidDicomError:
        raise ImageRejected("not_dicom", path, "not a DICOM file (no 'DICM' preamble, no parsable header)") from None
    except OSError as exc:
        raise ImageRejected("unreadable", path, f"cannot read the file ({_exc_name(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on corrupt files
        # The message is left out on purpose: a parser error may quote raw header bytes (PHI).
        raise ImageRejected("unreadable", path, f"corrupt or truncated DICOM ({_exc_name(exc)})") from None


def _choose_window(ds: Dataset, cfg: Config) -> tuple[float, float, str]:
    if cfg.data.window_center is not None and cfg.data.window_width is not None:
        return float(cfg.data.window_center), float(cfg.data.window_width), "config"
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None and width > 0 and math.isfinite(center) and math.isfinite(width):
        return center, width, "header"
    return 0.0, 0.0, "percentile"


def _first(value: object) -> float | None:
    """First value of a possibly multi-valued numeric element, or None if absent or not a number."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _linear(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if not hi > lo:  # a constant image (or degenerate window): all black rather than a division by zero
        return np.zeros_like(values, dtype=np.float64)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2:
            try:
                return float(value[0]), float(value[1])
            except (TypeError, ValueError):
                return None
    return None


def _sop_class(ds: Dataset) -> str:
    uid = ds.get("SOPClassUID")
    return getattr(uid, "name", None) or str(uid or "unknown")


def _exc_name(exc: BaseException) -> str:
    return type(exc).__name__


def _scrub(exc: BaseException, ds: Dataset) -> str:
    """``Type: message`` of an exception, cut short and with any PHI value of ``ds`` redacted."""
    text = f"{_exc_name(exc)}: {exc}"[:300]
    for value in header_phi(ds):
        text = text.replace(value, "<redacted>")
    return text
