import pickle
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from components import windowing
from components.config import resolve
from components.dicomheader import Header
from components.dicomio import (
    REASONS,
    ImageRejected,
    _image_header,
    _native_pixels,
    read_dicom,
    read_frames,
    read_header,
    resize_square,
    window_unit,
)
from components.errors import ConfigError

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
    return write_rgb(tmp_path / "rgb.dcm", np.zeros((4, 4, 3), np.uint8))


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


def empty_file(tmp_path):
    (tmp_path / "empty.dcm").write_bytes(b"")
    return tmp_path / "empty.dcm"


def folder(tmp_path):
    (tmp_path / "series.dcm").mkdir()
    return tmp_path / "series.dcm"


def cut_in_pixels(tmp_path):
    data = write_dicom(tmp_path / "t.dcm").read_bytes()
    (tmp_path / "t.dcm").write_bytes(data[:-20])  # the Pixel Data element's value is cut short
    return tmp_path / "t.dcm"


def cut_in_element_header(tmp_path):
    data = write_dicom(tmp_path / "t.dcm").read_bytes()
    start = data.index(bytes.fromhex("e07f1000"))  # the Pixel Data element's tag
    (tmp_path / "t.dcm").write_bytes(data[: start + 5])
    return tmp_path / "t.dcm"


def cut_in_encapsulated_pixels(tmp_path):
    data = (PYDICOM_FILES / "JPEG2000.dcm").read_bytes()  # undefined-length pixel data: no delimiter, no image
    (tmp_path / "t.dcm").write_bytes(data[: len(data) - 100])
    return tmp_path / "t.dcm"


def long_pixels(tmp_path):
    """The header says 8x8, the data holds 3 such images: the header does not describe the data."""
    ds = pydicom.dcmread(write_dicom(tmp_path / "long.dcm"))
    ds.PixelData = ds.PixelData * 3
    ds.save_as(tmp_path / "long.dcm")
    return tmp_path / "long.dcm"


def empty_pixel_element(tmp_path):
    ds = pydicom.dcmread(write_dicom(tmp_path / "e.dcm"))
    ds.PixelData = b""
    ds.save_as(tmp_path / "e.dcm")
    return tmp_path / "e.dcm"


def patch(path, old, new):
    """Replace ``old`` by ``new`` (same length) in the file's bytes: values pydicom would refuse to write."""
    data = path.read_bytes()
    assert data.count(old) == 1 and len(old) == len(new)
    path.write_bytes(data.replace(old, new))
    return path


def text_slope(tmp_path):
    return patch(write_dicom(tmp_path / "s.dcm", slope=1.25), b"1.25", b"abcd")


def text_frames(tmp_path):
    return patch(write_dicom(tmp_path / "f.dcm", NumberOfFrames=10), b"IS\x02\x0010", b"IS\x02\x00X1")


def malformed_sequence(tmp_path):
    data = write_dicom(tmp_path / "m.dcm").read_bytes()
    at = data.index(bytes.fromhex("08006000"))  # before Modality: an undefined-length sequence of garbage
    garbage = bytes.fromhex("08001511") + b"SQ" + bytes(2) + b"\xff" * 4 + bytes(range(1, 41))
    (tmp_path / "m.dcm").write_bytes(data[:at] + garbage + data[at:])
    return tmp_path / "m.dcm"


def zero_columns(tmp_path):
    return write_dicom(tmp_path / "z.dcm", pixels=False, Columns=0, PixelData=b"\0\0")


REJECT_CASES = [
    (text_file, "not_dicom", []),
    (empty_file, "empty_file", []),
    (folder, "not_a_file", []),
    (truncated, "truncated", []),
    (malformed_sequence, "corrupt", []),
    (cut_in_pixels, "truncated", []),
    (cut_in_element_header, "truncated", []),
    (cut_in_encapsulated_pixels, "truncated", []),
    (no_pixels, "no_pixel_data", []),
    (empty_pixel_element, "no_pixel_data", []),
    (no_image_at_all, "no_pixel_data", []),
    (missing_rows, "bad_header", []),
    (text_slope, "bad_header", []),
    (text_frames, "bad_header", []),
    (zero_columns, "bad_header", []),
    (rgb, "unsupported_photometric", ["ingest.rgb=reject"]),
    (multiframe, "multiframe", ["ingest.multiframe=reject"]),
    (short_pixels, "pixel_length_mismatch", []),
    (long_pixels, "pixel_length_mismatch", []),
]


