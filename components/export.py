r"""Synthetic data out: labelled image + mask pairs drawn from a trained generator, written as a DICOM dataset.

:func:`export_samples` (the ``medgan sample`` command) loads the generator of a registered model version
(``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``, read from the MLflow registry) or of a local ``generator.pt``,
draws ``n`` pairs of one class and writes a folder in exactly the form the ingest stage reads (the phantom's):

* ``dicom/<class>_<index>.dcm``: one Secondary Capture image per sample (see :func:`synthetic_dataset`);
* ``masks/<class>_<index>.png``: the lesion mask (uint8 0/255) of a lesion class; a non-lesion class has no lesion
  by definition, so its samples carry no mask file (the generator's mask channel is not exported, its pixel count
  is in the manifest);
* ``labels.csv``: ``file,label,patient_id,mask_file``, so that ``ingest`` takes the folder as a dataset;
* ``previews/<class>_<index>.png``: the image next to the image with the mask overlaid in red;
* ``manifest.csv``: one row per sample with its files, class, seed, index, draw, the model URI, name and version,
  the generator's SHA-256 and training step, and the DICOM instance and synthetic patient identifiers.

The masks are PNG files, not DICOM Segmentation objects: writing a conformant SEG by hand is a project of its own and
highdicom, the library that does it well, is not a dependency; PNG masks next to ``labels.csv`` are what the ingest
stage (and the phantom) use.

Why these DICOM choices:

* **Secondary Capture, Modality OT, ConversionType SYN** ("synthetic image", PS3.3 C.8.6.1) rather than CT Image
  Storage with Modality CT: no scanner acquired these pixels, the CT IOD's acquisition attributes (KVP, slice
  geometry, pixel spacing) would all be invented, and a reader that selects ``Modality = CT`` must not pick up
  synthetic images by accident. ImageType is ``DERIVED\SECONDARY``.
* **Synthetic markers** in the series description, the image comments and the derivation description; burned-in
  annotation and recognisable visual features ``NO``; patient identity removed ``YES``.
* **No PHI, nothing from training headers**: every sample is its own synthetic subject (PatientID
  ``SYN-<export id>-<index>``, PatientName ``SYNTHETIC``; birth date, sex, accession number and referring physician
  present but empty, as the modules' type 2 asks), with fresh Study, Series and SOP Instance UIDs. The only inputs
  are the generator's weights and its resolved config, which hold no header value.
* **Pixels**: 12 bits stored, MONOCHROME2. When the model was trained with a fixed window (``data.window_center`` /
  ``data.window_width``, in the modality's units: HU for CT), the rescale gives back modality values inside that
  window and the header window is the training window; otherwise the training windows came from each source header
  and the model does not know them, so the stored range is the window. RescaleType is US (unspecified) either way:
  the generator file does not record the training modality, so the export does not claim Hounsfield units. Ingest's
  VOI gives back the generator's image to within one part in 4095.

Drawing is deterministic: candidates come in chunks of :data:`DRAW_CHUNK` whose latent seeds derive from ``seed``
and the chunk number (:func:`chunk_seed`), so memory stays flat whatever ``n`` and the same ``seed`` gives the same
samples. A lesion class's candidate whose mask is empty is skipped (ingest would quarantine it as ``mask_empty``);
the manifest's ``draw`` column says which candidate each sample is.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from pydicom.valuerep import format_number_as_ds
from tqdm import tqdm

from components.config import Config
from components.errors import ConfigError, DataError, RegistryError
from components.gan.sampling import GENERATOR_FILE, generate, load_generator
from components.image import VERSION
from components.topup.core import file_sha256

MODELS_SCHEME = "models:/"
LABELS_FILE = "labels.csv"
MANIFEST_FILE = "manifest.csv"
MANIFEST_COLUMNS = (
    "file",
    "mask_file",
    "preview",
    "class",
    "seed",
    "index",
    "draw",
    "generated_mask_pixels",
    "model_uri",
    "model_name",
    "model_version",
    "generator_sha256",
    "generator_step",
    "sop_instance_uid",
    "patient_id",
)
DRAW_CHUNK = 64
# A lesion class whose masks stay empty this many times over (draws per requested sample) is a broken model.
MAX_DRAW_FACTOR = 20
STORED_MAX = 2**12 - 1  # 12 bits stored in 16 allocated: 4096 grey levels
_OVERLAY_RGB = np.array([255.0, 40.0, 40.0])
_OVERLAY_ALPHA = 0.45


@dataclass(frozen=True)
class ModelSource:
    """Where the generator came from: the URI asked for, the registry name and version, the local weights file."""

    uri: str
    name: str  # registered model name, or the weights file's name for a local file
    version: str  # registered version, "" for a local file
    path: Path
    sha256: str

    @property
    def title(self) -> str:
        """How the header and the manifest name the model: ``NAME vVERSION`` or ``local file NAME``."""
        return f"{self.name} v{self.version}" if self.version else f"local file {self.name}"


@dataclass(frozen=True)
class ExportWindow:
    """The modality values of the exported pixels: ``lo`` maps to stored 0, ``lo + width`` to :data:`STORED_MAX`."""

    lo: float
    width: float
    explanation: str  # WindowCenterWidthExplanation: where the window came from

    @classmethod
    def of(cls, cfg: Config) -> ExportWindow:
        """The training window of ``cfg`` (in its modality units), else the full stored range."""
        center, width = cfg.data.window_center, cfg.data.window_width
        if center is None or width is None:
            return cls(0.0, float(STORED_MAX), "FULL RANGE")
        return cls(float(center) - float(width) / 2, float(width), "TRAINING WINDOW")


def export_samples(
    model_uri: str,
    cls: str,
    n: int,
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Draw ``n`` pairs of class ``cls`` from the model at ``model_uri`` and write them into ``out_dir``.

    ``model_uri`` is ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` (read from the registry at ``tracking_uri``,
    see :func:`registry_uri`) or the path of a ``generator.pt`` (or of the folder holding one). ``out_dir`` must
    not exist or be empty: the folder is built beside it and moved into place when complete, so a failure leaves
    nothing behind. Returns a summary: ``out``, ``n``, ``class``, ``draws``, ``model`` (URI, name, version,
    title, SHA-256) and the ``labels`` and ``manifest`` paths.
    """
    if n < 1:
        raise ConfigError(f"-n {n}: ask for at least one sample")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} exists and is not an empty folder; choose a new --out folder (nothing was written)")
    with tempfile.TemporaryDirectory(prefix="medgan-sample-") as download:
        source = resolve_model(model_uri, tracking_uri, Path(download))
        generator, meta = load_generator(source.path)
    classes = list(meta["classes"])
    if cls not in classes:
        raise ConfigError(f"unknown class {cls!r}: model {source.title} knows {', '.join(classes)}")
    cfg = _training_config(meta, source)
    # The export id keeps the synthetic patient ids of different exports apart when their folders are merged.
    plan = _Plan(source, cls, cls in cfg.data.lesion_classes, ExportWindow.of(cfg), secrets.token_hex(4), seed)
    rows: list[dict[str, Any]] = []
    with _building(out) as tmp, tqdm(total=n, desc="sample", unit="img", mininterval=1.0) as bar:
        for folder in ("dicom", "masks", "previews") if plan.lesion else ("dicom", "previews"):
            (tmp / folder).mkdir()
        for draw, image, mask in draw_pairs(generator, classes.index(cls), plan.lesion, n, seed):
            rows.append({**plan.write(tmp, len(rows), image, mask), "draw": draw, "generator_step": meta.get("step")})
            bar.update()
        labels = [{"label": r["class"], **r} for r in rows]
        _write_csv(tmp / LABELS_FILE, labels, ("file", "label", "patient_id", "mask_file"))
        _write_csv(tmp / MANIFEST_FILE, rows, MANIFEST_COLUMNS)
    return {
        "out": str(out),
        "n": n,
        "class": cls,
        "draws": rows[-1]["draw"] + 1,
        "model": {
            "uri": source.uri,
            "name": source.name,
            "version": source.version,
            "title": source.title,
            "sha256": source.sha256,
        },
        "labels": str(out / LABELS_FILE),
        "manifest": str(out / MANIFEST_FILE),
    }


