"""Reading one DICOM file (and its lesion mask) into the normalised arrays of the dataset archive.

The pipeline, in order, for every frame of a file:

1. header only (``stop_before_pixels``): refuse oversized images before any pixel is decoded (the declared
   Rows x Columns x Frames x Samples x BitsAllocated/8 and the file size are checked against
   ``cfg.ingest.max_decoded_bytes``, so a hostile file cannot make us allocate much memory), and multi-frame or
   colour images when ``ingest.multiframe=reject`` / ``ingest.rgb=reject``;
2. decode the pixel data (pydicom, with pylibjpeg + openjpeg/libjpeg/rle for JPEG baseline/extended/lossless,
   JPEG-LS, JPEG 2000 and RLE; deflated, big-endian and implicit-VR files natively); uncompressed pixel data
   shorter than declared is reported as a truncated file;
3. greyscale: Modality LUT (rescale slope/intercept, per frame for enhanced multi-frame images, or a Modality LUT
   Sequence): stored values -> modality units (HU for CT); colour (RGB, YBR converted to RGB by pydicom, PALETTE
   COLOR through its colour table): ITU-R BT.601 luminance, windowed over the full stored range (``window_source``
   ``full_range``);
4. greyscale: VOI to [0, 1]: the configured window, else the frame's header window (linear, or sigmoid where its
   VOILUTFunction says so), else a VOI LUT Sequence, else the 0.5/99.5 percentiles of the frame (see
   :mod:`components.windowing`);
5. MONOCHROME1: invert (DICOM applies the window before this presentation inversion, so header windows of
   MONOCHROME1 files are in the uninverted modality units);
6. make square (``ingest.square``: pad with black, or crop the centred square), resize to ``cfg.data.image_size``
   (bilinear, antialiased when shrinking, Pillow) and map to [-1, 1].

Masks are binarised (any non-zero pixel is lesion), squared the same way and resized with nearest-neighbour so
they stay binary. Every refusal is an :class:`ImageRejected` with a reason code from :data:`REASONS`.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut

from components import dicomscan, windowing
from components.config import Config
from components.dicomheader import Header
from components.errors import ConfigError, DataError

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

# What read_frames reads from a header (besides the PHI elements, read to redact them from error messages): the
# elements dicomscan's fast path keeps.
_HEADER_KEYWORDS: tuple[str, ...] = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "Modality",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
)
_KEPT_TAGS = dicomscan.tags(_HEADER_KEYWORDS + PHI_TAGS)

# Reason codes of a rejected image or mask, with what each means. Ingest adds its own (see components.ingest).
REASONS: dict[str, str] = {
    "not_dicom": "not a DICOM file",
    "unreadable": "a DICOM file whose header cannot be parsed, or whose pixel data is cut short (truncated/corrupt)",
    "no_pixel_data": "a DICOM object without an image (e.g. a structured report)",
    "bad_header": "image attributes missing or inconsistent (Rows, Columns, BitsAllocated, ...)",
    "too_large": "declared decoded size or file size above ingest.max_decoded_bytes",
    "unsupported_photometric": "an unsupported colour model, or a colour/palette image with ingest.rgb=reject",
    "multiframe": "more than one frame with ingest.multiframe=reject",
    "decode_error": "the pixel data could not be decoded (codec error, or decoded shape differs from the header)",
    "mask_unreadable": "the mask file is not an image Pillow can read",
    "mask_size_mismatch": "the mask's size differs from the image's Rows x Columns",
}

# Header, tags and file-meta overhead tolerated on top of the decoded pixel size before a file counts as too large.
_HEADER_ALLOWANCE = 16 * 1024 * 1024
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
INTERPOLATION = "bilinear, antialiased when shrinking (Pillow); masks nearest"
_GREY = frozenset({"MONOCHROME1", "MONOCHROME2"})
# Three-sample colour models pydicom decodes to RGB (YBR via its colour-space conversion or the JPEG 2000 MCT).
_COLOUR = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT"})
_POLICIES: dict[str, tuple[str, ...]] = {
    "square": ("pad", "crop"),
    "multiframe": ("frames", "reject"),
    "rgb": ("convert", "reject"),
}


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
    window: tuple[float, float] | None  # (center, width) in modality units; None for a VOI LUT or percentiles
    window_source: str  # config | header | voi_lut | percentile | full_range (colour)
    # PHI: only ever used to derive a salted hash, never written anywhere.
    patient_id: str | None
    frame: int = 0  # index of this frame in its file
    n_frames: int = 1


def check_policy(cfg: Config) -> None:
    """Raise :class:`ConfigError` when an ``ingest`` policy option has a value we do not know."""
    for key, allowed in _POLICIES.items():
        value = getattr(cfg.ingest, key)
        if value not in allowed:
            raise ConfigError(f"ingest.{key}={value!r}: choose one of {', '.join(allowed)}")


def read_header(path: str | os.PathLike[str], cfg: Config) -> Dataset:
    """Parse the header of ``path`` without its pixel data and check that it is an image we can decode safely.

    Multi-frame and colour images pass only when ``cfg.ingest.multiframe`` / ``cfg.ingest.rgb`` allow them.
    """
    path = Path(path)
    check_policy(cfg)
    _check_size(path, cfg)
    with _lenient_values():
        ds = _parse(path, stop_before_pixels=True)
        _image_header(Header(ds), path, cfg)
    return ds


@dataclass(frozen=True)
class _ImageHeader:
    """The image attributes of a header, read (and checked) once: every later step uses these, not the data set."""

    rows: int
    cols: int
    bits: int  # BitsAllocated
    samples: int
    frames: int
    photometric: str


@contextlib.contextmanager
def _lenient_values() -> Iterator[None]:
    """Let pydicom convert header values without validating them (its default validation only warns).

    We ignore those warnings anyway (they quote raw values, which may be PHI), and validating every value costs a
    sixth of a small file's processing. Scoped, because the setting is pydicom-global.
    """
    settings = pydicom.config.settings
    previous = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode = previous


def _check_size(path: Path, cfg: Config) -> None:
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


def _image_header(h: Header, path: Path, cfg: Config) -> _ImageHeader:
    """The image checks of :func:`read_header` on a parsed header (its pixel data not decoded yet)."""
    limit = cfg.ingest.max_decoded_bytes
    if "Rows" not in h and "Columns" not in h and "NumberOfFrames" not in h:
        raise ImageRejected("no_pixel_data", path, f"no image in this DICOM object (SOP class {_sop_class(h.ds)})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # value-validation warnings quote raw values: keep them out of logs
            rows, cols, bits = int(h["Rows"]), int(h["Columns"]), int(h["BitsAllocated"])
            samples = int(h.get("SamplesPerPixel", 1) or 1)
            frames = int(h.get("NumberOfFrames", 1) or 1)
    except (KeyError, AttributeError, TypeError, ValueError) as exc:
        raise ImageRejected("bad_header", path, f"image attributes missing or invalid ({_exc_name(exc)})") from None
    if rows <= 0 or cols <= 0 or bits not in (1, 8, 16, 32, 64) or samples <= 0 or frames <= 0:
        raise ImageRejected(
            "bad_header",
            path,
            f"invalid image attributes: Rows={rows} Columns={cols} "
            f"BitsAllocated={bits} SamplesPerPixel={samples} NumberOfFrames={frames}",
        )
    photometric = str(h.get("PhotometricInterpretation", "")).strip()
    # A palette image decodes to 3 x 16-bit samples once its colour table is applied.
    decoded_samples, decoded_bits = (3, max(bits, 16)) if photometric == "PALETTE COLOR" else (samples, bits)
    declared = math.ceil(rows * cols * frames * decoded_samples * decoded_bits / 8)
    if declared > limit:
        raise ImageRejected(
            "too_large",
            path,
            f"declared pixel data of {rows}x{cols}x{frames} frames x {decoded_samples} "
            f"samples x {decoded_bits} bits = {declared} bytes exceeds ingest.max_decoded_bytes={limit}",
        )
    if frames > 1 and cfg.ingest.multiframe == "reject":
        raise ImageRejected("multiframe", path, f"{frames} frames and ingest.multiframe=reject")
    grey = samples == 1 and photometric in _GREY
    colour = (samples == 3 and photometric in _COLOUR) or (samples == 1 and photometric == "PALETTE COLOR")
    if not grey and not colour:
        raise ImageRejected(
            "unsupported_photometric",
            path,
            f"PhotometricInterpretation {photometric or 'missing'!r} with {samples} samples per pixel is not "
            f"supported (MONOCHROME1/2, or {', '.join(sorted(_COLOUR))} or PALETTE COLOR with ingest.rgb=convert)",
        )
    if colour and cfg.ingest.rgb == "reject":
        raise ImageRejected("unsupported_photometric", path, f"colour image ({photometric}) and ingest.rgb=reject")
    return _ImageHeader(rows, cols, bits, samples, frames, photometric)


def read_frames(path: str | os.PathLike[str], cfg: Config, source_hash: Any = None) -> list[DicomImage]:
    """Decode every frame of ``path`` into float32 images in [-1, 1] of size ``cfg.data.image_size``.

    A single-frame file gives a list of one; see the module docstring for the steps. ``source_hash`` (a
    :mod:`hashlib` object) is fed the file's bytes, so that a caller wanting the file's hash reads it only once.
    """
    path = Path(path)
    check_policy(cfg)
    _check_size(path, cfg)
    try:
        raw = path.read_bytes()  # bounded by _check_size; read once for the hash and the parser
    except OSError as exc:
        raise ImageRejected("unreadable", path, f"cannot read the file ({_exc_name(exc)})") from None
    if source_hash is not None:
        source_hash.update(raw)
    with _lenient_values():
        return _read_frames(path, cfg, raw)


def _read_frames(path: Path, cfg: Config, raw: bytes) -> list[DicomImage]:
    """:func:`read_frames` from the file's bytes."""
    # One parse: the file size is bounded above, and nothing is decoded before the header checks pass.
    scanned = dicomscan.scan_elements(raw, _KEPT_TAGS)  # None: not the simple case, pydicom parses it
    # Each element converted once, however often it is read; a scanned file has no pydicom data set until needed.
    h = Header(scanned if scanned is not None else _parse(path, stop_before_pixels=False, raw=raw))
    image = _image_header(h, path, cfg)
    if scanned is None and not any(k in h.ds for k in _PIXEL_KEYWORDS):  # a scanned file has pixel data
        raise ImageRejected(
            "no_pixel_data", path, "the header declares an image but the file has no pixel data (truncated?)"
        )
    rows, cols, n_frames, photometric = image.rows, image.cols, image.frames, image.photometric
    colour = photometric not in _GREY
    _check_native_length(h, path, image)
    stored = _native_pixels(h, image)
    if stored is None:
        # pydicom's decoders want pydicom's own parse of a scanned file (never expected: the scan takes only what
        # _native_pixels reads).
        ds = h.ds if scanned is None else _parse(path, stop_before_pixels=False, raw=raw)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                stored = ds.pixel_array
        except Exception as exc:  # noqa: BLE001 - any decoder failure is this file's problem, not a bug of ours
            raise ImageRejected("decode_error", path, f"pixel data could not be decoded: {_scrub(exc, ds)}") from None
        if n_frames == 1:
            stored = stored[np.newaxis]
    if stored.shape[:3] != (n_frames, rows, cols):
        raise ImageRejected(
            "decode_error",
            path,
            f"decoded shape {stored.shape} differs from the declared {n_frames} frame(s) of {rows}x{cols}",
        )
    spacing, modality = _pixel_spacing(h), str(h.get("Modality", ""))
    patient_id = str(h["PatientID"]) if h.get("PatientID") else None
    out = []
    for i in range(n_frames):
        # Colour values are display values already: no clinical window (the full stored range, see _colour_values).
        window = None if colour else windowing.choose(h, cfg, i)
        linear = None if colour else windowing.rescale(h, i)
        fused = windowing.fused(stored, linear, window)
        if fused is not None and window is not None:
            unit = windowing.window_stored(stored[i], *fused)
        else:
            unit, window = _window_general(stored[i], h.ds, photometric, window, linear, path, i)
        if photometric == "MONOCHROME1":
            np.subtract(1.0, unit, out=unit)
        image = resize_square(
            unit.astype(np.float32, copy=False), cfg.data.image_size, nearest=False, square=cfg.ingest.square
        )
        out.append(
            DicomImage(
                image=np.clip(image * 2.0 - 1.0, -1.0, 1.0).astype(np.float32),
                rows=rows,
                cols=cols,
                modality=modality,
                photometric=photometric,
                pixel_spacing=spacing,
                window=(window.center, window.width) if window.source in ("config", "header") else None,
                window_source=window.source,
                patient_id=patient_id,
                frame=i,
                n_frames=n_frames,
            )
        )
    return out