@pytest.mark.parametrize(("make", "reason", "policy"), REJECT_CASES, ids=[c[0].__name__ for c in REJECT_CASES])
def test_rejections_carry_a_reason_code(tmp_path, make, reason, policy):
    path = make(tmp_path)
    with pytest.raises(ImageRejected) as info:
        read_dicom(path, resolve("tiny", [f"data.image_size={SIZE}", *policy]))
    assert info.value.reason == reason and reason in REASONS
    assert str(info.value).startswith(f"{path}: ") and info.value.detail
    assert "MRN-TEST-0001" not in str(info.value)
    assert "Error" not in info.value.detail  # our words, never an exception's text or type


def test_rejection_messages_say_what_is_wrong(tmp_path):
    def detail(make):
        with pytest.raises(ImageRejected) as info:
            read_dicom(make(tmp_path), cfg())
        return info.value.detail

    assert detail(text_slope) == "RescaleSlope is not a finite number: the Modality LUT cannot be applied"
    assert detail(text_frames) == "NumberOfFrames is not a valid integer"
    assert detail(long_pixels) == (
        "the pixel data is 384 bytes but 8x8 x 1 frame(s) x 1 sample(s) x 16 bits need 128: the header does not "
        "describe the data"
    )
    assert detail(empty_pixel_element).endswith("has an empty Pixel Data element")
    assert detail(folder) == "a folder, where labels.csv names a file"


def test_one_pad_byte_after_odd_length_pixel_data_is_legal(tmp_path):
    stored = np.arange(9, dtype=np.uint8).reshape(3, 3) * 20
    path = write_dicom(
        tmp_path / "odd.dcm",
        pixels=False,
        stored=stored,
        BitsAllocated=8,
        BitsStored=8,
        HighBit=7,
        PixelData=stored.tobytes() + b"\0",
    )
    assert read_dicom(path, cfg()).rows == 3
    ds = pydicom.dcmread(path)
    ds.PixelData = stored.tobytes() + b"\0\0\0"
    ds.save_as(path)
    with pytest.raises(ImageRejected) as info:
        read_dicom(path, cfg())
    assert info.value.reason == "pixel_length_mismatch"


def old_exporter_file(path, implicit=True, little=True):
    """The data set of a valid file without preamble and File Meta, as old exporters wrote them."""
    ds = pydicom.dcmread(write_dicom(path, center=40.0, width=400.0))
    if not little:  # OW bytes are written as they are: swap them for a big-endian data set
        ds.PixelData = np.frombuffer(ds.PixelData, "<u2").astype(">u2").tobytes()
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, little
    write_dataset(fp, ds)
    path.write_bytes(fp.getvalue())
    return path


@pytest.mark.parametrize(("implicit", "little"), [(True, True), (False, True), (False, False)])
def test_file_without_preamble_and_meta_gets_the_transfer_syntax_pydicom_detected(tmp_path, implicit, little):
    reference = read_dicom(write_dicom(tmp_path / "ref.dcm", center=40.0, width=400.0), cfg())
    path = old_exporter_file(tmp_path / "old.dcm", implicit, little)
    assert path.read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(read_dicom(path, cfg()).image, reference.image)


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


# --- colour, multi-frame, squaring policies -------------------------------------------------------------------


def write_rgb(path, rgb, **tags):
    """An uncompressed 8-bit RGB secondary-capture-like file holding ``rgb`` (rows x cols x 3, uint8)."""
    return write_dicom(
        path,
        stored=np.zeros(rgb.shape[:2]),
        pixels=False,
        SamplesPerPixel=3,
        PhotometricInterpretation="RGB",
        PlanarConfiguration=0,
        BitsAllocated=8,
        BitsStored=8,
        HighBit=7,
        PixelData=rgb.astype(np.uint8).tobytes(),
        **tags,
    )


