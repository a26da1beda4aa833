"""A fast path past pydicom's parser for the common DICOM file: classic greyscale, uncompressed, little endian.

Parsing a CT slice with ``pydicom.dcmread`` builds every one of its ~60 elements in Python and costs more than all
of ingest's arithmetic on the slice. :func:`scan_elements` walks the element headers of such a file with
:mod:`struct`, skips what ingest never reads, and keeps the elements it needs as the same ``RawDataElement`` objects
``dcmread`` would have made (:class:`Scanned`; ingest's :class:`~components.dicomheader.Header` reads them
directly); :func:`scan` puts them in a pydicom :class:`~pydicom.dataset.Dataset`. Values are then converted by
pydicom exactly as after a full parse, so the decoded images are identical (tested against ``dcmread`` on pydicom's
own test files and the phantom).

It declines (returns None, and ingest parses with pydicom) whenever the file is anything but the simple case:
no preamble, another transfer syntax, encapsulated or float pixel data, no pixel data, a Modality or VOI LUT
Sequence, enhanced multi-frame functional groups, a colour model, a malformed or truncated element header, or
sequences nested deeper than ``_MAX_DEPTH``. Declining is always safe; it only costs the time saved.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from pydicom import config
from pydicom.charset import convert_encodings
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
_UIDS = {EXPLICIT_LE: UID(EXPLICIT_LE), IMPLICIT_LE: UID(IMPLICIT_LE)}

_PIXEL_DATA = 0x7FE00010
PIXEL_DATA_TAG = BaseTag(_PIXEL_DATA)  # key of the pixel data in Scanned.elements
_TRANSFER_SYNTAX = BaseTag(0x00020010)
# Present in the file -> the general path: pydicom applies or decodes them, or they mark an image this path skips.
_DECLINE = frozenset(
    {
        0x00283000,  # ModalityLUTSequence
        0x00283010,  # VOILUTSequence
        0x52009229,  # SharedFunctionalGroupsSequence
        0x52009230,  # PerFrameFunctionalGroupsSequence
        0x7FE00008,  # FloatPixelData
        0x7FE00009,  # DoubleFloatPixelData
    }
)
_PHOTOMETRIC = 0x00280004
_SAMPLES = 0x00280002
_BITS_ALLOCATED = 0x00280100
_BITS_STORED = 0x00280101
_PIXEL_REPRESENTATION = 0x00280103
# Explicit-VR value representations with a 2-byte reserved field and a 4-byte length.
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_MAX_DEPTH = 16
_HEADER = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


class _Decline(Exception):
    """The file is not the simple case: let pydicom parse it."""


def tags(keywords: Iterable[str]) -> frozenset[int]:
    """The tags of DICOM ``keywords``, for :func:`scan`'s ``keep``."""
    found = {keyword: tag_for_keyword(keyword) for keyword in keywords}
    unknown = [k for k, tag in found.items() if tag is None]
    if unknown:
        raise ValueError(f"not DICOM keywords: {', '.join(unknown)}")
    return frozenset(int(tag) for tag in found.values() if tag is not None)


class Scanned:
    """What :func:`scan_elements` kept of a file: its raw elements by tag, and a pydicom data set of them on demand.

    ``elements`` maps each kept top-level tag to pydicom's ``RawDataElement`` (the PixelData value is a
    ``memoryview`` of the file's bytes, no copy; every other value is ``bytes`` as pydicom reads them). Building the
    pydicom :class:`~pydicom.dataset.Dataset` costs about a tenth of a slice's whole decoding, so :attr:`dataset`
    builds it only when asked (ingest's common path never does).
    """

    def __init__(self, elements: dict[BaseTag, RawDataElement], syntax: str) -> None:
        self.elements = elements
        self.syntax = _UIDS[syntax]
        self.implicit = syntax == IMPLICIT_LE
        self._dataset: Dataset | None = None

    @property
    def dataset(self) -> Dataset:
        """The kept elements as a pydicom data set with the file's transfer syntax and character set (cached)."""
        if self._dataset is None:
            ds = Dataset(dict(self.elements))
            # The syntax is one of two known UIDs: validating it (pydicom's default) costs a third of a scan.
            meta = DataElement(_TRANSFER_SYNTAX, "UI", self.syntax, validation_mode=config.IGNORE)
            ds.file_meta = FileMetaDataset({_TRANSFER_SYNTAX: meta})
            charset = ds.get("SpecificCharacterSet")  # as pydicom's reader: text is decoded in the file's charset
            ds.set_original_encoding(self.implicit, True, _encodings(charset))
            self._dataset = ds
        return self._dataset


def scan(raw: bytes, keep: frozenset[int]) -> Dataset | None:
    """A data set of the top-level elements ``keep`` (tags) and the pixel data of ``raw`` (a whole file's bytes).

    None when the file is not the simple case: then parse it with pydicom. See :class:`Scanned` for the values.
    """
    scanned = scan_elements(raw, keep)
    return None if scanned is None else scanned.dataset


def scan_elements(raw: bytes, keep: frozenset[int]) -> Scanned | None:
    """:func:`scan` without building the pydicom data set (see :class:`Scanned`)."""
    try:
        return _scan(raw, keep)
    except (_Decline, struct.error, UnicodeDecodeError, ValueError):
        return None


