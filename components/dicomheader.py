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
from pydicom.dataset import Dataset
from pydicom.uid import UID

from components.dicomscan import Scanned

_MISSING = object()
# Value representations converted here from the raw bytes (little endian); the rest goes through pydicom.
_TEXT = frozenset({"CS", "SH", "LO", "UI", "AE"})
_NUMBER_TEXT = frozenset({"DS", "IS"})
_BYTES = frozenset({"OB", "OW"})  # kept as the raw bytes by pydicom too (byte order is the pixel reader's business)


class Header:
    """``header[keyword]``, ``header.get(keyword, default)`` and ``keyword in header``.

    Over a pydicom data set, or over the raw elements :func:`components.dicomscan.scan_elements` kept: then
    pydicom's data set is built only if an element needs pydicom to convert it, or a caller asks for :attr:`ds`.
    """

    def __init__(self, source: Dataset | Scanned) -> None:
        self._values: dict[str, Any] = {}
        if isinstance(source, Scanned):
            self._scanned: Scanned | None = source
            self._ds: Dataset | None = None
            self.transfer_syntax: UID | None = source.syntax
        else:
            self._scanned, self._ds = None, source
            meta = getattr(source, "file_meta", None)
            self.transfer_syntax = meta.get("TransferSyntaxUID") if meta is not None else None

    @property
    def ds(self) -> Dataset:
        """The pydicom data set (for a scanned file: built now, from the kept elements)."""
        return self._scanned.dataset if self._scanned is not None else self._ds  # type: ignore[return-value]

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
        if self._scanned is not None:
            elem = self._scanned.elements.get(tag)
            if elem is None:
                return None
            converted = _from_bytes(elem.VR or dictionary_VR(tag), elem.value)
            if converted is not _MISSING:
                return converted
        elif self.ds.get_item(tag) is None:  # absent: no conversion needed to say so
            return None
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
