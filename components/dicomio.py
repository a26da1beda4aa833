"""Reading one DICOM file into the normalised arrays of the dataset archive.

The pipeline, in order, for every frame of a file:

1. bytes: a file of 0 bytes, a folder or a file larger than ``cfg.ingest.max_decoded_bytes`` (plus a header
   allowance) is refused unread; a deflated data set is inflated in bounded chunks
   (:mod:`components.dicomdeflate`), never past that limit either;
2. header: refuse oversized images before any pixel is decoded (the declared Rows x Columns x Frames x Samples x
   BitsAllocated/8 is checked against ``cfg.ingest.max_decoded_bytes``, so a hostile file cannot make us allocate
   much memory), invalid image attributes, and multi-frame or colour images when ``ingest.multiframe=reject`` /
   ``ingest.rgb=reject``; a file without preamble and File Meta (as old exporters write) gets the transfer syntax
   pydicom detected from its encoding; a file cut short is refused as truncated;
3. decode the pixel data (pydicom, with pylibjpeg + openjpeg/libjpeg/rle for JPEG baseline/extended/lossless,
   JPEG-LS, JPEG 2000 and RLE; deflated, big-endian and implicit-VR files natively); uncompressed pixel data whose
   length differs from what Rows x Columns x Frames x BitsAllocated/8 needs (beyond the one pad byte of an odd
   length) is refused as a length mismatch: the header does not describe the data;
4. greyscale: Modality LUT (rescale slope/intercept, per frame for enhanced multi-frame images, or a Modality LUT
   Sequence): stored values -> modality units (HU for CT); colour (RGB, YBR converted to RGB by pydicom, PALETTE
   COLOR through its colour table): ITU-R BT.601 luminance, windowed over the full stored range (``window_source``
   ``full_range``);
5. greyscale: VOI to [0, 1]: the configured window, else the frame's header window (linear, or sigmoid where its
   VOILUTFunction says so), else a VOI LUT Sequence, else the 0.5/99.5 percentiles of the frame (see
   :mod:`components.windowing`);
6. MONOCHROME1: invert (DICOM applies the window before this presentation inversion, so header windows of
   MONOCHROME1 files are in the uninverted modality units);
7. make square (``ingest.square``: pad with black, or crop the centred square), resize to ``cfg.data.image_size``
   (bilinear, antialiased when shrinking, Pillow) and map to [-1, 1].

Every refusal is an :class:`ImageRejected` with a reason code from :data:`REASONS` and a message of ours (never an
exception's text, which may quote header bytes). Lesion masks are read by :mod:`components.ingest.masks`.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from components import dicomdeflate, dicomscan, windowing
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

# Reason codes of a rejected image, with what each means (stable: quarantine.csv and docs/data.md use them). Masks
# (components.ingest.masks) and labels.csv rows (components.ingest.core) add their own.
REASONS: dict[str, str] = {
    "empty_file": "the file is empty (0 bytes)",
    "not_a_file": "a folder (or other non-regular file) where a file was expected",
    "unreadable": "the operating system refused to read the file (permissions, I/O error)",
    "not_dicom": "not a DICOM file: no 'DICM' preamble and no parsable DICOM header",
    "truncated": "a DICOM file cut short: it ends inside its header, a data element or its deflated data set (or "
    "an element's length is corrupt and runs past the end)",
    "corrupt": "a DICOM file whose header is malformed and cannot be parsed",
    "no_pixel_data": "a DICOM object without an image (e.g. a structured report), or an empty Pixel Data element",
    "bad_header": "an image attribute missing or invalid (Rows, Columns, BitsAllocated, a non-numeric RescaleSlope, "
    "a LUT that does not fit the data, ...)",
    "pixel_length_mismatch": "uncompressed pixel data longer or shorter than Rows x Columns x Frames x BitsAllocated/8 "
    "(beyond the one pad byte): the header does not describe the data",
    "too_large": "file size, declared decoded size or inflated size above ingest.max_decoded_bytes",
    "unsupported_photometric": "an unsupported colour model, or a colour/palette image with ingest.rgb=reject",
    "multiframe": "more than one frame with ingest.multiframe=reject",
    "decode_error": "compressed pixel data the codec cannot decode, a decoded shape that differs from the header, "
    "or NaN/infinite float pixels",
}

# Header, tags and file-meta overhead tolerated on top of the decoded pixel size before a file counts as too large.
_HEADER_ALLOWANCE = 16 * 1024 * 1024
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_UNDEFINED_LENGTH = 0xFFFFFFFF
INTERPOLATION = "bilinear, antialiased when shrinking (Pillow); masks nearest"
_GREY = frozenset({"MONOCHROME1", "MONOCHROME2"})
# Three-sample colour models pydicom decodes to RGB (YBR via its colour-space conversion or the JPEG 2000 MCT).
_COLOUR = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT"})
_POLICIES: dict[str, tuple[str, ...]] = {
    "square": ("pad", "crop"),
    "multiframe": ("frames", "reject"),
    "rgb": ("convert", "reject"),
    "label_maps": ("reject", "binarise"),
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
    raw = _read_bytes(path, cfg)
    with _lenient_values():
        ds = _parse(path, raw, cfg, stop_before_pixels=True)
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


def _read_bytes(path: Path, cfg: Config) -> bytes:
    """The file's bytes, once :func:`_check_file` has passed."""
    _check_file(path, cfg.ingest.max_decoded_bytes)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageRejected("unreadable", path, f"the file cannot be read: {_os_error(exc)}") from None


