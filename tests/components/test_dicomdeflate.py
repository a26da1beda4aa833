"""Deflated files are read like any other; deflate bombs are refused with bounded memory, in-process and in ingest.

Bombs are made here: a deflate stream of one 1 MiB block of zeros repeated k times (each block compressed on its
own, so the copies concatenate into one valid stream) inflates to k MiB from about k KiB on disk.
"""

import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian

from components import dicomdeflate
from components.config import resolve
from components.dicomio import ImageRejected, read_dicom
from components.phantom import write_phantom

ROOT = Path(__file__).resolve().parents[2]
MB = 1 << 20
PIXELS = np.arange(64 * 64, dtype="<u2").reshape(64, 64) * 7


def element(group, elem, vr, value=b"", length=None):
    """An explicit VR little-endian element; ``length`` overrides the value's (for headers of huge values)."""
    length = len(value) if length is None else length
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2sHI", group, elem, vr, 0, length) + value
    return struct.pack("<HH2sH", group, elem, vr, length) + value


def image_elements(rows=64, cols=64, pixels=True):
    out = [
        element(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.2\0"),
        element(0x0008, 0x0060, b"CS", b"CT"),
        element(0x0010, 0x0020, b"LO", b"MRN-BOMB"),
        element(0x0028, 0x0002, b"US", struct.pack("<H", 1)),
        element(0x0028, 0x0004, b"CS", b"MONOCHROME2 "),
        element(0x0028, 0x0010, b"US", struct.pack("<H", rows)),
        element(0x0028, 0x0011, b"US", struct.pack("<H", cols)),
        *(element(0x0028, e, b"US", struct.pack("<H", v)) for e, v in ((0x100, 16), (0x101, 16), (0x102, 15))),
        element(0x0028, 0x0103, b"US", struct.pack("<H", 0)),
    ]
    if pixels:
        out.append(element(0x7FE0, 0x0010, b"OW", PIXELS.tobytes()))
    return b"".join(out)


def _meta_prefix(tmp: Path) -> bytes:
    """Preamble + File Meta of a deflated file, as pydicom writes them."""
    path = deflated_copy(tmp / "meta-source.dcm")
    raw = path.read_bytes()
    return raw[: dicomdeflate.is_deflated(raw)]


def deflated_copy(path: Path) -> Path:
    """A small valid CT file in the Deflated Explicit VR Little Endian transfer syntax, written by pydicom."""
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def bomb(path: Path, kind: str, mib: int) -> Path:
    """A deflated file whose data set holds ``mib`` MiB of zeros in the place ``kind`` says."""
    huge = mib * MB
    if kind == "pixel_data_lies":  # 512x512 declared, a pixel data element of ``mib`` MiB
        head, tail = image_elements(512, 512, pixels=False) + element(0x7FE0, 0x0010, b"OW", length=huge), b""
    elif kind == "private_element":  # before the image attributes
        head = element(0x0009, 0x0010, b"LO", b"BOMB") + element(0x0009, 0x1001, b"OB", length=huge)
        tail = image_elements()
    elif kind == "hidden_in_sequence":  # in an undefined-length sequence: the header walk cannot follow it
        head = (
            element(0x0008, 0x1115, b"SQ", length=0xFFFFFFFF)
            + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
            + element(0x0042, 0x0011, b"OB", length=huge)
        )
        tail = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0) + image_elements()
    elif kind == "trailing_padding":  # after the pixel data (Data Set Trailing Padding)
        head, tail = image_elements() + element(0xFFFC, 0xFFFC, b"OB", length=huge), b""
    else:
        raise ValueError(kind)
    first = zlib.compressobj(6, zlib.DEFLATED, -15)
    block = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = block.compress(b"\0" * MB) + block.flush(zlib.Z_FULL_FLUSH)  # no final bit: blocks concatenate
    last = zlib.compressobj(6, zlib.DEFLATED, -15)
    start = first.compress(head) + first.flush(zlib.Z_FULL_FLUSH)
    end = last.compress(tail) + last.flush(zlib.Z_FINISH)
    # The stream inflates to head + mib MiB of zeros + tail: checked here on two blocks, the rest is repetition.
    assert zlib.decompress(start + zeros * 2 + end, -15) == head + b"\0" * (2 * MB) + tail
    path.write_bytes(_meta_prefix(path.parent) + start + zeros * mib + end)
    return path


KINDS = ["pixel_data_lies", "private_element", "hidden_in_sequence", "trailing_padding"]


