"""A read-only view of the header elements ingest uses, each converted once.

pydicom converts an element's raw bytes on first access and every access goes through several layers of Python
(keyword lookup, tag objects, hooks); reading the same twenty elements again and again from each of tens of
thousands of files adds up to as much time as decoding their pixels. :class:`Header` converts each element at most
once and answers repeated questions from a plain dict. For elements of the simple value representations of an
uncompressed little-endian file (:mod:`components.dicomscan`'s raw elements) it converts the bytes itself, with
the results pydicom gives (tested against ``dcmread`` on pydicom's test files and the phantom); anything else is
converted by pydicom.
"""

from __future__ import annotations

from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

_MISSING = object()
# Value representations converted here from the raw bytes (little endian); the rest goes through pydicom.
_TEXT = frozenset({"CS", "SH", "LO", "UI", "AE"})
_NUMBER_TEXT = frozenset({"DS", "IS"})
_BYTES = frozenset({"OB", "OW"})  # kept as the raw bytes by pydicom too (byte order is the pixel reader's business)


class Header:
    """``header[keyword]``, ``header.get(keyword, default)`` and ``keyword in header`` over a pydicom data set."""

    def __init__(self, ds: Dataset, raw_values: bool = False) -> None:
        self.ds = ds
        self._values: dict[str, Any] = {}
        self._raw_values = raw_values  # the data set holds dicomscan's raw little-endian elements
        meta = getattr(ds, "file_meta", None)
        self.transfer_syntax = meta.get("TransferSyntaxUID") if meta is not None else None

    def get(self, keyword: str, default: Any = None) -> Any:
        """The element's value (converted on first use), or ``default`` when it is absent or empty."""
        value = self._values.get(keyword, _MISSING)
        if value is _MISSING:
            value = self._values[keyword] = self._convert(keyword)
        return default if value is None else value

    def __getitem__(self, keyword: str) -> Any:
        value = self.get(keyword)
        if value is None:
            raise KeyError(keyword)
        return value

    def __contains__(self, keyword: str) -> bool:
        return self.get(keyword) is not None

    def _convert(self, keyword: str) -> Any:
        tag = tag_for_keyword(keyword)
        if tag is None:
            return None
        elem = self.ds.get_item(tag)  # the raw element as read, not converted
        if elem is None:
            return None
        if self._raw_values and isinstance(elem, RawDataElement):
            vr = elem.VR or dictionary_VR(tag)
            converted = _from_bytes(vr, elem.value)
            if converted is not _MISSING:
                return converted
        value = self.ds.get(keyword)
        return None if value is None or value == "" else value


def _from_bytes(vr: str, value: bytes | None) -> Any:
    """Little-endian bytes of a simple value representation -> what pydicom gives, or _MISSING to let it do it."""
    if value is None or len(value) == 0:
        return None
    if vr in _BYTES:
        return value
    if vr == "US":
        if len(value) != 2:
            return _MISSING  # multi-valued: pydicom's list
        return int.from_bytes(value, "little")
    if vr in _TEXT or vr in _NUMBER_TEXT:
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            return _MISSING  # another character set: pydicom decodes it
        if "\x1b" in text:
            return _MISSING  # ISO 2022 escape sequences: pydicom's character-set handling decodes them
        text = text.rstrip("\0 ")  # as pydicom: trailing padding only, leading spaces are kept
        if not text:
            return None
        if vr in _TEXT:
            return _MISSING if "\\" in text else text
        parts = text.split("\\")
        try:
            numbers = [float(p) if vr == "DS" else int(p) for p in parts]
        except ValueError:
            return _MISSING
        return numbers[0] if len(numbers) == 1 else numbers
    return _MISSING