def _check_file(path: Path, limit: int) -> None:
    """Refuse, unread, a path that is not a regular file, is empty, or is larger than ``limit`` plus the allowance."""
    try:
        info = path.stat()
    except OSError as exc:
        raise ImageRejected("unreadable", path, f"the file cannot be read: {_os_error(exc)}") from None
    if not stat.S_ISREG(info.st_mode):
        what = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise ImageRejected("not_a_file", path, f"{what}, where labels.csv names a file")
    size = info.st_size
    if size == 0:
        raise ImageRejected("empty_file", path, "the file is empty (0 bytes)")
    if size > limit + _HEADER_ALLOWANCE:
        # Checked before parsing: even the header parser would read large elements into memory.
        raise ImageRejected(
            "too_large",
            path,
            f"file of {size} bytes exceeds ingest.max_decoded_bytes={limit} "
            f"(+{_HEADER_ALLOWANCE} bytes header allowance)",
        )


def _image_header(h: Header, path: Path, cfg: Config, has_pixels: bool = False) -> _ImageHeader:
    """The image checks of :func:`read_header` on a parsed header (its pixel data not decoded yet).

    ``has_pixels``: the file has a Pixel Data element, so missing image attributes are a bad header, not a
    non-image object.
    """
    limit = cfg.ingest.max_decoded_bytes
    if not has_pixels and "Rows" not in h and "Columns" not in h and "NumberOfFrames" not in h:
        raise ImageRejected(
            "no_pixel_data",
            path,
            f"no image attributes and no pixel data in this DICOM object (SOP class {_sop_class(h)})",
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # value-validation warnings quote raw values: keep them out of logs
        rows, cols, bits = _int(h, "Rows", path), _int(h, "Columns", path), _int(h, "BitsAllocated", path)
        samples, frames = _int(h, "SamplesPerPixel", path, 1), _int(h, "NumberOfFrames", path, 1)
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


def _int(h: Header, keyword: str, path: Path, default: int | None = None) -> int:
    """A single integer header value; ``default`` when absent (or empty), bad_header when required or invalid."""
    try:
        value = h.get(keyword)
        if value is None or value == "":
            if default is None:
                raise ImageRejected("bad_header", path, f"the image attribute {keyword} is missing")
            return default
        if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
            raise ImageRejected("bad_header", path, f"{keyword} has {len(value)} values where one is allowed")
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise ImageRejected("bad_header", path, f"{keyword} is not a valid integer") from None


def read_frames(path: str | os.PathLike[str], cfg: Config, source_hash: Any = None) -> list[DicomImage]:
    """Decode every frame of ``path`` into float32 images in [-1, 1] of size ``cfg.data.image_size``.

    A single-frame file gives a list of one; see the module docstring for the steps. ``source_hash`` (a
    :mod:`hashlib` object) is fed the file's bytes, so that a caller wanting the file's hash reads it only once.
    """
    path = Path(path)
    check_policy(cfg)
    raw = _read_bytes(path, cfg)  # bounded by _check_file; read once for the hash and the parser
    if source_hash is not None:
        source_hash.update(raw)
    with _lenient_values():
        return _read_frames(path, cfg, raw)


def _read_frames(path: Path, cfg: Config, raw: bytes) -> list[DicomImage]:
    """:func:`read_frames` from the file's bytes."""
    # One parse: the file size is bounded above, and nothing is decoded before the header checks pass.
    scanned = dicomscan.scan_elements(raw, _KEPT_TAGS)  # None: not the simple case, pydicom parses it
    # Each element converted once, however often it is read; a scanned file has no pydicom data set until needed.
    h = Header(scanned if scanned is not None else _parse(path, raw, cfg, stop_before_pixels=False))
    pixel_bytes = _pixel_data_length(h, scanned)
    image = _image_header(h, path, cfg, has_pixels=pixel_bytes is not None)
    if not pixel_bytes:  # a scanned file has pixel data
        what = "no Pixel Data element" if pixel_bytes is None else "an empty Pixel Data element"
        raise ImageRejected(
            "no_pixel_data",
            path,
            f"the header declares an image of {image.rows}x{image.cols} pixels but the file has {what}",
        )
    rows, cols, n_frames, photometric = image.rows, image.cols, image.frames, image.photometric
    colour = photometric not in _GREY
    _check_native_length(h, path, image, pixel_bytes)
    stored = _native_pixels(h, image)
    if stored is None:
        # pydicom's decoders want pydicom's own parse of a scanned file (never expected: the scan takes only what
        # _native_pixels reads).
        ds = h.ds if scanned is None else _parse(path, raw, cfg, stop_before_pixels=False)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                stored = ds.pixel_array
        except Exception:  # noqa: BLE001 - any decoder failure is this file's problem, not a bug of ours
            syntax = h.transfer_syntax
            name = getattr(syntax, "name", None) or str(syntax)
            raise ImageRejected(
                "decode_error",
                path,
                f"the {name} pixel data cannot be decoded (corrupt data, or a variant of the codec that pydicom's "
                "decoders do not support)",
            ) from None
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
        try:
            linear = None if colour else windowing.rescale(h, i)
        except windowing.InvalidValue as exc:
            raise ImageRejected(
                "bad_header", path, f"{exc.keyword} is not a finite number: the Modality LUT cannot be applied"
            ) from None
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
    except Exception:  # noqa: BLE001 - a LUT that does not fit the data is this file's problem
        what = "palette colour table" if photometric == "PALETTE COLOR" else "Modality LUT or VOI LUT"
        raise ImageRejected(
            "bad_header", path, f"frame {index}: the header's {what} cannot be applied to the pixel data"
        ) from None


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


def _parse(path: Path, raw: bytes, cfg: Config, stop_before_pixels: bool) -> Dataset:
    """Parse ``raw`` (the bytes of ``path``) into a data set; ImageRejected if it is not a usable DICOM.

    A deflated data set is inflated within ``ingest.max_decoded_bytes`` first (pydicom would inflate it whole);
    a file without a transfer syntax gets the one pydicom detected; a file cut short is refused as truncated.
    """
    limit = cfg.ingest.max_decoded_bytes
    try:
        inflated = dicomdeflate.inflate(raw, cap=limit + _HEADER_ALLOWANCE, trailer=_HEADER_ALLOWANCE)
    except dicomdeflate.InflateRefused as exc:
        raise ImageRejected(exc.reason, path, exc.detail) from None
    if inflated is not None:
        raw = inflated
    try:
        with warnings.catch_warnings():
            # pydicom's value-validation warnings quote element values, which may be PHI: keep them out of logs.
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=stop_before_pixels)
            except InvalidDicomError:
                # Old files may lack the 128-byte preamble and 'DICM'; accept them only if they parse into an image.
                ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=stop_before_pixels, force=True)
                if "SOPClassUID" not in ds and "Rows" not in ds:
                    raise InvalidDicomError("no DICOM preamble and no image attributes") from None
    except InvalidDicomError:
        raise ImageRejected("not_dicom", path, "not a DICOM file (no 'DICM' preamble, no parsable header)") from None
    except Exception:  # noqa: BLE001 - pydicom raises many types on corrupt files
        # The parser's message is left out on purpose: it may quote raw header bytes (PHI).
        raise ImageRejected("corrupt", path, "the DICOM header is malformed and cannot be parsed") from None
    if len(ds) == 0:
        raise ImageRejected(
            "truncated", path, "the file ends before its data set begins (cut short, or its File Meta is corrupt)"
        )
    if not stop_before_pixels:
        _check_complete(ds, len(raw), path)
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = _detected_syntax(ds, path)
    return ds


