import csv
import hashlib

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from components.config import resolve
from components.errors import ConfigError, DataError
from components.phantom import CLASSES, PHI_TAGS, write_phantom
from components.rebalance.core import split_patients

SMALL = {"n_patients": 6, "slices_per_patient": 4, "size": 64}
# The six header fields the spec names as PHI; each must be filled so leaks can be detected downstream.
REQUIRED_PHI = [
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "InstitutionName",
    "ReferringPhysicianName",
]
HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "Rows",
    "Columns",
    "PixelSpacing",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "RescaleSlope",
    "RescaleIntercept",
    "WindowCenter",
    "WindowWidth",
    "StudyDate",
    "ImagePositionPatient",
    "PixelData",
]


def tree_digest(root):
    """Relative path -> sha256 of every file under root."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_labels(root):
    with (root / "labels.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def default_phantom(tmp_path_factory):
    return write_phantom(tmp_path_factory.mktemp("default") / "data")


def test_same_seed_gives_byte_identical_tree(tmp_path):
    a = tree_digest(write_phantom(tmp_path / "a", seed=3, **SMALL))
    b = tree_digest(write_phantom(tmp_path / "b", seed=3, **SMALL))
    assert a == b
    assert len(a) == 1 + 24 + sum(1 for name in a if name.startswith("masks/"))


def test_different_seed_differs(tmp_path):
    a = tree_digest(write_phantom(tmp_path / "a", seed=3, **SMALL))
    b = tree_digest(write_phantom(tmp_path / "b", seed=4, **SMALL))
    assert a["labels.csv"] != b["labels.csv"]
    shared = set(a) & set(b)
    assert all(a[name] != b[name] for name in shared if name.endswith(".dcm"))


def test_rewrite_replaces_previous_phantom(tmp_path):
    out = write_phantom(tmp_path / "d", seed=3, **SMALL)
    first = tree_digest(out)
    write_phantom(out, seed=3, **SMALL)
    assert tree_digest(out) == first
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temporary folder left behind


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a phantom"):
        write_phantom(tmp_path / "mine", **SMALL)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("kwargs", [{"n_patients": 2}, {"slices_per_patient": 1}, {"size": 8}])
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ConfigError):
        write_phantom(tmp_path / "x", **{**SMALL, **kwargs})


def test_default_class_proportions(default_phantom):
    rows = read_labels(default_phantom)
    counts = {c: sum(r["label"] == c for r in rows) for c in ("normal", "benign", "malignant")}
    assert len(rows) == 288
    assert counts == {"normal": 198, "benign": 70, "malignant": 20}  # 68.75 / 24.3 / 6.9 %
    per_patient = {}
    for r in rows:
        per_patient.setdefault(r["patient_id"], []).append(r["label"])
    kinds = [max(labels, key=["normal", "benign", "malignant"].index) for labels in per_patient.values()]
    assert (kinds.count("malignant"), kinds.count("benign"), kinds.count("normal")) == (10, 10, 4)
    for labels in per_patient.values():  # a lesion spans consecutive slices; the patient's other slices are normal
        lesion = [k for k, label in enumerate(labels) if label != "normal"]
        assert lesion == list(range(min(lesion, default=0), max(lesion, default=-1) + 1))
        assert len(lesion) == {"normal": 0, "benign": 7, "malignant": 2}[max(labels, key=CLASSES.index)]


def test_quickstart_split_has_several_patients_of_every_class_in_every_split(default_phantom):
    """The sample data `make data` writes, split as the quickstart splits it: no split's class rests on one patient."""
    cfg = resolve("quickstart")
    manifest = pd.DataFrame(read_labels(default_phantom)).rename(columns={"patient_id": "patient"})
    split = split_patients(manifest, list(CLASSES), cfg.split.val_fraction, cfg.split.test_fraction, cfg.seed)
    manifest["split"] = manifest["patient"].map(split)
    patients = manifest.groupby(["split", "label"])["patient"].nunique().unstack().to_dict(orient="index")
    assert patients == {
        "train": {"normal": 14, "benign": 6, "malignant": 6},
        "val": {"normal": 5, "benign": 2, "malignant": 2},
        "test": {"normal": 5, "benign": 2, "malignant": 2},
    }
    assert min(min(row.values()) for row in patients.values()) >= cfg.validate.min_patients_per_class


def test_labels_and_masks_are_consistent(default_phantom):
    for r in read_labels(default_phantom):
        assert (default_phantom / r["file"]).is_file()
        if r["label"] == "normal":
            assert r["mask_file"] == ""
            continue
        mask = np.asarray(Image.open(default_phantom / r["mask_file"]))
        assert mask.dtype == np.uint8 and mask.shape == (128, 128)
        assert set(np.unique(mask)) == {0, 255}


def test_patient_folder_names_carry_no_phi(default_phantom):
    ids = {r["patient_id"] for r in read_labels(default_phantom)}
    assert all(i not in r["file"] for r in read_labels(default_phantom) for i in ids)


def test_headers(default_phantom):
    rows = read_labels(default_phantom)
    photometric, scanners, sop_uids = set(), set(), set()
    for r in rows[::4]:
        ds = pydicom.dcmread(default_phantom / r["file"])
        for tag in HEADER_TAGS + REQUIRED_PHI:
            assert tag in ds and ds.data_element(tag).value not in (None, ""), tag
        assert set(REQUIRED_PHI) <= set(PHI_TAGS)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == CTImageStorage and ds.Modality == "CT"
        assert ds.preamble == b"\0" * 128
        assert ds.pixel_array.dtype in (np.int16, np.uint16)
        assert ds.PatientID == r["patient_id"]
        photometric.add(ds.PhotometricInterpretation)
        scanners.add((float(ds.RescaleSlope), float(ds.RescaleIntercept)))
        sop_uids.add(ds.SOPInstanceUID)
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}
    assert len(scanners) >= 3
    assert len(sop_uids) == len(rows[::4])


def test_monochrome1_patients_show_the_same_anatomy(default_phantom):
    """Rendering with the header window, then inverting MONOCHROME1, puts air dark and bone bright for everyone."""
    seen = set()
    for r in read_labels(default_phantom)[::12]:
        ds = pydicom.dcmread(default_phantom / r["file"])
        values = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds)
        center = float(ds.WindowCenter[0] if ds["WindowCenter"].VM > 1 else ds.WindowCenter)
        width = float(ds.WindowWidth[0] if ds["WindowWidth"].VM > 1 else ds.WindowWidth)
        unit = np.clip((values - center + width / 2) / width, 0, 1)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            unit = 1 - unit
        seen.add(ds.PhotometricInterpretation)
        assert unit[:4, :4].mean() < 0.3  # corner: air outside the body
        assert unit.max() == 1.0  # bone saturates the lung window
    assert seen == {"MONOCHROME1", "MONOCHROME2"}
