"""Deflated Explicit VR Little Endian files, inflated with bounded memory.

pydicom inflates a deflated data set in one ``zlib.decompress`` call before it looks at any element, so a file of
a few MB can make it allocate GBs (a "deflate bomb"). :func:`inflate` is called on every file before pydicom sees
it. It reads the file meta exactly as pydicom does, and only when pydicom would inflate the file, inflates it here:
in chunks of at most ``_OUT`` bytes, walking the top-level element headers as they appear, and stops as soon as

* an element declares a length that would take the data set past ``cap`` (refused before that element is
  inflated), or
* the inflated data passes ``cap`` (a data set of many elements, or one this walk cannot follow);

once the Pixel Data element is found, the cap is lowered to its end plus ``trailer`` bytes (what a file may
legitimately hold after its pixels). What comes back is an ordinary file of the same data set, Explicit VR Little
Endian, which pydicom and :mod:`components.dicomscan` read as usual without inflating anything.
"""

from __future__ import annotations

import struct
import zlib

from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian

# Inflated bytes per zlib call, and compressed bytes fed per call: the unconsumed input zlib copies on each call
# stays small, and no call returns more than _OUT bytes.
_OUT = 1 << 20
_IN = 1 << 16
_PIXEL_DATA = 0x7FE00010
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_EXPLICIT_LE = b"1.2.840.10008.1.2.1\0"
# File meta of the rebuilt file: group length, then Transfer Syntax UID = Explicit VR Little Endian.
_META = (
    b"\0" * 128
    + b"DICM"
    + struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, 8 + len(_EXPLICIT_LE))
    + struct.pack("<HH2sH", 0x0002, 0x0010, b"UI", len(_EXPLICIT_LE))
    + _EXPLICIT_LE
)


class InflateRefused(Exception):
    """The deflated data set cannot be inflated within bounds (``reason``: ``too_large`` or ``truncated``)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def is_deflated(raw: bytes) -> int | None:
    """Where the deflated data set of ``raw`` starts when pydicom would inflate it, else None.

    The preamble and file meta are read with pydicom's own functions, so the answer is pydicom's; a file whose
    meta cannot be read is not one pydicom would inflate (its parse fails before that).
    """
    fp = DicomBytesIO(raw)
    try:
        read_preamble(fp, True)
        meta = _read_file_meta_info(fp)
        if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            return None
    except Exception:  # noqa: BLE001 - a malformed meta: pydicom's parse will say what is wrong, not inflate
        return None
    return fp.tell()


def inflate(raw: bytes, cap: int, trailer: int) -> bytes | None:
    """``raw`` with its deflated data set inflated (see the module docstring), or None if it is not deflated.

    Raises :class:`InflateRefused` when the data set would inflate past ``cap`` bytes or the stream ends early.
    """
    start = is_deflated(raw)
    if start is None:
        return None
    stream = zlib.decompressobj(-zlib.MAX_WBITS)
    walk = _Walk(cap, trailer)
    pieces: list[bytes] = []
    body = memoryview(raw)[start:]
    for offset in range(0, max(len(body), 1), _IN):
        data: bytes | memoryview = body[offset : offset + _IN]
        while True:
            try:
                piece = stream.decompress(data, _OUT)
            except zlib.error:
                raise InflateRefused("truncated", "the deflated data set is corrupt or cut short") from None
            if piece:
                pieces.append(piece)
                walk.feed(pieces, len(piece))
            data = stream.unconsumed_tail
            if stream.eof or (not data and len(piece) < _OUT):
                break
        if stream.eof:
            break
    if not stream.eof:
        raise InflateRefused("truncated", "the deflated data set ends early (the file is cut short)")
    inflated = b"".join(pieces)
    pieces.clear()
    return _META + inflated


class _Walk:
    """Top-level element headers of the inflated stream, read as it grows; enforces the cap (see module docstring)."""

    def __init__(self, cap: int, trailer: int) -> None:
        self.cap, self.trailer = cap, trailer
        self.total = 0  # bytes inflated so far
        self.pos = 0  # offset of the next element header, or -1 once the walk cannot follow the data set

    def feed(self, pieces: list[bytes], grown: int) -> None:
        self.total += grown
        while self.pos >= 0 and self.total >= self.pos + 12:
            self._element(_tail(pieces, self.total, self.pos, 12))
        if self.total > self.cap:
            raise InflateRefused(
                "too_large", f"the deflated data set inflates to more than {self.cap} bytes; refused while inflating"
            )

    def _element(self, head: bytes) -> None:
        group, elem, vr = struct.unpack_from("<HH2s", head)
        tag = group << 16 | elem
        if vr in _LONG_VRS:
            length, start = struct.unpack_from("<I", head, 8)[0], self.pos + 12
        elif vr.isalpha() and vr.isupper():
            length, start = struct.unpack_from("<H", head, 6)[0], self.pos + 8
        else:
            self.pos = -1  # not explicit VR: pydicom says what it makes of it, within the cap
            return
        if length == _UNDEFINED:
            self.pos = -1  # a sequence of undefined length: not followed, the cap still holds
            return
        end = start + length
        if end > self.cap:
            raise InflateRefused(
                "too_large",
                f"element ({group:04X},{elem:04X}) declares {length} bytes, past the {self.cap}-byte limit of the "
                "inflated data set; refused before inflating it",
            )
        if tag == _PIXEL_DATA:
            self.cap = min(self.cap, end + self.trailer)
        self.pos = end


def _tail(pieces: list[bytes], total: int, pos: int, n: int) -> bytes:
    """``n`` bytes at offset ``pos`` of the concatenated ``pieces`` (whose length is ``total``), from the back."""
    out = b""
    end = total
    for piece in reversed(pieces):
        begin = end - len(piece)
        if begin < pos + n:
            lo, hi = max(pos - begin, 0), min(pos + n - begin, len(piece))
            out = piece[lo:hi] + out
        if begin <= pos:
            break
        end = begin
    return out
