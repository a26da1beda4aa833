"""Lesion masks -> uint8 {0, 1} arrays of the archive's size: images Pillow reads, NumPy ``.npy`` and NIfTI files.

The format follows the file name: ``.npy`` (bool, integer or float values; shape rows x columns, or frames x rows
x columns for a multi-frame image), ``.nii`` / ``.nii.gz`` (read with nibabel in array order, not reoriented by the
affine: rows x columns, with the frames along the third axis), anything else an image Pillow reads (PNG, TIFF with
one page per frame, ...; palette images by their indices, colour ones by their luminance).

Every mask is checked before its pixels are read: the file must be non-empty and within ``max_bytes`` (plus the
header allowance), its shape that of the image (a mismatch is ``mask_size_mismatch``). A binary mask has one
non-zero value at most (0/1, 0/255, False/True): a mask with more is a label map, refused as ``mask_label_map``
unless ``label_maps="binarise"`` (``ingest.label_maps``), which makes every non-zero pixel lesion. Masks are made
square like their image (``ingest.square``) and resized with nearest-neighbour, so they stay binary.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from components.dicomio import ImageRejected, resize_square

REASONS: dict[str, str] = {
    "mask_unreadable": "the mask file cannot be read: empty, not an image Pillow reads, not a .npy array of numbers, "
    "not a NIfTI file, or NaN values",
    "mask_size_mismatch": "the mask's shape differs from the image's Rows x Columns, or its page / frame count from "
    "the image's frames",
    "mask_label_map": "the mask has more than one non-zero value (a label map, not a binary lesion mask) and "
    "ingest.label_maps=reject",
}

# Bytes a mask file may hold beyond the pixels of its largest allowed image (headers, compression overhead).
_ALLOWANCE = 16 * 1024 * 1024
_PILLOW_MODES = ("1", "L", "P", "I;16", "I", "F")  # read as they are; any other mode by its luminance
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def read_mask(
    path: str | os.PathLike[str],
    rows: int,
    cols: int,
    image_size: int,
    square: str = "pad",
    frames: int = 1,
    label_maps: str = "reject",
    max_bytes: int | None = None,
) -> np.ndarray:
    """The lesion mask at ``path`` as uint8 {0, 1} of ``image_size`` square; it must be ``rows`` x ``cols``.

    For a multi-frame image (``frames`` > 1) the mask holds one page per frame and the result has shape
    ``(frames, image_size, image_size)``. Refusals are :class:`ImageRejected` with a code from :data:`REASONS` (or
    ``too_large``).
    """
    path = Path(path)
    _check_file(path, max_bytes)
    name = path.name.lower()
    try:
        if name.endswith(".npy"):
            pages = list(_npy_pages(path, rows, cols, frames))
        elif name.endswith(_NIFTI_SUFFIXES):
            pages = list(_nifti_pages(path, rows, cols, frames))
        else:
            pages = list(_pillow_pages(path, rows, cols, frames))
    except ImageRejected:
        raise
    except Exception:  # noqa: BLE001 - each reader raises many types for bad files; their text may quote the data
        raise ImageRejected("mask_unreadable", path, f"cannot read the mask: not a valid {_format(name)}") from None
    lesion, seen = [], None  # seen: the non-zero value of the pages so far (one, in a binary mask)
    for page in pages:
        binary, value = _binary(page, path, label_maps)
        if value is not None and seen is not None and value != seen:
            raise _label_map(path, np.array([seen, value]), "across its pages")
        seen = value if value is not None else seen
        lesion.append(binary)
    out = [resize_square(p.view(np.uint8), image_size, nearest=True, square=square) for p in lesion]
    return out[0] if frames == 1 else np.stack(out)


def _format(name: str) -> str:
    if name.endswith(".npy"):
        return "NumPy .npy file"
    return "NIfTI file" if name.endswith(_NIFTI_SUFFIXES) else "image file"


def _check_file(path: Path, max_bytes: int | None) -> None:
    try:
        size = path.stat().st_size
    except OSError:
        raise ImageRejected("mask_unreadable", path, "the mask file cannot be read") from None
    if size == 0:
        raise ImageRejected("mask_unreadable", path, "the mask file is empty (0 bytes)")
    if max_bytes is not None and size > max_bytes + _ALLOWANCE:
        raise ImageRejected(
            "too_large", path, f"mask file of {size} bytes exceeds ingest.max_decoded_bytes={max_bytes} (+allowance)"
        )


def _binary(page: np.ndarray, path: Path, label_maps: str) -> tuple[np.ndarray, float | None]:
    """``page != 0`` as bool, and the page's one non-zero value (None if none, or when binarising anyway).

    A second distinct non-zero value makes the page a label map: refused unless ``label_maps="binarise"``.
    """
    if page.dtype.kind == "f" and not np.isfinite(page).all():
        raise ImageRejected("mask_unreadable", path, "the mask has NaN or infinite values")
    lesion = page != 0
    if label_maps == "binarise" or page.dtype == np.bool_:
        return lesion, None
    first = int(np.argmax(lesion))  # the first lesion pixel (argmax stops there); 0 for an empty page
    value = page.flat[first]
    if value == 0:
        return lesion, None
    if np.count_nonzero(page == value) != np.count_nonzero(lesion):  # another non-zero value somewhere
        raise _label_map(path, np.unique(page[lesion]), "")
    return lesion, float(value)


def _label_map(path: Path, values: np.ndarray, where: str) -> ImageRejected:
    shown = ", ".join(f"{v:g}" for v in values[:5]) + (", ..." if values.size > 5 else "")
    return ImageRejected(
        "mask_label_map",
        path,
        f"the mask has {values.size} distinct non-zero values ({shown}){' ' + where if where else ''}: a label map, "
        "not a binary lesion mask; save lesion pixels with one value, or set ingest.label_maps=binarise to make "
        "every non-zero pixel lesion",
    )


def _mismatch(path: Path, got: tuple[int, ...], want: str) -> ImageRejected:
    shape = "x".join(map(str, got))
    return ImageRejected("mask_size_mismatch", path, f"the mask's shape is {shape} but its image needs {want}")


def _npy_pages(path: Path, rows: int, cols: int, frames: int) -> Iterator[np.ndarray]:
    """Pages of a ``.npy`` mask: (rows, cols), or (frames, rows, cols); its header is checked before any data."""
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    if arr.dtype.kind not in "biuf":
        raise ImageRejected("mask_unreadable", path, f"the .npy mask holds {arr.dtype} values, not bool or numbers")
    shape = tuple(arr.shape)
    if shape == (rows, cols) and frames == 1:
        yield np.array(arr)
        return
    if shape != (frames, rows, cols):
        want = f"{rows}x{cols} (rows x columns)" if frames == 1 else f"{frames}x{rows}x{cols} (frames x rows x columns)"
        raise _mismatch(path, shape, want)
    for page in arr:
        yield np.array(page)


def _nifti_pages(path: Path, rows: int, cols: int, frames: int) -> Iterator[np.ndarray]:
    """Pages of a NIfTI mask in array order: (rows, cols[, 1]), or (rows, cols, frames); header checked first."""
    import nibabel as nib  # only for NIfTI masks: worker start-up stays light for everything else

    img = nib.load(path)
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ImageRejected("mask_unreadable", path, "not a NIfTI-1 or NIfTI-2 image")
    shape = tuple(int(n) for n in img.shape)
    while len(shape) > 2 and shape[-1] == 1:  # trailing singleton axes (time, components) carry nothing
        shape = shape[:-1]
    if shape == (rows, cols) and frames == 1:
        layout = (rows, cols, 1)
    elif shape == (rows, cols, frames):
        layout = shape
    else:
        want = f"{rows}x{cols}" if frames == 1 else f"{rows}x{cols}x{frames}"
        raise _mismatch(path, shape, f"{want} (rows x columns{' x frames' if frames > 1 else ''}, in array order)")
    if img.get_data_dtype().kind not in "biuf":
        raise ImageRejected("mask_unreadable", path, f"the NIfTI mask holds {img.get_data_dtype()} values")
    intercept = getattr(img.dataobj, "inter", 0.0)
    if intercept is not None and np.isfinite(intercept) and intercept != 0:
        raise ImageRejected("mask_unreadable", path, "the NIfTI mask scales its values with an intercept")
    # Unscaled: a slope changes no value's zero-ness nor how many distinct values there are.
    data = np.asarray(img.dataobj.get_unscaled()).reshape(layout)
    for i in range(layout[2]):
        yield data[:, :, i]


def _pillow_pages(path: Path, rows: int, cols: int, frames: int) -> Iterator[np.ndarray]:
    """Pages of an image mask (one page per frame); each page's size is checked before its pixels are decoded."""
    with warnings.catch_warnings():
        # A decompression bomb must fail, not warn: turn Pillow's size warning into an error.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            n_pages = int(getattr(img, "n_frames", 1))
            if n_pages != frames:
                raise ImageRejected(
                    "mask_size_mismatch", path, f"mask has {n_pages} page(s) but its image has {frames} frame(s)"
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
                yield np.asarray(img if img.mode in _PILLOW_MODES else img.convert("L"))
