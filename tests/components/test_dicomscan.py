import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from components import dicomio, dicomscan
from components.config import resolve
from components.dicomheader import Header
from components.phantom import write_phantom

BUNDLED = Path(pydicom.__file__).parent / "data" / "test_files"
KEYWORDS = dicomio._HEADER_KEYWORDS + dicomio.PHI_TAGS
KEEP = dicomscan.tags(KEYWORDS)


def files():
    return sorted(p for p in BUNDLED.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = write_phantom(tmp_path_factory.mktemp("scan") / "data", seed=1, n_patients=3, slices_per_patient=2, size=32)
    return sorted(root.rglob("*.dcm"))


def same_header(path, ds):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = pydicom.dcmread(path, force=True)
        for keyword in KEYWORDS + ("PixelData",):
            assert (keyword in ds) == (keyword in full), (path.name, keyword)
            if keyword in full:
                assert ds[keyword].value == full[keyword].value, (path.name, keyword)
                assert ds[keyword].VR == full[keyword].VR, (path.name, keyword)
        assert ds.file_meta.TransferSyntaxUID == full.file_meta.TransferSyntaxUID


def test_scanned_elements_equal_pydicoms_for_every_file_it_accepts(phantom):
    accepted = []
    for path in files() + phantom:
        ds = dicomscan.scan(path.read_bytes(), KEEP)
        if ds is not None:
            same_header(path, ds)
            accepted.append(path.name)
    assert len(accepted) >= 20 + len(phantom), accepted  # the phantom and the plain bundled files


@pytest.mark.parametrize(
    "name",
    [
        "JPEG2000.dcm",  # encapsulated
        "MR_small_bigendian.dcm",
        "SC_rgb_small_odd.dcm",  # colour, uncompressed
        "no_meta.dcm",  # no preamble
        "rtstruct.dcm",  # no pixel data
        "MR_truncated.dcm",
        "liver_1frame.dcm",  # functional groups
    ],
)
def test_declines_what_is_not_the_simple_case(name):
    assert dicomscan.scan((BUNDLED / name).read_bytes(), KEEP) is None


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("BitsStored", 17), ("BitsStored", 0), ("PixelRepresentation", 2), ("SamplesPerPixel", 3)],
)
def test_declines_pixel_layouts_the_native_reader_would_not_take(phantom, tmp_path, keyword, value):
    ds = pydicom.dcmread(phantom[0])
    assert dicomscan.scan(phantom[0].read_bytes(), KEEP) is not None
    setattr(ds, keyword, value)
    ds.save_as(tmp_path / "odd.dcm")
    assert dicomscan.scan((tmp_path / "odd.dcm").read_bytes(), KEEP) is None


def test_pixel_data_is_a_view_of_the_file_with_pydicoms_bytes(phantom):
    raw = phantom[0].read_bytes()
    value = dicomscan.scan(raw, KEEP).get_item(0x7FE00010).value
    assert isinstance(value, memoryview) and value.obj is raw
    assert value == pydicom.dcmread(phantom[0]).PixelData


def test_cut_short_files_are_declined_not_misread(phantom):
    raw = phantom[0].read_bytes()
    for cut in (100, 140, 300, len(raw) // 2, len(raw) - 1):
        assert dicomscan.scan(raw[:cut], KEEP) is None, cut


def test_read_frames_gives_the_same_images_with_and_without_the_fast_path(phantom, monkeypatch):
    cfg = resolve("tiny", ["data.image_size=16"])
    paths = phantom + [BUNDLED / n for n in ("CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm")]
    fast = [dicomio.read_frames(p, cfg) for p in paths]
    monkeypatch.setattr(dicomscan, "scan", lambda raw, keep: None)
    slow = [dicomio.read_frames(p, cfg) for p in paths]
    for path, a, b in zip(paths, fast, slow, strict=True):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x.image, y.image, err_msg=path.name)
            assert (x.window, x.window_source, x.pixel_spacing, x.modality, x.patient_id) == (
                y.window,
                y.window_source,
                y.pixel_spacing,
                y.modality,
                y.patient_id,
            )


def test_unknown_keyword_is_refused():
    with pytest.raises(ValueError, match="NotAKeyword"):
        dicomscan.tags(["Rows", "NotAKeyword"])


def test_header_view_converts_raw_elements_as_pydicom_does(phantom):
    checked = 0
    for path in files() + phantom:
        scanned = dicomscan.scan(path.read_bytes(), KEEP)
        if scanned is None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            full = Header(pydicom.dcmread(path, force=True))
            fast = Header(dicomscan.scan_elements(path.read_bytes(), KEEP))
            for keyword in KEYWORDS:
                ours, theirs = fast.get(keyword), full.get(keyword)
                assert ours == theirs, (path.name, keyword, ours, theirs)
                assert (keyword in fast) == (keyword in full)
                checked += 1
    assert checked > 1000