def _detected_syntax(ds: Dataset, path: Path) -> UID:
    """The transfer syntax of a file without one in its File Meta: the encoding pydicom detected when parsing."""
    implicit, little = ds.original_encoding
    if implicit is None:
        raise ImageRejected("corrupt", path, "no transfer syntax and no encoding pydicom could detect")
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _check_complete(ds: Dataset, n_bytes: int, path: Path) -> None:
    """Refuse a file that pydicom read only in part: its last element is cut short, or the parse stopped early.

    pydicom stops quietly at the end of a file: an element whose value is shorter than its length, an element
    header cut in the middle, or a sequence / encapsulated pixel data without its delimiter (dropped with a
    warning) all leave a data set that looks complete. The last element read must be whole and end the file.
    """
    tag = next(reversed(ds.keys()), None)
    last = ds.get_item(tag) if tag is not None else None
    if not isinstance(last, RawDataElement) or last.length == _UNDEFINED_LENGTH or last.value_tell is None:
        return  # converted already, or of undefined length (read up to its delimiter): whole
    have = len(last.value) if last.value is not None else last.length  # None: a deferred value
    if have < last.length or last.value_tell + last.length < n_bytes:
        raise ImageRejected(
            "truncated",
            path,
            f"the file ends inside data element ({tag.group:04X},{tag.elem:04X}) or just after it: it was cut short "
            "(an incomplete copy or transfer), or the element's length is corrupt",
        )