@dataclass(frozen=True)
class _Plan:
    """What every sample of one export shares, and how one sample is written."""

    source: ModelSource
    cls: str
    lesion: bool
    window: ExportWindow
    export_id: str
    seed: int

    def write(self, folder: Path, index: int, image: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
        """Write sample ``index`` (DICOM, mask of a lesion class, preview) into ``folder``; its manifest row."""
        stem = f"{self.cls}_{index:05d}"
        patient_id = f"SYN-{self.export_id}-{index:05d}"
        stored = np.rint((image.astype(np.float64) + 1.0) / 2.0 * STORED_MAX).astype(np.uint16)
        ds = synthetic_dataset(stored, self.window, self.source, patient_id, index, self.cls)
        files = {"file": f"dicom/{stem}.dcm", "mask_file": "", "preview": f"previews/{stem}.png"}
        pydicom.dcmwrite(folder / files["file"], ds, enforce_file_format=True)
        kept = mask if self.lesion else np.zeros_like(mask)
        if self.lesion:
            files["mask_file"] = f"masks/{stem}.png"
            Image.fromarray(kept.astype(np.uint8) * 255).save(folder / files["mask_file"], format="PNG")
        Image.fromarray(preview(image, kept)).save(folder / files["preview"], format="PNG")
        return {
            **files,
            "class": self.cls,
            "seed": self.seed,
            "index": index,
            "generated_mask_pixels": int(mask.sum()),
            "model_uri": self.source.uri,
            "model_name": self.source.name,
            "model_version": self.source.version,
            "generator_sha256": self.source.sha256,
            "sop_instance_uid": ds.SOPInstanceUID,
            "patient_id": patient_id,
        }


def resolve_model(uri: str, tracking_uri: str | None, download_dir: Path) -> ModelSource:
    """Find the generator weights of ``uri``: a registered version (downloaded into ``download_dir``) or a file.

    The registry's alias is resolved to a version number first and that version is downloaded, so an alias that
    moves during the download cannot mix two versions.
    """
    if not uri.startswith(MODELS_SCHEME):
        path = Path(uri)
        if path.is_dir():
            path = path / GENERATOR_FILE
        if not path.is_file():
            raise DataError(
                f"model {uri!r}: no such generator file; give models:/NAME@ALIAS, models:/NAME/VERSION "
                f"or the path of a {GENERATOR_FILE}"
            )
        return ModelSource(uri, path.name, "", path, file_sha256(path))
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    store = registry_uri(tracking_uri)
    client, name, version = _registered_version(uri, store)
    try:
        root = client.get_model_version_download_uri(name, version)  # the logged model's folder
        artifact = f"{root.rstrip('/')}/artifacts/{GENERATOR_FILE}"
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=artifact, dst_path=str(download_dir), tracking_uri=store
        )
    except MlflowException as exc:
        raise RegistryError(
            f"model {uri!r} (version {version}): no {GENERATOR_FILE} artifact ({exc.message})"
        ) from None
    path = Path(local)
    return ModelSource(uri, name, version, path, file_sha256(path))