def _window_general(
    stored: np.ndarray,
    ds: Dataset,
    photometric: str,
    window: windowing.Window | None,
    linear: tuple[float, float] | None,
    path: Path,
    index: int,
) -> tuple[np.ndarray, windowing.Window]:
    """Steps 3-4 for one frame in float64 (any LUT, colour, percentiles): ``unit`` in [0, 1] and the VOI used."""
    try:
        with warnings.catch_warnings(), np.errstate(over="ignore"):
            warnings.simplefilter("ignore")
            if photometric in _GREY:
                assert window is not None
                values = windowing.modality_values(stored, ds, linear)
            else:
                values, full_range = _colour_values(stored, ds, photometric)
                window = windowing.Window(full_range / 2.0, full_range, "full_range")
            _check_finite(values, path, index)
            # ``values`` is this frame's own float64 array: windowed in place, no further full-size copy.
            return windowing.apply(values, window, ds), window
    except ImageRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - a LUT that does not fit the data is this file's problem
        raise ImageRejected("decode_error", path, f"frame {index} could not be converted: {_scrub(exc, ds)}") from None


def _check_finite(values: np.ndarray, path: Path, index: int) -> None:
    if not np.isfinite(values).all():
        raise ImageRejected("decode_error", path, f"pixel data of frame {index} contains NaN or infinite values")


