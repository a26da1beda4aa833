"""Grey levels of one greyscale frame: Modality LUT (stored values -> modality units) and VOI (-> [0, 1]).

Where each comes from, first found wins:

* **Modality LUT**: a Modality LUT Sequence; else RescaleSlope/RescaleIntercept of the frame, which for an enhanced
  multi-frame image live in its Pixel Value Transformation functional group (per-frame, then shared) and for a
  classic image at the top level; else the identity (as in pydicom, slope and intercept apply only as a pair).
* **VOI** (values of interest): the configured window (``data.window_center/width``, linear); else the frame's
  header window (WindowCenter/WindowWidth of its Frame VOI LUT functional group, else the top-level one) with its
  VOILUTFunction: LINEAR and LINEAR_EXACT as a linear window, SIGMOID as PS3.3 C.11.2.1.3.1's sigmoid; else a VOI
  LUT Sequence (its first LUT, scaled by the LUT's output depth); else the 0.5/99.5 percentiles of the frame.

The linear window maps ``center - width/2`` to 0 and ``center + width/2`` to 1 (DICOM's LINEAR_EXACT; LINEAR differs
from it by half a stored unit). For the common case (integer pixels, linear Modality LUT, linear window) both steps
run as one float32 pass over the stored integers (:func:`fused`, :func:`window_stored`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi

from components.config import Config
from components.dicomheader import Header


class InvalidValue(ValueError):
    """A header element that must be a number is not one (``keyword`` names it)."""

    def __init__(self, keyword: str) -> None:
        super().__init__(f"{keyword} is not a finite number")
        self.keyword = keyword


# Largest error in [0, 1] units the one-pass float32 window may make before the float64 path is used instead.
FUSED_MAX_ERROR = 1e-6


class Window(NamedTuple):
    """A frame's VOI: ``center``/``width`` in modality units (NaN where not a window) and where it came from."""

    center: float
    width: float
    source: str  # config | header | voi_lut | percentile | full_range (colour)
    function: str = "LINEAR"  # LINEAR (also LINEAR_EXACT) | SIGMOID

    @property
    def is_window(self) -> bool:
        """Whether this is a center/width window (config or header) rather than a LUT or percentiles."""
        return self.source in ("config", "header", "full_range")


def frame_value(ds: Header | Dataset, frame: int, group: str, keyword: str) -> Any:
    """``keyword`` for one frame: its per-frame functional group, the shared one, else the top-level element.

    ``group`` is the functional group macro's sequence (e.g. ``PixelValueTransformationSequence``); classic images
    have no functional groups and give the top-level value. None when absent everywhere.
    """
    items = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and frame < len(per_frame):
        items.append(per_frame[frame])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        items.append(shared[0])
    for item in items:
        sequence = item.get(group)
        if sequence:
            value = sequence[0].get(keyword)
            if value is not None and value != "":
                return value
    return ds.get(keyword)


def first_number(value: object) -> float | None:
    """First value of a possibly multi-valued numeric element, or None if absent or not a number."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, MultiValue)):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def rescale(ds: Header, frame: int) -> tuple[float, float] | None:
    """The frame's linear Modality LUT ``(slope, intercept)``; None for a Modality LUT Sequence.

    Raises :class:`InvalidValue` when RescaleSlope or RescaleIntercept is present but not a finite number: no
    fallback would give the modality units the header means.
    """
    if ds.get("ModalityLUTSequence"):
        return None
    group = "PixelValueTransformationSequence"
    numbers = []
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        try:
            value = frame_value(ds, frame, group, keyword)
        except (TypeError, ValueError):  # pydicom could not convert the text
            raise InvalidValue(keyword) from None
        number = first_number(value)
        if value is not None and (number is None or not math.isfinite(number)):
            raise InvalidValue(keyword)
        numbers.append(number)
    slope, intercept = numbers
    if slope is None or intercept is None:
        return 1.0, 0.0  # as in pydicom, slope and intercept apply only as a pair
    return slope, intercept


def choose(ds: Header, cfg: Config, frame: int) -> Window:
    """The frame's VOI, by the order of the module docstring."""
    if cfg.data.window_center is not None and cfg.data.window_width is not None:
        return Window(float(cfg.data.window_center), float(cfg.data.window_width), "config")
    group = "FrameVOILUTSequence"
    center = first_number(frame_value(ds, frame, group, "WindowCenter"))
    width = first_number(frame_value(ds, frame, group, "WindowWidth"))
    if center is not None and width is not None and width > 0 and math.isfinite(center) and math.isfinite(width):
        function = str(frame_value(ds, frame, group, "VOILUTFunction") or "LINEAR").strip().upper()
        return Window(center, width, "header", "SIGMOID" if function == "SIGMOID" else "LINEAR")
    if ds.get("VOILUTSequence"):
        return Window(math.nan, math.nan, "voi_lut")
    return Window(math.nan, math.nan, "percentile")