def test_rgb_is_converted_to_luminance_over_the_full_range(tmp_path):
    rgb = np.zeros((SIZE, SIZE, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    rgb[:4, :, :] = 255  # white top half
    # A CT window in the config must not be applied to display colours.
    got = read_dicom(write_rgb(tmp_path / "c.dcm", rgb), cfg(window_center=40.0, window_width=400.0))
    luma = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255
    np.testing.assert_allclose(got.image[4:], luma * 2 - 1, atol=1e-5)
    np.testing.assert_allclose(got.image[:4], 1.0, atol=1e-5)
    assert got.window_source == "full_range" and got.photometric == "RGB"


def test_rgb_reject_policy(tmp_path):
    path = write_rgb(tmp_path / "c.dcm", np.zeros((SIZE, SIZE, 3), np.uint8))
    with pytest.raises(ImageRejected) as info:
        read_dicom(path, resolve("tiny", [f"data.image_size={SIZE}", "ingest.rgb=reject"]))
    assert info.value.reason == "unsupported_photometric" and "ingest.rgb=reject" in info.value.detail


def test_multiframe_gives_each_frame_like_single_frame_files(tmp_path):
    frames = [STORED, STORED[::-1], STORED.T]
    path = write_dicom(
        tmp_path / "mf.dcm",
        stored=STORED,
        pixels=False,
        NumberOfFrames=3,
        PixelData=np.stack(frames).astype("<u2").tobytes(),
        center=-300.0,
        width=2000.0,
    )
    got = read_frames(path, cfg())
    assert [f.frame for f in got] == [0, 1, 2] and {f.n_frames for f in got} == {3}
    for i, stored in enumerate(frames):
        single = read_dicom(write_dicom(tmp_path / f"s{i}.dcm", stored=stored, center=-300.0, width=2000.0), cfg())
        np.testing.assert_array_equal(got[i].image, single.image)
    with pytest.raises(ImageRejected) as info:
        read_dicom(path, cfg())  # the single-image API says where the frames are
    assert info.value.reason == "multiframe"


def test_square_crop_keeps_the_centre(tmp_path):
    stored = np.zeros((4, 8), dtype=np.int32)
    stored[:, 2:6] = 3000  # bright centre square, dark sides
    path = write_dicom(tmp_path / "w.dcm", stored=stored, center=0.0, width=100.0)
    crop = read_dicom(path, resolve("tiny", ["data.image_size=4", "ingest.square=crop"]))
    np.testing.assert_array_equal(crop.image, 1.0)  # only the bright centre survives
    pad = read_dicom(path, resolve("tiny", ["data.image_size=8", "ingest.square=pad"]))
    np.testing.assert_array_equal(pad.image[2:6, 2:6], 1.0)
    np.testing.assert_array_equal(pad.image[:2], -1.0)
    assert crop.pixel_spacing == pad.pixel_spacing == (0.7, 0.8)


@pytest.mark.parametrize("key", ["square", "multiframe", "rgb", "label_maps"])
def test_unknown_policy_is_a_config_error(tmp_path, key):
    with pytest.raises(ConfigError, match=f"ingest.{key}"):
        read_dicom(write_dicom(tmp_path / "a.dcm"), resolve("tiny", [f"ingest.{key}=maybe"]))


# --- pydicom's bundled files: every codec gives the same image -----------------------------------------------

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def bundled(name):
    return np.stack([f.image for f in read_frames(PYDICOM_FILES / name, resolve("tiny", ["data.image_size=32"]))])


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_expb.dcm",
        "MR_small_implicit.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
    ],
)
def test_mr_small_transfer_syntaxes_decode_identically(name):
    np.testing.assert_array_equal(bundled(name), bundled("MR_small.dcm"))


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_bundled_matches_pydicom_after_modality_lut(name):
    ds = pydicom.dcmread(PYDICOM_FILES / name)
    hu = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    lo, hi = np.percentile(hu, [0.5, 99.5])
    center, width = (float(ds.WindowCenter), float(ds.WindowWidth)) if "WindowWidth" in ds else ((lo + hi) / 2, hi - lo)
    expected = resize_square(window_unit(hu, center, width).astype(np.float32), 32, nearest=False) * 2 - 1
    np.testing.assert_allclose(bundled(name)[0], np.clip(expected, -1, 1), atol=1e-5)