def read_dicom(path: str | os.PathLike[str], cfg: Config) -> DicomImage:
    """Decode a single-frame ``path`` (see :func:`read_frames`); a multi-frame file is rejected as ``multiframe``."""
    frames = read_frames(path, cfg)
    if len(frames) != 1:
        raise ImageRejected("multiframe", path, f"{len(frames)} frames; read_frames() returns each of them")
    return frames[0]


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an RGB array whose last axis holds R, G, B: 0.299 R + 0.587 G + 0.114 B."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def read_mask(
    path: str | os.PathLike[str], rows: int, cols: int, image_size: int, square: str = "pad", frames: int = 1
) -> np.ndarray:
    """Load a lesion mask image as uint8 {0, 1} of ``image_size``; it must be ``rows`` x ``cols`` like its DICOM.

    For a multi-frame image (``frames`` > 1) the mask must be a multi-page image (e.g. TIFF) with one page per
    frame; the result then has shape ``(frames, image_size, image_size)``.
    """
    path = Path(path)
    pages = []
    try:
        with warnings.catch_warnings():
            # A decompression bomb must fail, not warn: turn Pillow's size warning into an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                n_pages = int(getattr(img, "n_frames", 1))
                if n_pages != frames:
                    raise ImageRejected(
                        "mask_size_mismatch",
                        path,
                        f"mask has {n_pages} page(s) but its image has {frames} frame(s)",
                    )
                for page in range(n_pages):
                    img.seek(page)
                    if img.size != (cols, rows):
                        raise ImageRejected(
                            "mask_size_mismatch",
                            path,
                            f"mask is {img.size[1]}x{img.size[0]} (rows x cols) but its image is {rows}x{cols}",
                        )
                    img.load()
                    page_img = img if img.mode in ("1", "L", "I", "I;16", "F") else img.convert("L")
                    pages.append(np.asarray(page_img) > 0)
    except ImageRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
        raise ImageRejected("mask_unreadable", path, f"cannot read the mask image ({_exc_name(exc)})") from None
    out = [resize_square(p.astype(np.uint8), image_size, nearest=True, square=square) for p in pages]
    return out[0] if frames == 1 else np.stack(out)


