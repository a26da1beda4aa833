import pickle

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from components.config import resolve
from components.dicomio import ImageRejected, read_dicom, read_header, read_mask, resize_square

SIZE = 8
# Stored values spanning air, lung, soft tissue and bone once rescaled.
STORED = np.arange(SIZE * SIZE, dtype=np.int32).reshape(SIZE, SIZE) * 60


def write_dicom(
    path,
    stored=STORED,
    slope=1.0,
    intercept=-1024.0,
    signed=False,
    photometric="MONOCHROME2",
    center=None,
    width=None,
    pixels=True,
    **tags,
):
    """A minimal but valid single-frame CT file; keyword arguments set or override header elements."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = uid = generate_uid(entropy_srcs=[str(path)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
    ds.Modality = "CT"
    ds.PatientID = "MRN-TEST-0001"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = int(signed)
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelSpacing = [0.7, 0.8]
    if center is not None:
        ds.WindowCenter, ds.WindowWidth = center, width
    for key, value in tags.items():
        setattr(ds, key, value)
    if pixels:
        ds.PixelData = stored.astype("<i2" if signed else "<u2").tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def cfg(**data):
    overrides = [f"data.image_size={SIZE}"] + [f"data.{k}={v}" for k, v in data.items()]
    return resolve("tiny", overrides)


def by_hand(values, center, width):
    return np.clip((values - (center - width / 2)) / width, 0, 1) * 2 - 1


# (case id, writer kwargs, config window, window expected to be used, rescale)
WINDOW_CASES = [
    ("header-single", {"center": 40.0, "width": 400.0}, {}, (40.0, 400.0), (1.0, -1024.0)),
    ("header-multi-first", {"center": [-600.0, 40.0], "width": [1500.0, 400.0]}, {}, (-600.0, 1500.0), (1.0, -1024.0)),
    (
        "slope-half",
        {"slope": 0.5, "intercept": -1024.0, "center": 0.0, "width": 1000.0},
        {},
        (0.0, 1000.0),
        (0.5, -1024.0),
    ),
    (
        "signed-no-intercept",
        {"stored": STORED - 1024, "signed": True, "intercept": 0.0, "center": 100.0, "width": 2000.0},
        {},
        (100.0, 2000.0),
        (1.0, 0.0),
    ),
    (
        "config-beats-header",
        {"center": 40.0, "width": 400.0},
        {"window_center": -500, "window_width": 1000},
        (-500.0, 1000.0),
        (1.0, -1024.0),
    ),
]


@pytest.mark.parametrize(
    ("writer", "config", "window", "rescale"), [c[1:] for c in WINDOW_CASES], ids=[c[0] for c in WINDOW_CASES]
)
def test_modality_lut_and_window_match_hand_computation(tmp_path, writer, config, window, rescale):
    path = write_dicom(tmp_path / "a.dcm", **writer)
    got = read_dicom(path, cfg(**config))
    stored = writer.get("stored", STORED)
    expected = by_hand(stored * rescale[0] + rescale[1], *window)
    np.testing.assert_allclose(got.image, expected, atol=1e-6)
    assert got.image.dtype == np.float32 and got.window == window
    assert got.window_source == ("config" if config else "header")
    assert (got.rows, got.cols, got.modality, got.pixel_spacing) == (SIZE, SIZE, "CT", (0.7, 0.8))


def test_percentile_window_without_header_or_config(tmp_path):
    got = read_dicom(write_dicom(tmp_path / "a.dcm"), cfg())
    hu = STORED - 1024.0
    lo, hi = np.percentile(hu, [0.5, 99.5])
    np.testing.assert_allclose(got.image, np.clip((hu - lo) / (hi - lo), 0, 1) * 2 - 1, atol=1e-6)
    assert got.window_source == "percentile" and got.window is None


def test_monochrome1_is_inverted_after_windowing(tmp_path):
    path = write_dicom(tmp_path / "m1.dcm", photometric="MONOCHROME1", center=500.0, width=2000.0)
    got = read_dicom(path, cfg())
    np.testing.assert_allclose(got.image, -by_hand(STORED - 1024.0, 500.0, 2000.0), atol=1e-6)
    assert got.photometric == "MONOCHROME1"


def test_monochrome1_phantom_style_storage_renders_like_monochrome2(tmp_path):
    """Stored values inverted, window mirrored (as the phantom writes MONOCHROME1): same picture as MONOCHROME2."""
    m2 = read_dicom(write_dicom(tmp_path / "m2.dcm", center=-600.0, width=1500.0), cfg()).image
    mirror = 1.0 * 65535 + 2 * -1024.0
    m1 = write_dicom(
        tmp_path / "m1.dcm", stored=65535 - STORED, photometric="MONOCHROME1", center=mirror + 600.0, width=1500.0
    )
    np.testing.assert_allclose(read_dicom(m1, cfg()).image, m2, atol=1e-6)


def test_size_limit_refuses_before_decoding(tmp_path):
    # The declared 4096 x 4096 image is far over the limit and its pixel data is too short to decode: a
    # too_large answer (not decode_error) shows the limit was checked before any decoding was tried.
    path = write_dicom(tmp_path / "big.dcm", pixels=False, Rows=4096, Columns=4096, PixelData=b"\0" * 64)
    with pytest.raises(ImageRejected) as info:
        read_dicom(path, resolve("tiny", ["ingest.max_decoded_bytes=1000000"]))
    assert info.value.reason == "too_large"
    assert "33554432 bytes" in str(info.value) and "big.dcm" in str(info.value)


def test_file_size_limit(tmp_path):
    path = write_dicom(tmp_path / "a.dcm")
    with path.open("ab") as fh:
        fh.truncate(17 * 1024 * 1024)  # a file far larger than its declared 8x8 image (sparse: no disk cost)
    with pytest.raises(ImageRejected) as info:
        read_header(path, resolve("tiny", ["ingest.max_decoded_bytes=1000"]))
    assert info.value.reason == "too_large"


def rgb(tmp_path):
    return write_dicom(
        tmp_path / "rgb.dcm",
        stored=np.zeros((4, 4)),
        pixels=False,
        SamplesPerPixel=3,
        PhotometricInterpretation="RGB",
        PlanarConfiguration=0,
        BitsAllocated=8,
        BitsStored=8,
        HighBit=7,
        PixelData=b"\0" * 48,
    )


def multiframe(tmp_path):
    return write_dicom(
        tmp_path / "mf.dcm", stored=np.zeros((4, 4)), pixels=False, NumberOfFrames=3, PixelData=b"\0" * 96
    )


def no_pixels(tmp_path):
    return write_dicom(tmp_path / "np.dcm", pixels=False)


def no_image_at_all(tmp_path):
    ds = pydicom.dcmread(write_dicom(tmp_path / "sr.dcm", pixels=False))
    for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
        delattr(ds, keyword)
    ds.save_as(tmp_path / "sr.dcm")
    return tmp_path / "sr.dcm"


def short_pixels(tmp_path):
    ds = pydicom.dcmread(write_dicom(tmp_path / "short.dcm"))
    ds.PixelData = ds.PixelData[:10]
    ds.save_as(tmp_path / "short.dcm")
    return tmp_path / "short.dcm"


def text_file(tmp_path):
    (tmp_path / "notes.dcm").write_text("patient notes, definitely not DICOM\n" * 20)
    return tmp_path / "notes.dcm"


def truncated(tmp_path):
    data = write_dicom(tmp_path / "t.dcm").read_bytes()
    (tmp_path / "t.dcm").write_bytes(data[:200])
    return tmp_path / "t.dcm"


def missing_rows(tmp_path):
    ds = pydicom.dcmread(write_dicom(tmp_path / "nr.dcm"))
    del ds.Rows
    ds.save_as(tmp_path / "nr.dcm")
    return tmp_path / "nr.dcm"


REJECT_CASES = [
    (text_file, "not_dicom"),
    (truncated, "unreadable"),
    (no_pixels, "no_pixel_data"),
    (no_image_at_all, "no_pixel_data"),
    (missing_rows, "bad_header"),
    (rgb, "unsupported_photometric"),
    (multiframe, "multiframe"),
    (short_pixels, "decode_error"),
]


@pytest.mark.parametrize(("make", "reason"), REJECT_CASES, ids=[c[0].__name__ for c in REJECT_CASES])
def test_rejections_carry_a_reason_code(tmp_path, make, reason):
    path = make(tmp_path)
    with pytest.raises(ImageRejected) as info:
        read_dicom(path, cfg())
    assert info.value.reason == reason
    assert str(info.value).startswith(f"{path}: ") and info.value.detail
    assert "MRN-TEST-0001" not in str(info.value)


def test_rejection_survives_pickling():
    exc = pickle.loads(pickle.dumps(ImageRejected("too_large", "a.dcm", "too big")))
    assert (exc.reason, exc.path, exc.detail, str(exc)) == ("too_large", "a.dcm", "too big", "a.dcm: too big")


def test_non_square_is_padded_then_resized(tmp_path):
    stored = np.full((4, 8), 3000, dtype=np.int32)  # bright everywhere
    got = read_dicom(write_dicom(tmp_path / "w.dcm", stored=stored, center=0.0, width=100.0), cfg())
    assert got.image.shape == (SIZE, SIZE)
    np.testing.assert_array_equal(got.image[2:6], 1.0)
    np.testing.assert_array_equal(got.image[[0, 1, 6, 7]], -1.0)  # black padding above and below


def test_shrinking_is_antialiased():
    checker = (np.indices((64, 64)).sum(0) % 2).astype(np.float32)
    small = resize_square(checker, 16, nearest=False)
    assert small.shape == (16, 16) and np.allclose(small, 0.5, atol=0.05)  # aliasing would give 0s or 1s


def test_mask_is_binarised_and_resized_nearest(tmp_path):
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 16:48] = 255
    mask[51, 51] = 7  # any non-zero value is lesion (and this one falls between the nearest samples)
    Image.fromarray(mask).save(tmp_path / "m.png")
    got = read_mask(tmp_path / "m.png", 64, 64, 16)
    assert got.dtype == np.uint8 and got.shape == (16, 16) and set(np.unique(got)) == {0, 1}
    assert got[2:10, 4:12].all() and got.sum() == 64


@pytest.mark.parametrize("mode", ["1", "L", "RGB", "I;16"])
def test_mask_modes(tmp_path, mode):
    Image.fromarray(np.eye(8, dtype=np.uint8) * 255).convert(mode).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", 8, 8, 8), np.eye(8, dtype=np.uint8))


def test_mask_size_mismatch_is_checked_before_resizing(tmp_path):
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(ImageRejected) as info:
        read_mask(tmp_path / "m.png", 64, 64, 32)
    assert info.value.reason == "mask_size_mismatch" and "32x32" in str(info.value)


def test_unreadable_mask(tmp_path):
    (tmp_path / "m.png").write_bytes(b"not a png")
    with pytest.raises(ImageRejected) as info:
        read_mask(tmp_path / "m.png", 8, 8, 8)
    assert info.value.reason == "mask_unreadable"