@pytest.mark.parametrize(
    ("name", "atol"),
    [
        ("SC_rgb_jpeg_gdcm.dcm", 0.0),  # lossless JPEG
        ("SC_rgb_gdcm_KY.dcm", 0.0),  # JPEG 2000
        ("SC_rgb_rle_16bit.dcm", 0.0),
        ("SC_rgb_rle_32bit.dcm", 0.0),
        ("SC_rgb_dcmtk_+eb+cr.dcm", 0.01),  # lossy JPEG, RGB
        ("SC_rgb_dcmtk_+eb+cy+np.dcm", 0.02),  # lossy JPEG, YBR_FULL_422
        ("SC_rgb_dcmtk_+eb+cy+s4.dcm", 0.02),  # lossy JPEG, YBR_FULL
        ("SC_rgb_jls_lossy_line.dcm", 0.02),  # near-lossless JPEG-LS
    ],
)
def test_colour_codecs_agree_on_luminance(name, atol):
    np.testing.assert_allclose(bundled(name), bundled("SC_rgb_rle.dcm"), atol=atol + 1e-6)


def test_pixel_data_with_excess_padding_is_a_length_mismatch():
    """pydicom strips the 128 bytes after MR_small_padded's pixels; the header does not describe them: refused."""
    with pytest.raises(ImageRejected) as info:
        bundled("MR_small_padded.dcm")
    assert info.value.reason == "pixel_length_mismatch" and "8320 bytes" in info.value.detail


def test_bundled_multiframe_first_frame_matches_its_single_frame_copy():
    assert bundled("rtdose.dcm").shape == (15, 32, 32)
    np.testing.assert_array_equal(bundled("rtdose.dcm")[0], bundled("rtdose_1frame.dcm")[0])
    np.testing.assert_array_equal(bundled("SC_rgb_rle_2frame.dcm")[0], bundled("SC_rgb_rle.dcm")[0])


# --- fast paths: the same numbers as pydicom's general decoding ------------------------------------------------


LENIENT = resolve("tiny", ["ingest.multiframe=frames", "ingest.rgb=convert"])


def _bundled_native():
    """(name, data set) of every bundled file whose pixels the native fast path reads."""
    found = []
    for path in sorted(p for p in PYDICOM_FILES.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, force=True)
            header = _image_header(Header(ds), path, LENIENT)
        except Exception:  # noqa: BLE001 - not an image read_frames would decode: not a case for the fast path
            continue
        try:
            fast = _native_pixels(Header(ds), header)
        except ValueError:  # cut-short pixel data: read_frames rejects those before this step
            continue
        if fast is not None:
            found.append((path.relative_to(PYDICOM_FILES).as_posix(), ds, fast))
    return found


def test_native_fast_path_gives_pydicoms_pixels_for_every_bundled_file():
    cases = _bundled_native()
    assert len(cases) >= 20, [name for name, _, _ in cases]
    checked = 0
    for name, ds, fast in cases:
        try:
            reference = ds.pixel_array
        except Exception:  # noqa: BLE001 - pydicom cannot decode it either (read_frames quarantines it)
            continue
        np.testing.assert_array_equal(fast, reference.reshape(fast.shape), err_msg=name)
        assert fast.dtype == reference.dtype, name
        checked += 1
    assert checked >= 20


@pytest.mark.parametrize("signed", [False, True])
def test_native_fast_path_ignores_unused_high_bits_like_pydicom(tmp_path, signed):
    stored = (np.arange(SIZE * SIZE).reshape(SIZE, SIZE) % 4096 - (2048 if signed else 0)).astype(np.int32)
    raw = stored.astype("<i2" if signed else "<u2").view("<u2") & 0x0FFF  # 12 bits stored...
    raw |= 0xA000  # ...and garbage in the 4 unused high bits, which readers must ignore
    path = write_dicom(tmp_path / "a.dcm", stored=raw.astype(np.int32), BitsStored=12, HighBit=11)
    ds = pydicom.dcmread(path)
    ds.PixelRepresentation = int(signed)
    fast = _native_pixels(Header(ds), _image_header(Header(ds), path, cfg()))
    assert fast is not None
    np.testing.assert_array_equal(fast[0], ds.pixel_array)
    np.testing.assert_array_equal(fast[0], stored)


def test_one_pass_window_falls_back_where_float32_would_be_inexact(tmp_path):
    # Unsigned 16-bit values near 60000 seen through a 50-wide window: the float32 pass could err by ~1e-5.
    stored = 59_000 + np.arange(SIZE * SIZE, dtype=np.int32).reshape(SIZE, SIZE) * 30
    path = write_dicom(tmp_path / "a.dcm", stored=stored, intercept=0.0, center=60_000.0, width=50.0)
    pixels = pydicom.dcmread(path).pixel_array
    assert windowing.fused(pixels, (1.0, 0.0), windowing.Window(60_000.0, 50.0, "header")) is None
    assert windowing.fused(pixels, (1.0, 0.0), windowing.Window(40.0, 400.0, "header")) is not None
    got = read_dicom(path, cfg())
    np.testing.assert_allclose(got.image, by_hand(stored.astype(np.float64), 60_000.0, 50.0), atol=1e-6)