def window_unit(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear window: ``center - width/2`` maps to 0, ``center + width/2`` to 1, values outside are clipped."""
    return windowing.linear_unit(values, center - width / 2, center + width / 2)


def square_up(arr: np.ndarray, square: str = "pad") -> np.ndarray:
    """A centred square view of ``arr``: padded or cropped, per ``ingest.square``.

    ``pad`` adds zeros (black / background) up to the longer side; ``crop`` keeps the centred square of the
    shorter side.
    """
    rows, cols = arr.shape
    if rows == cols:
        return arr
    if square == "crop":
        side = min(rows, cols)
        top, left = (rows - side) // 2, (cols - side) // 2
        return arr[top : top + side, left : left + side]
    if square != "pad":
        raise ConfigError(f"ingest.square={square!r}: choose one of {', '.join(_POLICIES['square'])}")
    side = max(rows, cols)
    top, left = (side - rows) // 2, (side - cols) // 2
    padded = np.zeros((side, side), dtype=arr.dtype)
    padded[top : top + rows, left : left + cols] = arr
    return padded


def resize_square(arr: np.ndarray, size: int, nearest: bool, square: str = "pad") -> np.ndarray:
    """Make ``arr`` square (:func:`square_up`: pad or centre-crop), then resize it to ``size`` x ``size``.

    Bilinear for images (Pillow widens the filter when shrinking, i.e. antialiases), nearest for masks.
    """
    arr = square_up(arr, square)
    if arr.shape[0] == size:
        return arr.copy()
    if nearest:
        out = Image.fromarray(arr.astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST)
        return np.asarray(out, dtype=arr.dtype)
    out = Image.fromarray(arr.astype(np.float32, copy=False)).resize((size, size), Image.Resampling.BILINEAR)
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


def _parse(path: Path, stop_before_pixels: bool, raw: bytes | None = None) -> Dataset:
    """Parse ``path`` (or ``raw``, its bytes already read) into a data set; ImageRejected if not a usable DICOM."""

    def source() -> Path | io.BytesIO:
        return path if raw is None else io.BytesIO(raw)

    try:
        with warnings.catch_warnings():
            # pydicom's value-validation warnings quote element values, which may be PHI: keep them out of logs.
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(source(), stop_before_pixels=stop_before_pixels)
            except InvalidDicomError:
                pass
            else:
                # pydicom stops quietly at the end of a truncated file; an empty data set is the tell-tale.
                if len(ds) == 0 or "TransferSyntaxUID" not in ds.file_meta:
                    raise ImageRejected("unreadable", path, "DICOM file ends before its data set (truncated?)")
                return ds
            # Old files may lack the 128-byte preamble and 'DICM'; accept them only if they parse into an image.
            ds = pydicom.dcmread(source(), stop_before_pixels=stop_before_pixels, force=True)
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


def _pixel_spacing(h: Header) -> tuple[float, float] | None:
    """Row and column spacing in mm: the (first frame's) Pixel Measures functional group, else the top level."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = windowing.frame_value(h, 0, "PixelMeasuresSequence", keyword)
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


def _colour_values(stored: np.ndarray, ds: Dataset, photometric: str) -> tuple[np.ndarray, float]:
    """A colour frame -> ITU-R BT.601 luminance (float64) in stored units, and the full stored value range.

    RGB (pydicom has already converted YBR to RGB) and palette images (through their colour table).
    """
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(stored, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        return luminance(rgb), float(2 ** (16 if bits > 8 else 8) - 1)
    if stored.ndim != 3 or stored.shape[-1] != 3:
        raise ValueError(f"colour frame of shape {stored.shape}, expected rows x columns x 3")
    return luminance(stored), float(2 ** int(ds.get("BitsStored", ds.BitsAllocated)) - 1)


# Uncompressed little-endian transfer syntaxes (implicit, explicit VR): their pixels are read by _native_pixels.
_NATIVE_LITTLE_ENDIAN = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})


def _native_pixels(h: Header, image: _ImageHeader) -> np.ndarray | None:
    """Uncompressed little-endian greyscale integer pixels as a read-only ``(frames, rows, cols)`` array, or None.

    The values pydicom's ``pixel_array`` gives, including its default correction of the unused high bits (Bits
    Stored < Bits Allocated: shift left then right, which sign-extends signed data and masks unsigned data), but
    without pydicom's decoder set-up, which costs more than all the rest of a 256-px slice's processing. None where
    pydicom must decode: compressed, big-endian, colour, 1-bit or float pixel data. ``_check_native_length`` has
    checked that the data is long enough.
    """
    bits = image.bits
    if bits not in (8, 16, 32) or image.samples != 1 or image.photometric not in _GREY:
        return None
    if h.transfer_syntax not in _NATIVE_LITTLE_ENDIAN or "PixelData" not in h:
        return None
    try:
        stored_bits = int(h.get("BitsStored", bits) or bits)
        signed = int(h.get("PixelRepresentation", 0) or 0)
    except (TypeError, ValueError):
        return None
    if signed not in (0, 1) or not 0 < stored_bits <= bits:
        return None
    dtype = np.dtype(f"<{'ui'[signed]}{bits // 8}")
    count = image.rows * image.cols * image.frames
    arr = np.frombuffer(h["PixelData"], dtype=dtype, count=count).reshape(image.frames, image.rows, image.cols)
    if stored_bits < bits:
        shift = bits - stored_bits
        arr = np.right_shift(np.left_shift(arr, shift), shift)
    return arr


def _check_native_length(h: Header, path: Path, image: _ImageHeader) -> None:
    """Uncompressed pixel data shorter than declared means a truncated file: say so instead of a decoder error."""
    syntax = h.transfer_syntax
    if syntax is None or syntax.is_compressed or "PixelData" not in h:
        return
    rows, cols, frames = image.rows, image.cols, image.frames
    # YBR_FULL_422 subsamples chroma 2:1 horizontally: Y Y Cb Cr per two pixels.
    samples = 2 if image.photometric == "YBR_FULL_422" else image.samples
    needed = math.ceil(rows * cols * frames * samples * image.bits / 8)
    have = len(h.get("PixelData") or b"")
    if have < needed:
        raise ImageRejected(
            "unreadable",
            path,
            f"pixel data is {have} bytes but {rows}x{cols}x{frames} frame(s) need {needed} (truncated file)",
        )