def fused(stored: np.ndarray, linear: tuple[float, float] | None, window: Window | None) -> tuple[float, float] | None:
    """``(scale, offset)`` such that ``clip(stored * scale + offset, 0, 1)`` is Modality LUT + window, or None.

    For integer pixels of at most 16 bits, a linear Modality LUT and a linear window. Stored integers of 16 bits are
    exact in float32, so for a pixel inside the window (``|stored * scale| <= |offset| + 1``) the one float32 pass
    of :func:`window_stored` errs by at most about ``3 * 2**-24 * (|offset| + 1)``; pixels outside are clipped
    anyway. Where that bound passes :data:`FUSED_MAX_ERROR` (a narrow window far from zero), or for anything else,
    the frame takes the general float64 path (None).
    """
    if window is None or not window.is_window or window.function != "LINEAR" or linear is None:
        return None
    if not (math.isfinite(window.width) and window.width > 0):
        return None  # a degenerate window is left to the general path
    if stored.dtype.kind not in "iu" or stored.dtype.itemsize > 2:
        return None
    slope, intercept = linear
    lo = window.center - window.width / 2
    scale, offset = slope / window.width, (intercept - lo) / window.width
    bound = 3.0 * (abs(offset) + 1.0) * 2.0**-24
    if not (math.isfinite(scale) and math.isfinite(bound)) or bound > FUSED_MAX_ERROR:
        return None
    return scale, offset


def window_stored(stored: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """Modality LUT and linear window in one float32 pass over the stored integers (see :func:`fused`).

    The same numbers as :func:`modality_values` followed by :func:`apply` in float64, to within
    :data:`FUSED_MAX_ERROR`, with one float32 array instead of three float64 ones.
    """
    unit = stored.astype(np.float32)
    unit *= np.float32(scale)
    unit += np.float32(offset)
    return np.clip(unit, 0.0, 1.0, out=unit)


def modality_values(stored: np.ndarray, ds: Dataset, linear: tuple[float, float] | None) -> np.ndarray:
    """Stored values -> modality units (float64): the frame's linear rescale, else pydicom's Modality LUT."""
    if linear is None:
        return np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    slope, intercept = linear
    values = stored.astype(np.float64)
    if (slope, intercept) != (1.0, 0.0):
        values *= slope
        values += intercept
    return values


def apply(values: np.ndarray, window: Window, ds: Dataset | None = None) -> np.ndarray:
    """Modality values -> [0, 1] (float64) through ``window``; ``values`` (float64) may be overwritten.

    ``ds`` is needed for a VOI LUT Sequence only.
    """
    if window.source == "percentile":
        lo, hi = np.percentile(values, [0.5, 99.5])
        return linear_unit(values, float(lo), float(hi), in_place=True)
    if window.source == "voi_lut":
        assert ds is not None
        depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        looked_up = apply_voi(np.rint(values).astype(np.int64), ds, index=0)
        return np.asarray(looked_up, dtype=np.float64) / float(2**depth - 1)
    if window.function == "SIGMOID":
        # PS3.3 C.11.2.1.3.1, scaled to [0, 1]: 1 / (1 + exp(-4 (x - c) / w)).
        np.subtract(values, window.center, out=values)
        values *= -4.0 / window.width
        np.exp(values, out=values)
        values += 1.0
        return np.reciprocal(values, out=values)
    return linear_unit(values, window.center - window.width / 2, window.center + window.width / 2, in_place=True)


def linear_unit(values: np.ndarray, lo: float, hi: float, in_place: bool = False) -> np.ndarray:
    """``(values - lo) / (hi - lo)`` clipped to [0, 1], in float64; ``in_place`` reuses a float64 ``values``."""
    if not hi > lo:  # a constant image (or degenerate window): all black rather than a division by zero
        return np.zeros_like(values, dtype=np.float64)
    if in_place and values.dtype == np.float64 and values.flags.writeable:
        out = np.subtract(values, lo, out=values)
    else:
        out = np.subtract(values, lo, dtype=np.float64)  # in place from here: one array, not three
    out /= hi - lo
    return np.clip(out, 0.0, 1.0, out=out)
