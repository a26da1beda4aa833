"""Lesion masks in every accepted format: PNG/TIFF (Pillow), NumPy .npy, NIfTI; label maps refused or binarised."""

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from components.dicomio import ImageRejected
from components.ingest.masks import REASONS, read_mask

EYE = np.eye(8, dtype=np.uint8)


def rejected(path, *args, **kwargs):
    with pytest.raises(ImageRejected) as info:
        read_mask(path, *args, **kwargs)
    assert info.value.reason in {*REASONS, "too_large"}
    assert str(info.value).startswith(f"{path}: ")
    return info.value


def test_mask_is_binarised_and_resized_nearest(tmp_path):
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 16:48] = 255
    mask[51, 51] = 255  # a lone lesion pixel that falls between the nearest samples
    Image.fromarray(mask).save(tmp_path / "m.png")
    got = read_mask(tmp_path / "m.png", 64, 64, 16)
    assert got.dtype == np.uint8 and got.shape == (16, 16) and set(np.unique(got)) == {0, 1}
    assert got[2:10, 4:12].all() and got.sum() == 64


@pytest.mark.parametrize("mode", ["1", "L", "RGB", "I;16", "P"])
def test_mask_modes(tmp_path, mode):
    Image.fromarray(EYE * 255).convert(mode).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", 8, 8, 8), EYE)


def test_mask_size_mismatch_is_checked_before_resizing(tmp_path):
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "m.png")
    assert rejected(tmp_path / "m.png", 64, 64, 32).reason == "mask_size_mismatch"
    assert "32x32" in rejected(tmp_path / "m.png", 64, 64, 32).detail


@pytest.mark.parametrize(("name", "content"), [("m.png", b"not a png"), ("m.npy", b"not numpy"), ("m.nii", b"x" * 400)])
def test_unreadable_mask(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    error = rejected(tmp_path / name, 8, 8, 8)
    assert error.reason == "mask_unreadable" and "not a valid" in error.detail


def test_empty_and_oversized_mask_files_are_refused_unread(tmp_path):
    (tmp_path / "e.png").write_bytes(b"")
    assert rejected(tmp_path / "e.png", 8, 8, 8).detail == "the mask file is empty (0 bytes)"
    with (tmp_path / "big.png").open("wb") as fh:
        fh.truncate(17 * 1024 * 1024 + 2000)  # sparse: no disk cost
    assert rejected(tmp_path / "big.png", 8, 8, 8, max_bytes=1000).reason == "too_large"


def test_mask_follows_the_square_policy(tmp_path):
    mask = np.zeros((4, 8), np.uint8)
    mask[:, 3:5] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", 4, 8, 4, square="crop"), (mask[:, 2:6] > 0) * 1)
    assert read_mask(tmp_path / "m.png", 4, 8, 8, square="pad")[:2].sum() == 0


def test_multipage_mask_for_multiframe(tmp_path):
    pages = [Image.fromarray(EYE * 255), Image.fromarray(np.zeros((8, 8), np.uint8))]
    pages[0].save(tmp_path / "m.tif", save_all=True, append_images=pages[1:])
    got = read_mask(tmp_path / "m.tif", 8, 8, 8, frames=2)
    assert got.shape == (2, 8, 8) and got[0].sum() == 8 and got[1].sum() == 0
    error = rejected(tmp_path / "m.tif", 8, 8, 8, frames=3)
    assert error.reason == "mask_size_mismatch" and "2 page(s)" in error.detail


# --- NumPy .npy ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [bool, np.uint8, np.int16, np.int64, np.float32])
def test_npy_masks_of_bool_integer_or_whole_float_values(tmp_path, dtype):
    np.save(tmp_path / "m.npy", (EYE * 3).astype(dtype))
    np.testing.assert_array_equal(read_mask(tmp_path / "m.npy", 8, 8, 8), EYE)


def test_npy_shape_is_checked_and_frames_come_first(tmp_path):
    np.save(tmp_path / "m.npy", np.zeros((8, 6), np.uint8))
    error = rejected(tmp_path / "m.npy", 6, 8, 8)
    assert error.reason == "mask_size_mismatch" and "8x6" in error.detail and "6x8" in error.detail
    volume = np.stack([EYE, np.zeros_like(EYE), EYE[::-1]])
    np.save(tmp_path / "v.npy", volume)
    got = read_mask(tmp_path / "v.npy", 8, 8, 8, frames=3)
    np.testing.assert_array_equal(got, volume)
    assert rejected(tmp_path / "v.npy", 8, 8, 8, frames=2).reason == "mask_size_mismatch"


def test_npy_without_numbers_is_unreadable(tmp_path):
    np.save(tmp_path / "s.npy", np.array([["a"] * 8] * 8))
    assert rejected(tmp_path / "s.npy", 8, 8, 8).reason == "mask_unreadable"
    np.save(tmp_path / "o.npy", np.empty((8, 8), dtype=object), allow_pickle=True)  # never unpickled
    assert rejected(tmp_path / "o.npy", 8, 8, 8).reason == "mask_unreadable"
    np.save(tmp_path / "n.npy", np.full((8, 8), np.nan, np.float32))
    assert rejected(tmp_path / "n.npy", 8, 8, 8).reason == "mask_unreadable"


# --- NIfTI --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_masks_in_array_order(tmp_path, suffix):
    mask = np.zeros((6, 8), np.uint8)
    mask[1:3, 2:7] = 1
    nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / f"m{suffix}")
    padded = np.zeros((8, 8), np.uint8)
    padded[1:7] = mask  # padded to a square above and below, as its 6x8 image is
    np.testing.assert_array_equal(read_mask(tmp_path / f"m{suffix}", 6, 8, 8), padded)
    nib.save(nib.Nifti1Image(mask[:, :, None], np.eye(4)), tmp_path / f"z{suffix}")  # a one-slice volume
    assert read_mask(tmp_path / f"z{suffix}", 6, 8, 8).sum() == read_mask(tmp_path / f"m{suffix}", 6, 8, 8).sum()
    nib.save(nib.Nifti1Image(mask.T.copy(), np.eye(4)), tmp_path / f"t{suffix}")  # columns first: not reoriented
    error = rejected(tmp_path / f"t{suffix}", 6, 8, 8)
    assert error.reason == "mask_size_mismatch" and "8x6" in error.detail and "array order" in error.detail