def cfg(*overrides):
    return resolve("tiny", ["data.image_size=16", *overrides])


def test_deflated_file_reads_like_its_uncompressed_original(tmp_path):
    original = pydicom.data.get_testdata_file("CT_small.dcm")
    deflated = deflated_copy(tmp_path / "d.dcm")
    assert dicomdeflate.is_deflated(deflated.read_bytes()) and not dicomdeflate.is_deflated(Path(original).read_bytes())
    np.testing.assert_array_equal(read_dicom(deflated, cfg()).image, read_dicom(original, cfg()).image)


def test_inflated_file_is_explicit_vr_little_endian_of_the_same_data_set(tmp_path):
    raw = deflated_copy(tmp_path / "d.dcm").read_bytes()
    inflated = dicomdeflate.inflate(raw, cap=10 * MB, trailer=MB)
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(inflated))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    reference = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    assert ds.PixelData == reference.PixelData and ds.PatientName == reference.PatientName
    assert dicomdeflate.inflate(Path(pydicom.data.get_testdata_file("CT_small.dcm")).read_bytes(), MB, MB) is None


@pytest.mark.parametrize("cut", [40, 400])
def test_deflate_stream_cut_short_is_truncated(tmp_path, cut):
    raw = deflated_copy(tmp_path / "d.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(raw[: len(raw) - cut])
    with pytest.raises(ImageRejected) as info:
        read_dicom(tmp_path / "cut.dcm", cfg())
    assert info.value.reason == "truncated" and "deflated data set" in info.value.detail


@pytest.mark.parametrize("kind", KINDS)
def test_bomb_is_refused_as_too_large(tmp_path, kind):
    path = bomb(tmp_path / f"{kind}.dcm", kind, mib=40)  # 40 MiB inflated against a 1 MiB limit
    with pytest.raises(ImageRejected) as info:
        read_dicom(path, cfg("ingest.max_decoded_bytes=1048576"))
    assert info.value.reason == "too_large", info.value.detail
    if kind == "hidden_in_sequence":  # only the cap stops this one, while inflating
        assert "inflates to more than 17825792 bytes" in info.value.detail
    else:  # the header walk sees the element's length: refused before inflating it
        assert "refused before inflating it" in info.value.detail


def test_bomb_builder_makes_readable_files_when_small(tmp_path):
    """The same construction, small enough to pass the limit, is a valid image: the bombs differ only in size."""
    path = bomb(tmp_path / "small.dcm", "trailing_padding", mib=1)
    got = read_dicom(path, cfg("ingest.max_decoded_bytes=268435456"))
    assert got.rows == 64 and got.image.std() > 0


CHILD = textwrap.dedent(
    """
    import json, logging, sys
    from components.config import resolve
    from components.ingest.core import ingest
    logging.disable(logging.WARNING)
    summary = ingest(sys.argv[1], sys.argv[2], resolve("tiny", ["ingest.max_quarantine_fraction=0.9"]), salt="s")
    with open("/proc/self/status") as fh:
        peak_kb = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    print(json.dumps({"peak_kb": peak_kb, "summary": summary}))
    """
)


def _limit_address_space():
    # 2 GiB of address space, under which pydicom's own whole-file inflation failed with MemoryError: were the bound
    # lost, the child fails fast instead of taking the machine.
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def test_ingest_of_deflate_bombs_over_1_gb_stays_under_1_gib_peak_rss(tmp_path):
    data = write_phantom(tmp_path / "data", seed=2, n_patients=3, slices_per_patient=2, size=64)
    rows = (data / "labels.csv").read_text().splitlines()
    for kind in KINDS:
        bomb(data / f"{kind}.dcm", kind, mib=1100)  # each inflates to 1.15 GB (1100 MiB) from ~1.2 MB
        assert (data / f"{kind}.dcm").stat().st_size < 2 * MB
        rows.append(f"{kind}.dcm,normal,P-BOMB,")
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(data), str(tmp_path / "archive")],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limit_address_space,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    summary = result["summary"]
    assert summary["quarantined_by_reason"] == {"too_large": 4} and summary["n_ok"] == 6
    peak_mib = result["peak_kb"] / 1024
    print(f"peak RSS of the ingest process with four 1100-MiB deflate bombs: {peak_mib:.0f} MiB")
    assert peak_mib < 1024, f"peak RSS {peak_mib:.0f} MiB"
    shutil.rmtree(data)
