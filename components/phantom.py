"""A synthetic CT-like DICOM study set: the sample data of the quickstart and the fixture of the tests.

No real labelled medical data can be shipped, so :func:`write_phantom` draws axial chest slices (body, fat layer,
lungs whose size follows the slice position, vessels, heart, liver dome, spine, ribs, couch) and plants lesions:

* ``benign``: a small, smooth, round, hyperdense (calcified) nodule;
* ``malignant``: a larger irregular, spiculated mass with a hypodense necrotic centre.

Each patient is scanned by one of several simulated "scanners" that differ in stored pixel type and in the rescale
slope/intercept, and a few patients are stored MONOCHROME1 (inverted), so the ingest stage has to get the Modality
LUT, the window and the photometric interpretation right. Headers carry fake PHI (names, MRNs, birth dates,
accession numbers, institutions, physicians) so that tests can prove none of it leaks into outputs.

The output is byte-for-byte reproducible from the seed: DVC hashes the folder and a test compares the hash, so
nothing here may depend on the clock, on random UUIDs, on set ordering or on the platform's line endings.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

from components.dicomio import PHI_TAGS as PHI_TAGS  # re-exported: the PHI the phantom fills in
from components.errors import ConfigError, DataError

CLASSES = ("normal", "benign", "malignant")

# Fixed so that the file meta does not change with the installed pydicom version.
_IMPLEMENTATION_UID = generate_uid(entropy_srcs=["medgan-ops", "phantom", "implementation"])
_IMPLEMENTATION_VERSION = "MEDGAN_PHANTOM1"
_STUDY_DATE = "20240115"
_SLICE_THICKNESS_MM = 5.0
_FOV_MM = 360.0

_FAMILY = (
    "Moreau",
    "Okafor",
    "Lindqvist",
    "Tanaka",
    "Haddad",
    "Kowalski",
    "Fernandes",
    "Novak",
    "Brennan",
    "Achterberg",
    "Delacroix",
    "Ivanova",
    "Mbeki",
    "Castellanos",
    "Whitfield",
    "Oyelaran",
)
_GIVEN = (
    "Claire",
    "Daniel",
    "Ingrid",
    "Hiroshi",
    "Leila",
    "Tomasz",
    "Beatriz",
    "Marek",
    "Siobhan",
    "Joost",
    "Amelie",
    "Olga",
    "Thabo",
    "Lucia",
    "Gareth",
    "Funmi",
)
_INSTITUTIONS = (
    ("Mercy Ridge Medical Center", "41 Harbour Lane, Port Ellery"),
    ("St. Aldhelm University Hospital", "7 Cathedral Close, Wexmoor"),
    ("Lakeshore Regional Clinic", "1200 Shoreline Drive, Northam"),
)


@dataclass(frozen=True)
class _Scanner:
    """How one simulated scanner stores Hounsfield units."""

    model: str
    signed: bool
    bits_stored: int
    slope: float
    intercept: float

    @property
    def stored_range(self) -> tuple[int, int]:
        if self.signed:
            return -(2 ** (self.bits_stored - 1)), 2 ** (self.bits_stored - 1) - 1
        return 0, 2**self.bits_stored - 1


_SCANNERS = (
    _Scanner("PHANTOM CT-A 64", signed=False, bits_stored=12, slope=1.0, intercept=-1024.0),
    _Scanner("PHANTOM CT-B 128", signed=False, bits_stored=16, slope=0.5, intercept=-1024.0),
    _Scanner("PHANTOM CT-C 16", signed=True, bits_stored=16, slope=1.0, intercept=0.0),
    _Scanner("PHANTOM CT-D 320", signed=False, bits_stored=16, slope=2.0, intercept=-2048.0),
)


@dataclass
class _Patient:
    index: int
    folder: str
    label: str  # the lesion class of the patient ("normal" when it has none)
    scanner: _Scanner
    monochrome1: bool
    multi_window: bool
    name: str
    patient_id: str
    birth_date: str
    sex: str
    accession: str
    institution: tuple[str, str]
    referrer: str
    operator: str
    anatomy: dict[str, float]
    lesion_slices: range
    lesion: dict[str, float]
    vessels: np.ndarray


def write_phantom(
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    n_patients: int = 24,
    slices_per_patient: int = 12,
    size: int = 128,
) -> Path:
    """Write the phantom study set into ``out_dir`` and return its path.

    Layout: ``dicom/<case>/<slice>.dcm``, ``masks/<case>/<slice>.png`` (uint8 0/255, lesion slices only) and
    ``labels.csv`` with columns ``file,label,patient_id,mask_file`` (paths relative to ``out_dir``; ``mask_file``
    empty for class normal). A lesion spans consecutive slices; the other slices of its patient are labelled normal.
    5/12 of the patients carry a malignant lesion on 1/6 of their slices, 5/12 a benign one on 7/12 of their slices
    (at least one normal-only patient is kept). With the defaults (24 patients x 12 slices = 288 images) that is
    10 malignant patients with 2 lesion slices each and 10 benign ones with 7: 198/70/20 images, 68.75/24.3/6.9 %
    normal/benign/malignant. The rare class is spread over many patients, few slices each, so that the default
    patient-level split (``split.val_fraction`` 0.15, ``split.test_fraction`` 0.2) puts 6/2/2 malignant patients
    in train/val/test instead of resting each split's rare-class metrics on a single patient.

    The folder is built beside ``out_dir`` and moved into place when complete; an existing phantom there is
    replaced, any other non-empty folder is left alone and refused.
    """
    if n_patients < 3:
        raise ConfigError(f"phantom n_patients={n_patients}: need at least 3 (one patient per class)")
    if slices_per_patient < 2:
        raise ConfigError(f"phantom slices_per_patient={slices_per_patient}: need at least 2")
    if not 32 <= size <= 1024:
        raise ConfigError(f"phantom size={size}: choose between 32 and 1024 pixels")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (out / "labels.csv").is_file():
        raise DataError(f"{out} exists and is not a phantom dataset (no labels.csv); refusing to overwrite it")

    rng = np.random.default_rng(seed)
    patients = _plan_patients(rng, seed, n_patients, slices_per_patient, size)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        rows = []
        for patient in patients:
            rows.extend(_write_patient(tmp, patient, seed, slices_per_patient, size, rng))
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["file", "label", "patient_id", "mask_file"])
        writer.writerows(rows)
        (tmp / "labels.csv").write_bytes(buf.getvalue().encode("utf-8"))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _plan_patients(rng: np.random.Generator, seed: int, n: int, n_slices: int, size: int) -> list[_Patient]:
    """Draw every patient's class, scanner, fake identity, anatomy and lesion; the order of draws is fixed."""
    # Many lesion patients with few lesion slices each: every split of a patient-level split then holds several
    # patients of each lesion class while the malignant share of the images stays small (10 malignant, 10 benign and
    # 4 normal patients at the defaults: 6.9 % of the images malignant).
    n_malignant = min(max(1, round(n * 5 / 12)), n - 2)
    n_benign = max(1, min(round(n * 5 / 12), n - n_malignant - 1))
    labels = ["malignant"] * n_malignant + ["benign"] * n_benign + ["normal"] * (n - n_malignant - n_benign)
    labels = [labels[i] for i in rng.permutation(n)]
    # About one patient in six comes from a department that exports MONOCHROME1; at least one, so it is exercised.
    mono1 = set(rng.choice(n, size=max(1, n // 6), replace=False).tolist())
    patients = []
    for i, label in enumerate(labels):
        family = _FAMILY[int(rng.integers(len(_FAMILY)))]
        given = _GIVEN[int(rng.integers(len(_GIVEN)))]
        birth = f"{int(rng.integers(1938, 1996))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
        n_lesion = {
            "normal": 0,
            "benign": max(1, round(n_slices * 7 / 12)),
            "malignant": max(1, round(n_slices / 6)),
        }[label]
        start = (n_slices - n_lesion) // 2 + int(rng.integers(-1, 2)) if n_lesion < n_slices else 0
        start = min(max(start, 0), n_slices - n_lesion)
        anatomy = {
            "body_a": rng.uniform(0.80, 0.90),
            "body_b": rng.uniform(0.56, 0.66),
            "body_dy": rng.uniform(-0.03, 0.03),
            "lung_a": rng.uniform(0.24, 0.29),
            "lung_b": rng.uniform(0.36, 0.42),
            "heart": rng.uniform(0.85, 1.1),
            "tissue_hu": rng.uniform(35, 50),
            "noise_hu": rng.uniform(8, 16),
        }
        side = 1.0 if rng.random() < 0.5 else -1.0
        lesion = {
            "side": side,
            "u": rng.uniform(-0.45, 0.45),
            "v": rng.uniform(-0.45, 0.45),
            "r": rng.uniform(0.08, 0.11) if label == "benign" else rng.uniform(0.16, 0.21),
            "hu": rng.uniform(150, 260) if label == "benign" else rng.uniform(45, 65),
            "phase1": rng.uniform(0, 2 * math.pi),
            "phase2": rng.uniform(0, 2 * math.pi),
            "spikes": float(rng.integers(6, 10)),
            "phase3": rng.uniform(0, 2 * math.pi),
        }
        vessels = _vessel_field(rng, size)
        institution = _INSTITUTIONS[int(rng.integers(len(_INSTITUTIONS)))]
        patients.append(
            _Patient(
                index=i,
                folder=f"case{i:03d}",
                label=label,
                scanner=_SCANNERS[int(rng.integers(len(_SCANNERS)))],
                monochrome1=i in mono1,
                multi_window=bool(rng.random() < 0.5),
                name=f"{family}^{given}",
                patient_id=f"MRN{int(rng.integers(10**7, 10**8))}",
                birth_date=birth,
                sex="F" if rng.random() < 0.5 else "M",
                accession=f"ACC{seed % 1000:03d}{int(rng.integers(10**6, 10**7))}",
                institution=institution,
                referrer=f"{_FAMILY[int(rng.integers(len(_FAMILY)))]}^{_GIVEN[int(rng.integers(len(_GIVEN)))]}^^Dr",
                operator=f"{_FAMILY[int(rng.integers(len(_FAMILY)))]}^{_GIVEN[int(rng.integers(len(_GIVEN)))]}",
                anatomy=anatomy,
                lesion_slices=range(start, start + n_lesion),
                lesion=lesion,
                vessels=vessels,
            )
        )
    return patients


def _vessel_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """Blurred sparse points: pulmonary vessels in cross-section, shifted a little from slice to slice."""
    field = np.zeros((size, size))
    n = int(size * size / 120)
    field[rng.integers(0, size, n), rng.integers(0, size, n)] = 1.0
    field = ndimage.gaussian_filter(field, sigma=size / 180)
    return field / max(field.max(), 1e-9)


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float, edge: float) -> np.ndarray:
    """Fractional occupancy of an ellipse with a soft edge (partial-volume effect, no aliasing)."""
    d = np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2)
    return np.clip((1.0 - d) / (edge / min(a, b)) + 0.5, 0.0, 1.0)


def _slice_hu(p: _Patient, k: int, n_slices: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Hounsfield units and the lesion mask of slice ``k`` (0 = lung apex, n-1 = lung base)."""
    z = (k + 0.5) / n_slices
    coords = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(coords, coords, indexing="ij")
    edge = 2.0 / size  # about one pixel
    a = p.anatomy
    hu = np.full((size, size), -1000.0)

    def paint(occupancy: np.ndarray, value: float | np.ndarray) -> None:
        np.multiply(hu, 1.0 - occupancy, out=hu)
        hu[...] += occupancy * value

    paint(_ellipse(x, y, 0.0, 0.93, 0.9, 0.05, edge), 150.0)  # couch
    body_cy = 0.02 + a["body_dy"]
    paint(_ellipse(x, y, 0.0, body_cy, a["body_a"], a["body_b"], edge), -100.0)  # subcutaneous fat
    paint(_ellipse(x, y, 0.0, body_cy, a["body_a"] - 0.06, a["body_b"] - 0.05, edge), a["tissue_hu"])
    # Lungs are small at the apex, largest in the middle and cut off from below by the diaphragm/liver dome.
    lung_scale = 0.35 + 0.65 * math.sin(math.pi * (0.08 + 0.84 * z)) ** 0.6
    liver = max(0.0, (z - 0.55) / 0.45)
    lungs = np.zeros_like(hu)
    for side in (-1.0, 1.0):
        shrink = 1.0 - (0.55 * liver if side < 0 else 0.3 * liver)  # the right lung sits above the liver
        la, lb = a["lung_a"] * lung_scale * shrink, a["lung_b"] * lung_scale * shrink
        lungs = np.maximum(lungs, _ellipse(x, y, side * 0.36, -0.04 + 0.1 * (1 - shrink), la, lb, edge))
    shift = int(round(z * size * 0.06))
    vessels = np.roll(p.vessels, (shift, -shift), axis=(0, 1))
    # Dependent (posterior) lung is denser than the anterior lung in a supine patient.
    paint(lungs, -870.0 + 90.0 * (y + 0.5) + 750.0 * vessels)
    if z < 0.35:  # trachea above the carina
        paint(_ellipse(x, y, 0.0, -0.2, 0.055, 0.05, edge), -1000.0)
    heart = a["heart"] * max(0.0, math.sin(math.pi * (z - 0.25) / 0.75)) if z > 0.25 else 0.0
    if heart > 0.05:
        paint(_ellipse(x, y, 0.08, 0.0, 0.2 * heart, 0.17 * heart, edge), 45.0)
    if liver > 0:
        paint(_ellipse(x, y, -0.3, 0.05, 0.42 * liver + 0.05, 0.3 * liver + 0.04, edge), 60.0)
    spine_y = body_cy + a["body_b"] - 0.22
    paint(_ellipse(x, y, 0.0, spine_y, 0.1, 0.09, edge), 700.0)  # vertebral body (cortex)
    paint(_ellipse(x, y, 0.0, spine_y, 0.07, 0.06, edge), 250.0)  # cancellous bone
    paint(_ellipse(x, y, 0.0, spine_y + 0.14, 0.035, 0.06, edge), 650.0)  # spinous process
    if z < 0.8:  # ribs: posterior and anterior arcs, leaving out the spine and the sternum
        for turn in (0.12, 0.27, 0.73, 0.88, 1.15, 1.3, 1.7, 1.85):
            angle = math.pi * turn
            rx = (a["body_a"] - 0.1) * math.cos(angle)
            ry = body_cy + (a["body_b"] - 0.09) * math.sin(angle)
            paint(_ellipse(x, y, rx, ry, 0.03, 0.025, edge), 600.0)

    mask = np.zeros((size, size), dtype=bool)
    if k in p.lesion_slices:
        hu, mask = _add_lesion(hu, p, k, x, y, edge, lung_scale)
    # CT noise is spatially correlated; a light blur of white noise gets its texture close enough.
    noise = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma=0.7) * (p.anatomy["noise_hu"] * 2.2)
    return hu + noise, mask


def _add_lesion(
    hu: np.ndarray, p: _Patient, k: int, x: np.ndarray, y: np.ndarray, edge: float, lung_scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Plant the patient's lesion in one lung; its cross-section follows a sphere-like profile over the slices."""
    les = p.lesion
    span = p.lesion_slices
    centre = (span.start + span.stop - 1) / 2
    half = max((span.stop - span.start) / 2, 1.0)
    # Never shrink below 70 % of the radius: a lesion slice must keep a lesion that survives resizing.
    profile = max(0.7, math.sqrt(max(0.0, 1.0 - ((k - centre) / (half + 0.5)) ** 2)))
    cx = les["side"] * 0.36 + les["u"] * p.anatomy["lung_a"] * lung_scale
    cy = -0.04 + les["v"] * p.anatomy["lung_b"] * lung_scale
    r = les["r"] * profile
    dx, dy = x - cx, y - cy
    dist = np.sqrt(dx**2 + dy**2)
    if p.label == "benign":
        boundary = np.full_like(dist, r)
    else:
        theta = np.arctan2(dy, dx)
        lobes = 0.16 * np.sin(3 * theta + les["phase1"]) + 0.09 * np.sin(5 * theta + les["phase2"])
        spicules = 0.45 * np.maximum(0.0, np.cos(les["spikes"] * theta + les["phase3"])) ** 16
        boundary = r * (1.0 + lobes + spicules)
    occupancy = np.clip((boundary - dist) / edge + 0.5, 0.0, 1.0)
    value: float | np.ndarray = les["hu"]
    if p.label == "malignant":
        # Necrotic core: fluid-like density fading into the enhancing rim.
        core = np.clip((0.5 * r - dist) / (0.25 * r) + 0.5, 0.0, 1.0)
        value = les["hu"] * (1.0 - core) + 8.0 * core
    hu = hu * (1.0 - occupancy) + occupancy * value
    return hu, dist < boundary


def _write_patient(
    root: Path, p: _Patient, seed: int, n_slices: int, size: int, rng: np.random.Generator
) -> list[list[str]]:
    """Write one patient's series and masks; return its labels.csv rows."""
    (root / "dicom" / p.folder).mkdir(parents=True)
    study_uid = generate_uid(entropy_srcs=["medgan-phantom", str(seed), p.folder, "study"])
    series_uid = generate_uid(entropy_srcs=["medgan-phantom", str(seed), p.folder, "series"])
    frame_uid = generate_uid(entropy_srcs=["medgan-phantom", str(seed), p.folder, "frame"])
    rows = []
    for k in range(n_slices):
        hu, mask = _slice_hu(p, k, n_slices, size, rng)
        label = p.label if k in p.lesion_slices else "normal"
        sop_uid = generate_uid(entropy_srcs=["medgan-phantom", str(seed), p.folder, "sop", str(k)])
        ds = _dataset(p, k, n_slices, size, hu, sop_uid, study_uid, series_uid, frame_uid)
        rel = f"dicom/{p.folder}/slice{k:03d}.dcm"
        pydicom.dcmwrite(root / rel, ds, enforce_file_format=True)
        mask_rel = ""
        if label != "normal":
            mask_rel = f"masks/{p.folder}/slice{k:03d}.png"
            (root / mask_rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / mask_rel, format="PNG", compress_level=0)
        rows.append([rel, label, p.patient_id, mask_rel])
    return rows


def _dataset(
    p: _Patient,
    k: int,
    n_slices: int,
    size: int,
    hu: np.ndarray,
    sop_uid: str,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
) -> Dataset:
    """A CT Image Storage dataset holding ``hu`` the way the patient's scanner stores it."""
    sc = p.scanner
    lo, hi = sc.stored_range
    stored = np.clip(np.rint((hu - sc.intercept) / sc.slope), lo, hi)
    centers, widths = ([-600.0, 40.0], [1500.0, 400.0]) if p.multi_window else ([-600.0], [1500.0])
    if p.monochrome1:
        # Inverted storage: high stored values are dark. The rescale still applies to the stored values, so the
        # window (which DICOM applies before the MONOCHROME1 inversion) moves to the mirrored modality values.
        stored = lo + hi - stored
        mirror = sc.slope * (lo + hi) + 2 * sc.intercept
        centers = [mirror - c for c in centers]
    pixels = stored.astype(np.int16 if sc.signed else np.uint16)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = _IMPLEMENTATION_UID
    meta.ImplementationVersionName = _IMPLEMENTATION_VERSION

    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = _STUDY_DATE
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "093000"
    ds.AccessionNumber = p.accession
    ds.Modality = "CT"
    ds.Manufacturer = "MEDGAN-OPS PHANTOM"
    ds.InstitutionName = p.institution[0]
    ds.InstitutionAddress = p.institution[1]
    ds.ReferringPhysicianName = p.referrer
    ds.OperatorsName = p.operator
    ds.StudyDescription = "CT CHEST WITH CONTRAST"
    ds.SeriesDescription = "AXIAL 5MM SYNTHETIC PHANTOM"
    ds.ManufacturerModelName = sc.model
    ds.PatientName = p.name
    ds.PatientID = p.patient_id
    ds.PatientBirthDate = p.birth_date
    ds.PatientSex = p.sex
    ds.PatientIdentityRemoved = "NO"
    ds.SliceThickness = _SLICE_THICKNESS_MM
    ds.KVP = 120
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = f"S{p.index + 1:04d}"
    ds.SeriesNumber = 2
    ds.InstanceNumber = k + 1
    z_mm = -_SLICE_THICKNESS_MM * k
    ds.ImagePositionPatient = [-_FOV_MM / 2, -_FOV_MM / 2, z_mm]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = frame_uid
    ds.SliceLocation = z_mm
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if p.monochrome1 else "MONOCHROME2"
    ds.Rows = ds.Columns = size
    spacing = round(_FOV_MM / size, 6)
    ds.PixelSpacing = [spacing, spacing]
    ds.BitsAllocated = 16
    ds.BitsStored = sc.bits_stored
    ds.HighBit = sc.bits_stored - 1
    ds.PixelRepresentation = 1 if sc.signed else 0
    ds.WindowCenter = centers if len(centers) > 1 else centers[0]
    ds.WindowWidth = widths if len(widths) > 1 else widths[0]
    ds.RescaleIntercept = sc.intercept
    ds.RescaleSlope = sc.slope
    ds.RescaleType = "US" if p.monochrome1 else "HU"
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = pixels.astype("<" + pixels.dtype.str[1:]).tobytes()
    return ds