# --- enhanced multi-frame functional groups, VOI LUT function and sequence ---------------------------------------


def group(**sequences):
    """A functional-group item: keyword -> dict of the one item of that sequence."""
    item = Dataset()
    for keyword, values in sequences.items():
        inner = Dataset()
        for key, value in values.items():
            setattr(inner, key, value)
        setattr(item, keyword, [inner])
    return item


def test_enhanced_multiframe_uses_each_frames_rescale_window_and_the_shared_spacing(tmp_path):
    frames = [STORED, STORED[::-1], STORED.T]
    per_frame = [  # (slope, intercept, center, width) of each frame; frame 2 takes the shared window
        (1.0, -1024.0, 40.0, 400.0),
        (2.0, -2048.0, -600.0, 1500.0),
        (0.5, 0.0, None, None),
    ]
    items = []
    for slope, intercept, center, width in per_frame:
        groups = {"PixelValueTransformationSequence": {"RescaleSlope": slope, "RescaleIntercept": intercept}}
        if center is not None:
            groups["FrameVOILUTSequence"] = {"WindowCenter": center, "WindowWidth": width}
        items.append(group(**groups))
    shared = group(
        PixelMeasuresSequence={"PixelSpacing": [0.3, 0.4]},
        FrameVOILUTSequence={"WindowCenter": 500.0, "WindowWidth": 1000.0},
    )
    path = write_dicom(
        tmp_path / "enhanced.dcm",
        stored=STORED,
        pixels=False,
        NumberOfFrames=3,
        PixelData=np.stack(frames).astype("<u2").tobytes(),
        center=0.0,  # top-level values that the functional groups override
        width=10.0,
        PerFrameFunctionalGroupsSequence=items,
        SharedFunctionalGroupsSequence=[shared],
    )
    got = read_frames(path, cfg())
    for frame, stored, (slope, intercept, center, width) in zip(got, frames, per_frame, strict=True):
        center, width = (center, width) if center is not None else (500.0, 1000.0)
        np.testing.assert_allclose(frame.image, by_hand(stored * slope + intercept, center, width), atol=1e-6)
        assert frame.window == (center, width) and frame.window_source == "header"
        assert frame.pixel_spacing == (0.3, 0.4)


def test_sigmoid_voi_lut_function(tmp_path):
    path = write_dicom(tmp_path / "s.dcm", center=40.0, width=400.0, VOILUTFunction="SIGMOID")
    got = read_dicom(path, cfg())
    hu = STORED.astype(np.float64) - 1024.0
    expected = 1.0 / (1.0 + np.exp(-4.0 * (hu - 40.0) / 400.0)) * 2 - 1
    np.testing.assert_allclose(got.image, expected, atol=1e-6)
    assert got.window == (40.0, 400.0) and got.window_source == "header"
    linear = read_dicom(write_dicom(tmp_path / "l.dcm", center=40.0, width=400.0), cfg())
    assert np.abs(linear.image - got.image).max() > 0.1  # the function really changed the picture


def test_voi_lut_sequence_when_the_header_has_no_window(tmp_path):
    lut = Dataset()
    lut.add_new("LUTDescriptor", "US", [4096, 0, 12])  # 4096 entries from modality value 0, 12-bit output
    lut.add_new("LUTData", "US", [min(4095, 2 * v) for v in range(4096)])  # doubles the value, saturating
    path = write_dicom(tmp_path / "v.dcm", intercept=0.0, VOILUTSequence=[lut])
    got = read_dicom(path, cfg())
    expected = np.minimum(4095, 2 * np.clip(STORED, 0, 4095)) / 4095.0 * 2 - 1
    np.testing.assert_allclose(got.image, expected, atol=1e-6)
    assert got.window is None and got.window_source == "voi_lut"
    configured = read_dicom(path, cfg(window_center=1000, window_width=2000))
    assert configured.window_source == "config"  # config first, as always