def _pixel_data_length(h: Header, scanned: dicomscan.Scanned | None) -> int | None:
    """Bytes of the file's pixel data element (Pixel Data, or Float / Double Float Pixel Data); None if absent."""
    if scanned is not None:
        elem = scanned.elements.get(dicomscan.PIXEL_DATA_TAG)
        return None if elem is None else len(elem.value)
    for keyword in _PIXEL_KEYWORDS:
        tag = pydicom.datadict.tag_for_keyword(keyword)
        elem = h.ds.get_item(tag) if tag is not None else None
        if elem is not None:
            value = elem.value
            return 0 if value is None else len(value)
    return None


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


def _os_error(exc: OSError) -> str:
    """What the operating system said, in words (never the exception's text, which quotes the path)."""
    return os.strerror(exc.errno).lower() if exc.errno else "input/output error"


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


def _check_native_length(h: Header, path: Path, image: _ImageHeader, have: int) -> None:
    """Uncompressed pixel data (``have`` bytes) must be what the header declares, plus at most one pad byte.

    A file cut short never gets here (:func:`_check_complete`): a length that differs means that Rows, Columns,
    BitsAllocated, SamplesPerPixel or NumberOfFrames do not describe the data, and any picture made of it would be
    wrong (shorter: the decoder fails; longer: the first bytes read as an image, often all black).
    """
    syntax = h.transfer_syntax
    if syntax is None or syntax.is_compressed or "PixelData" not in h:
        return
    rows, cols, frames = image.rows, image.cols, image.frames
    # YBR_FULL_422 subsamples chroma 2:1 horizontally: Y Y Cb Cr per two pixels.
    samples = 2 if image.photometric == "YBR_FULL_422" else image.samples
    needed = math.ceil(rows * cols * frames * samples * image.bits / 8)
    if needed <= have <= needed + needed % 2:  # an odd length is padded to even with one byte
        return
    raise ImageRejected(
        "pixel_length_mismatch",
        path,
        f"the pixel data is {have} bytes but {rows}x{cols} x {frames} frame(s) x {samples} sample(s) x "
        f"{image.bits} bits need {needed}: the header does not describe the data",
    )