def test_nifti_volume_gives_one_page_per_frame(tmp_path):
    volume = np.zeros((8, 8, 3), np.int16)
    volume[..., 0], volume[..., 2] = EYE, EYE[::-1]
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "v.nii.gz")
    got = read_mask(tmp_path / "v.nii.gz", 8, 8, 8, frames=3)
    np.testing.assert_array_equal(got, np.moveaxis(volume, 2, 0))
    assert rejected(tmp_path / "v.nii.gz", 8, 8, 8, frames=4).reason == "mask_size_mismatch"


def test_nifti_float_mask_with_a_slope_reads_like_the_integers(tmp_path):
    img = nib.Nifti1Image((EYE * 2).astype(np.float32), np.eye(4))
    img.header.set_slope_inter(0.5, 0)
    nib.save(img, tmp_path / "f.nii")
    np.testing.assert_array_equal(read_mask(tmp_path / "f.nii", 8, 8, 8), EYE)


# --- label maps ---------------------------------------------------------------------------------------------------


def label_map():
    mask = np.zeros((8, 8), np.uint8)
    mask[1:3, 1:3], mask[5:7, 5:7] = 1, 2  # lesion and, say, organ
    return mask


def write(path, mask):
    if path.name.endswith(".npy"):
        np.save(path, mask)
    elif path.name.endswith((".nii", ".nii.gz")):
        nib.save(nib.Nifti1Image(mask, np.eye(4)), path)
    else:
        Image.fromarray(mask).save(path)
    return path


@pytest.mark.parametrize("name", ["m.png", "m.npy", "m.nii.gz"])
def test_label_map_is_refused_by_default_and_binarised_on_request(tmp_path, name):
    path = write(tmp_path / name, label_map())
    error = rejected(path, 8, 8, 8)
    assert error.reason == "mask_label_map" and "2 distinct non-zero values (1, 2)" in error.detail
    assert "ingest.label_maps=binarise" in error.detail
    np.testing.assert_array_equal(read_mask(path, 8, 8, 8, label_maps="binarise"), (label_map() > 0) * 1)


def test_two_non_zero_values_without_background_are_a_label_map(tmp_path):
    path = write(tmp_path / "m.png", label_map() + 1)  # values 1, 2, 3: no zero at all
    assert rejected(path, 8, 8, 8).reason == "mask_label_map"


def test_label_map_spread_over_pages_is_a_label_map(tmp_path):
    np.save(tmp_path / "v.npy", np.stack([EYE, EYE * 2]))  # one value per page, two values in the volume
    assert rejected(tmp_path / "v.npy", 8, 8, 8, frames=2).reason == "mask_label_map"