def registry_uri(tracking_uri: str | None) -> str:
    """The MLflow store to read: ``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else the project's SQLite store.

    The project's store (``runs/mlflow.db``, see :func:`components.tracking.default_tracking_uri`) must exist: a
    read never creates an empty one.
    """
    from components.tracking import default_tracking_uri, project_runs_dir

    if tracking_uri:
        return tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if not (project_runs_dir() / "mlflow.db").is_file():
        raise RegistryError(
            f"no MLflow store at {project_runs_dir() / 'mlflow.db'} (no local run yet); "
            "pass --tracking-uri or set MLFLOW_TRACKING_URI"
        )
    return default_tracking_uri()


def _registered_version(uri: str, store: str) -> tuple[Any, str, str]:
    """``(client, name, version)`` of ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` in the registry ``store``."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    spec = uri[len(MODELS_SCHEME) :]
    name, at, alias = spec.partition("@")
    version = ""
    if not at:
        name, _, version = spec.rpartition("/")
    if not name or not (alias if at else version.isdigit()):
        raise ConfigError(f"model URI {uri!r}: use models:/NAME@ALIAS or models:/NAME/VERSION")
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    try:
        found = client.get_model_version_by_alias(name, alias) if at else client.get_model_version(name, version)
    except MlflowException as exc:
        raise RegistryError(f"model {uri!r} not found in the registry at {store} ({exc.message})") from None
    return client, name, str(found.version)


def _training_config(meta: dict[str, Any], source: ModelSource) -> Config:
    """The resolved config the generator was trained with (lesion classes, window), stored in ``generator.pt``."""
    if not meta.get("config"):
        raise DataError(f"{source.path}: the generator file carries no training config; re-export it with train")
    return Config.from_json(meta["config"])


def chunk_seed(seed: int, chunk: int) -> int:
    """The latent seed of candidate chunk ``chunk`` of an export with ``seed``."""
    return int.from_bytes(hashlib.sha256(f"sample|{seed}|{chunk}".encode()).digest()[:7], "big")


def draw_pairs(generator: Any, label: int, lesion: bool, n: int, seed: int) -> Iterator[tuple[int, Any, Any]]:
    """Yield ``(draw, image, mask)`` for ``n`` pairs of class index ``label``, in draw order.

    Candidates come :data:`DRAW_CHUNK` at a time (the full chunk whatever ``n``, so a sample does not depend on how
    many were asked for); for a ``lesion`` class those with an empty mask are skipped. After
    ``MAX_DRAW_FACTOR * n`` candidates without ``n`` usable ones the model is refused with a :class:`DataError`.
    """
    kept, limit = 0, MAX_DRAW_FACTOR * n
    for draw in range(limit):
        chunk, position = divmod(draw, DRAW_CHUNK)
        if position == 0:
            images, masks = generate(generator, np.full(DRAW_CHUNK, label), seed=chunk_seed(seed, chunk))
        if lesion and not masks[position].any():
            continue
        yield draw, images[position], masks[position]
        kept += 1
        if kept == n:
            return
    raise DataError(
        f"only {kept} of {limit} candidates of this lesion class had a non-empty lesion mask, {n} were asked for: "
        "the model does not draw lesions for this class (train it longer, or choose another version)"
    )


def synthetic_dataset(
    stored: np.ndarray, window: ExportWindow, source: ModelSource, patient_id: str, index: int, cls: str
) -> Dataset:
    """A Secondary Capture data set of one synthetic image (``stored``: uint16 in 0..:data:`STORED_MAX`).

    Fresh UIDs, the synthetic markers and no PHI; see the module docstring for the choices.
    """
    now = dt.datetime.now(dt.timezone.utc)
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    statement = (
        f"SYNTHETIC - generated by medgan-ops model {source.title} (generator sha256 {source.sha256[:16]}), "
        f"class {cls}. Not an image of a patient; not for diagnosis."
    )

    ds = Dataset()
    ds.ensure_file_meta()  # dcmwrite(enforce_file_format=True) fills in the rest from the data set
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceCreationDate = ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.InstanceCreationTime = ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
    ds.TimezoneOffsetFromUTC = "+0000"
    # Type 2 attributes of the patient and study modules: present, empty.
    ds.AccessionNumber = ds.ReferringPhysicianName = ds.StudyID = ""
    ds.PatientBirthDate = ds.PatientSex = ds.PatientOrientation = ""
    ds.PatientName = "SYNTHETIC"
    ds.PatientID = patient_id
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "No patient: synthetic image generated by medgan-ops"
    ds.Modality = "OT"
    ds.ConversionType = "SYN"
    ds.Manufacturer = "medgan-ops"
    ds.SoftwareVersions = VERSION
    ds.StudyDescription = "SYNTHETIC (medgan-ops)"
    ds.SeriesDescription = f"SYNTHETIC {cls} - {source.title}"[:64]
    ds.ImageComments = statement
    ds.DerivationDescription = statement
    ds.BurnedInAnnotation = "NO"
    ds.RecognizableVisualFeatures = "NO"
    ds.LossyImageCompression = "00"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    slope = window.width / STORED_MAX
    ds.RescaleIntercept = format_number_as_ds(window.lo)
    ds.RescaleSlope = format_number_as_ds(slope)
    ds.RescaleType = "US"
    ds.WindowCenter = format_number_as_ds(window.lo + window.width / 2)
    ds.WindowWidth = format_number_as_ds(window.width)
    ds.WindowCenterWidthExplanation = window.explanation
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    return ds


def preview(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 RGB: the image (in [-1, 1]) next to the image with ``mask`` overlaid in red."""
    grey = np.clip((image.astype(np.float64) + 1.0) * 127.5, 0, 255)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    overlay = rgb.copy()
    lesion = mask.astype(bool)
    overlay[lesion] = (1 - _OVERLAY_ALPHA) * overlay[lesion] + _OVERLAY_ALPHA * _OVERLAY_RGB
    gap = np.zeros((image.shape[0], 2, 3))
    return np.rint(np.concatenate([rgb, gap, overlay], axis=1)).astype(np.uint8)


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    path.write_bytes(buf.getvalue().encode("utf-8"))


@contextmanager
def _building(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out``, moved onto it (an absent or empty folder) when the block completes."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            out.rmdir()  # checked empty by the caller; fails rather than replaces if something appeared since
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