def _scan(raw: bytes, keep: frozenset[int]) -> Scanned | None:
    if len(raw) < 144 or raw[128:132] != b"DICM":
        return None
    syntax, pos = _file_meta(raw, 132)
    if syntax not in (EXPLICIT_LE, IMPLICIT_LE):
        return None
    implicit = syntax == IMPLICIT_LE
    kept: dict[BaseTag, RawDataElement] = {}
    end, view = len(raw), memoryview(raw)
    while pos < end:
        tag, vr, length, start = _element(raw, pos, implicit)
        if tag in _DECLINE:
            return None
        if length == _UNDEFINED:
            if tag == _PIXEL_DATA or tag in keep or vr == b"UN":
                return None  # encapsulated pixel data, or a sequence ingest would read
            pos = _skip_items(raw, start, implicit, 1)
            continue
        stop = start + length
        if stop > end:
            return None  # cut short: pydicom says how
        if tag == _PIXEL_DATA or tag in keep:
            # Pixel data as a view of ``raw``: copying it would cost as much as parsing the rest of the header.
            value = view[start:stop] if tag == _PIXEL_DATA else raw[start:stop]
            kept[BaseTag(tag)] = RawDataElement(
                BaseTag(tag), vr.decode("ascii") if vr else None, length, value, start, implicit, True
            )
        pos = stop
    if BaseTag(_PIXEL_DATA) not in kept or not _simple_image(kept):
        return None
    return Scanned(kept, syntax)


def _file_meta(raw: bytes, pos: int) -> tuple[str, int]:
    """The transfer syntax UID and the position after group 0002 (always explicit VR little endian)."""
    syntax = ""
    while pos + 8 <= len(raw) and _HEADER.unpack_from(raw, pos)[0] == 0x0002:
        tag, _vr, length, start = _element(raw, pos, implicit=False)
        if length == _UNDEFINED or start + length > len(raw):
            raise _Decline
        if tag == 0x00020010:
            syntax = raw[start : start + length].rstrip(b"\0 ").decode("ascii")
        pos = start + length
    return syntax, pos


def _element(raw: bytes, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """``(tag, VR or None, value length, value start)`` of the element header at ``pos``."""
    group, elem = _HEADER.unpack_from(raw, pos)
    tag = group << 16 | elem
    if implicit or group == 0xFFFE:  # item and delimiter tags never carry a VR
        return tag, None, _U32.unpack_from(raw, pos + 4)[0], pos + 8
    vr = raw[pos + 4 : pos + 6]
    if len(vr) != 2 or not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        raise _Decline  # not an explicit VR: a mislabelled file, pydicom's reader copes with those
    if vr in _LONG_VRS:
        return tag, vr, _U32.unpack_from(raw, pos + 8)[0], pos + 12
    return tag, vr, _U16.unpack_from(raw, pos + 6)[0], pos + 8


def _skip_items(raw: bytes, pos: int, implicit: bool, depth: int) -> int:
    """Skip the items of an undefined-length sequence starting at ``pos``; the position after its delimiter."""
    if depth > _MAX_DEPTH:
        raise _Decline
    while True:
        tag, _vr, length, start = _element(raw, pos, implicit=True)
        if tag == _SEQUENCE_END:
            return start
        if tag != _ITEM:
            raise _Decline
        pos = start + length if length != _UNDEFINED else _skip_item_elements(raw, start, implicit, depth)
        if pos > len(raw):
            raise _Decline


def _skip_item_elements(raw: bytes, pos: int, implicit: bool, depth: int) -> int:
    """Skip the elements of an undefined-length item up to and past its item delimiter."""
    while True:
        tag, vr, length, start = _element(raw, pos, implicit)
        if tag == _ITEM_END:
            return start
        if length == _UNDEFINED:
            if vr not in (None, b"SQ"):
                raise _Decline
            pos = _skip_items(raw, start, implicit, depth + 1)
        else:
            pos = start + length
        if pos > len(raw):
            raise _Decline


def _simple_image(kept: dict[BaseTag, RawDataElement]) -> bool:
    """Whether the image is what ingest's native pixel reader takes (checked on the bytes).

    Single-sample greyscale, 8/16/32-bit pixels, valid Bits Stored and Pixel Representation: pydicom then never
    has to decode this path's pixel view.
    """
    photometric = kept.get(BaseTag(_PHOTOMETRIC))
    samples = kept.get(BaseTag(_SAMPLES))
    bits = kept.get(BaseTag(_BITS_ALLOCATED))
    if photometric is None or bits is None or len(bits.value) != 2:
        return False
    if samples is not None and (len(samples.value) != 2 or _U16.unpack(samples.value)[0] != 1):
        return False
    name = photometric.value.rstrip(b"\0 ").decode("ascii")
    if name not in ("MONOCHROME1", "MONOCHROME2"):
        return False
    allocated = _U16.unpack(bits.value)[0]
    stored = _u16_or(kept.get(BaseTag(_BITS_STORED)), allocated)
    signed = _u16_or(kept.get(BaseTag(_PIXEL_REPRESENTATION)), 0)
    return allocated in (8, 16, 32) and 0 < stored <= allocated and signed in (0, 1)


def _u16_or(elem: RawDataElement | None, default: int) -> int:
    """A single US value, ``default`` when absent or empty, -1 (never valid) when malformed."""
    if elem is None or not elem.value:
        return default
    return _U16.unpack(elem.value)[0] if len(elem.value) == 2 else -1


def _encodings(charset: object) -> str | list[str]:
    if charset is None:
        return "iso8859"
    return convert_encodings(charset)  # type: ignore[arg-type]
