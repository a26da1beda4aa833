import csv
import json
import os
import re
import shutil
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from components.archive import MANIFEST_COLUMNS, QUARANTINE_COLUMNS, open_archive
from components.config import resolve
from components.errors import DataError, MedganError
from components.ingest import core, decode
from components.ingest.core import REASONS, hash_patient, ingest
from components.phantom import PHI_TAGS, write_phantom

SALT = "unit-test-salt"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """6 patients x 4 slices at 64 px: 18 normal, 4 benign, 2 malignant images."""
    return write_phantom(
        tmp_path_factory.mktemp("phantom") / "data", seed=5, n_patients=6, slices_per_patient=4, size=64
    )


@pytest.fixture
def data(pristine, tmp_path):
    """A private copy of the phantom that a test may damage."""
    return shutil.copytree(pristine, tmp_path / "data")


@pytest.fixture
def cfg():
    return resolve("tiny")


def labels(root):
    with (root / "labels.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def write_labels(root, rows, columns=("file", "label", "patient_id", "mask_file")):
    with (root / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def append(root, **row):
    write_labels(root, [*labels(root), {"patient_id": "MRN-EXTRA", "mask_file": "", **row}])


def first(root, label):
    return next(r for r in labels(root) if r["label"] == label)


def test_phantom_ingests_into_a_complete_archive(data, cfg, tmp_path):
    summary = ingest(data, tmp_path / "archive", cfg, dataset_version={"rev": "abc123"}, salt=SALT)
    assert summary["n_ok"] == 24 and summary["n_quarantined"] == 0 and summary["quarantined_by_reason"] == {}
    assert summary["counts"] == {"normal": 18, "benign": 4, "malignant": 2}
    archive = open_archive(summary["archive"])
    assert list(archive.manifest.columns) == MANIFEST_COLUMNS
    assert archive.images.shape == archive.masks.shape == (24, 32, 32)
    assert archive.images.dtype == np.float32 and -1 <= archive.images.min() < archive.images.max() <= 1
    assert set(np.unique(archive.masks)) == {0, 1} and archive.manifest["mask_binary"].all()
    lesion = archive.manifest["label"].isin(["benign", "malignant"]).to_numpy()
    assert archive.masks[lesion].reshape(lesion.sum(), -1).any(1).all()
    assert not archive.masks[~lesion].any()
    # rows follow labels.csv order whatever the worker count
    assert archive.manifest["source_file"].tolist() == [r["file"] for r in labels(data)]
    expected_patients = [hash_patient(SALT, r["patient_id"]) for r in labels(data)]
    assert archive.manifest["patient"].tolist() == expected_patients
    assert archive.meta["dataset_version"] == {"rev": "abc123"}
    assert archive.meta["classes"] == cfg.data.classes and archive.meta["lesion_classes"] == cfg.data.lesion_classes
    assert archive.meta["counts"] == summary["counts"] and archive.meta["n_patients"] == 6
    assert archive.meta["window"]["sources"] == {"header": 24}


def test_parallel_workers_write_the_same_archive(data, tmp_path, monkeypatch):
    one = ingest(data, tmp_path / "one", resolve("tiny"), salt=SALT)["archive"]
    monkeypatch.setattr(core, "_POOL_START_S", 0.0)  # small data runs in-process otherwise
    monkeypatch.setattr(core, "_CHUNK", 2)
    monkeypatch.setattr(core.os, "cpu_count", lambda: 2)
    assert core._use_pool(5, 2) and not core._use_pool(1000, 1)
    # This process decodes only while the workers start: slowed down here, it leaves most chunks to them (whose
    # decode is the real one: they import their own copy of the module).
    in_parent = []
    real = core._decode

    def slow(task, cfg):
        in_parent.append(task.rel)
        time.sleep(0.2)
        return real(task, cfg)

    monkeypatch.setattr(core, "_decode", slow)
    two = ingest(data, tmp_path / "two", resolve("tiny", ["ingest.workers=2"]), salt=SALT)["archive"]
    n_files = len(labels(data))
    assert 0 < len(in_parent) < n_files / 2, f"{len(in_parent)} of {n_files} files decoded outside the pool"
    for name in ("images.npy", "masks.npy", "manifest.parquet", "quarantine.csv", "archive.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert one != two


def test_patient_id_falls_back_to_the_header(data, cfg, tmp_path):
    write_labels(data, labels(data), columns=("file", "label", "mask_file"))
    manifest = open_archive(ingest(data, tmp_path / "a", cfg, salt=SALT)["archive"]).manifest
    header_ids = [pydicom.dcmread(data / f, stop_before_pixels=True).PatientID for f in manifest["source_file"]]
    assert manifest["patient"].tolist() == [hash_patient(SALT, i) for i in header_ids]


def test_salt_from_environment_and_missing_salt(data, cfg, tmp_path, monkeypatch):
    monkeypatch.setenv(cfg.ingest.salt_env, "env-salt")
    manifest = open_archive(ingest(data, tmp_path / "a", cfg)["archive"]).manifest
    assert manifest["patient"][0] == hash_patient("env-salt", labels(data)[0]["patient_id"])
    monkeypatch.delenv(cfg.ingest.salt_env)
    with pytest.raises(DataError, match=cfg.ingest.salt_env):
        ingest(data, tmp_path / "b", cfg)


# --- one bad row per case: the rest of the data still ingests, the row is quarantined with its reason ---


def not_dicom(root, tmp_path):
    (root / "notes.dcm").write_text("radiology notes, not an image\n")
    append(root, file="notes.dcm", label="normal")
    return "notes.dcm"


def file_missing(root, tmp_path):
    append(root, file="dicom/nowhere.dcm", label="normal")
    return "dicom/nowhere.dcm"


def unknown_class(root, tmp_path):
    shutil.copy(root / first(root, "normal")["file"], root / "odd.dcm")
    append(root, file="odd.dcm", label="cyst")
    return "odd.dcm"


def outside_file(tmp_path):
    """A valid DICOM outside the data folder (a copy of a phantom slice)."""
    target = tmp_path / "outside.dcm"
    shutil.copy(next((tmp_path / "data" / "dicom").rglob("*.dcm")), target)
    return target


def escape_dotdot(root, tmp_path):
    outside_file(tmp_path)
    append(root, file="../outside.dcm", label="normal")
    return "../outside.dcm"


def escape_symlink(root, tmp_path):
    (root / "dicom" / "link.dcm").symlink_to(outside_file(tmp_path))
    append(root, file="dicom/link.dcm", label="normal")
    return "dicom/link.dcm"


def escape_symlinked_folder(root, tmp_path):
    outside_file(tmp_path)
    (root / "elsewhere").symlink_to(tmp_path, target_is_directory=True)
    append(root, file="elsewhere/outside.dcm", label="normal")
    return "elsewhere/outside.dcm"


def escape_absolute(root, tmp_path):
    path = str(outside_file(tmp_path))
    append(root, file=path, label="normal")
    return path


def mask_escape(root, tmp_path):
    shutil.copy(root / first(root, "normal")["file"], root / "x.dcm")
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(tmp_path / "outside.png")
    append(root, file="x.dcm", label="benign", mask_file="../outside.png")
    return "x.dcm"


def mask_size_mismatch(root, tmp_path):
    shutil.copy(root / first(root, "normal")["file"], root / "x.dcm")
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(root / "small.png")
    append(root, file="x.dcm", label="benign", mask_file="small.png")
    return "x.dcm"


def mask_missing(root, tmp_path):
    shutil.copy(root / first(root, "normal")["file"], root / "x.dcm")
    append(root, file="x.dcm", label="malignant")
    return "x.dcm"


def mask_empty(root, tmp_path):
    shutil.copy(root / first(root, "normal")["file"], root / "x.dcm")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / "empty.png")
    append(root, file="x.dcm", label="benign", mask_file="empty.png")
    return "x.dcm"


def mask_conflict(root, tmp_path):
    row = first(root, "benign")
    shutil.copy(root / row["file"], root / "x.dcm")
    append(root, file="x.dcm", label="normal", mask_file=row["mask_file"])
    return "x.dcm"


def duplicate(root, tmp_path):
    row = first(root, "benign")
    shutil.copy(root / row["file"], root / "copy.dcm")
    append(root, file="copy.dcm", label="benign", mask_file=row["mask_file"])
    return "copy.dcm"


def no_pixel_data(root, tmp_path):
    ds = pydicom.dcmread(root / first(root, "normal")["file"])
    del ds.PixelData
    ds.save_as(root / "header-only.dcm")
    append(root, file="header-only.dcm", label="normal")
    return "header-only.dcm"


def patient_missing(root, tmp_path):
    ds = pydicom.dcmread(root / first(root, "normal")["file"])
    del ds.PatientID
    ds.PixelData = bytes(reversed(ds.PixelData))  # new content, so it is not also a duplicate
    ds.save_as(root / "anon.dcm")
    append(root, file="anon.dcm", label="normal", patient_id="")
    return "anon.dcm"


QUARANTINE_CASES = [
    (not_dicom, "not_dicom"),
    (file_missing, "file_missing"),
    (unknown_class, "unknown_class"),
    (escape_dotdot, "path_escape"),
    (escape_symlink, "path_escape"),
    (escape_symlinked_folder, "path_escape"),
    (escape_absolute, "path_escape"),
    (mask_escape, "path_escape"),
    (mask_size_mismatch, "mask_size_mismatch"),
    (mask_missing, "mask_missing"),
    (mask_empty, "mask_empty"),
    (mask_conflict, "mask_conflict"),
    (duplicate, "duplicate"),
    (no_pixel_data, "no_pixel_data"),
    (patient_missing, "patient_missing"),
]


@pytest.mark.parametrize(("damage", "reason"), QUARANTINE_CASES, ids=[c[0].__name__ for c in QUARANTINE_CASES])
def test_bad_row_is_quarantined_with_its_reason(data, cfg, tmp_path, monkeypatch, damage, reason):
    bad = damage(data, tmp_path)
    opened = []
    real_read = decode.read_frames
    monkeypatch.setattr(
        decode, "read_frames", lambda path, c, **kw: opened.append(str(path)) or real_read(path, c, **kw)
    )

    summary = ingest(data, tmp_path / "archive", cfg, salt=SALT)

    assert reason in REASONS
    assert summary["n_ok"] == 24 and summary["quarantined_by_reason"] == {reason: 1}
    archive = open_archive(summary["archive"])
    quarantine = (tmp_path / "archive" / "quarantine.csv").read_text()
    assert quarantine.splitlines()[0] == ",".join(QUARANTINE_COLUMNS)
    assert f"{reason}," in quarantine and bad in quarantine
    assert archive.meta["quarantined_by_reason"] == {reason: 1}
    if reason == "unknown_class":
        assert "'cyst'" in quarantine
    if reason == "path_escape":  # never opened, not even to look at its header
        assert opened and str(tmp_path / "outside.dcm") not in opened and not any("link" in p for p in opened)


def test_unexpected_error_on_one_file_is_quarantined_not_fatal(data, cfg, tmp_path, monkeypatch):
    bad = first(data, "normal")["file"]
    real_read = decode.read_frames

    def buggy(path, c, **kw):
        if str(path).endswith(bad):
            raise ZeroDivisionError("MRN-SECRET in a message that must not be kept")
        return real_read(path, c, **kw)

    monkeypatch.setattr(decode, "read_frames", buggy)
    summary = ingest(data, tmp_path / "archive", cfg, salt=SALT)
    assert summary["quarantined_by_reason"] == {"internal_error": 1} and summary["n_ok"] == 23
    quarantine = (tmp_path / "archive" / "quarantine.csv").read_text()
    assert "unexpected ZeroDivisionError" in quarantine and "MRN-SECRET" not in quarantine


def test_label_maps_are_binarised_on_request(data, tmp_path):
    row = first(data, "benign")
    labels = (np.asarray(Image.open(data / row["mask_file"])) > 0).astype(np.uint8)
    labels[:4, :4] = 2  # an organ label next to the lesion
    Image.fromarray(labels).save(data / "labelmap.png")
    shutil.copy(data / row["file"], data / "x.dcm")
    append(data, file="x.dcm", label="benign", mask_file="labelmap.png")
    refused = ingest(data, tmp_path / "a", resolve("tiny"), salt=SALT)
    assert refused["quarantined_by_reason"] == {"mask_label_map": 1}
    binarised = ingest(data, tmp_path / "b", resolve("tiny", ["ingest.label_maps=binarise"]), salt=SALT)
    assert binarised["n_ok"] == 25 and binarised["quarantined_by_reason"] == {}
    assert open_archive(binarised["archive"]).meta["label_maps"] == "binarise"


def test_summary_warns_about_unknown_classes_and_unlisted_files(data, cfg, tmp_path, caplog):
    unknown_class(data, tmp_path)
    (data / "dicom" / "stray.dcm").write_bytes(b"left over")
    (data / ".dvc-cache").mkdir()
    (data / ".dvc-cache" / "hidden").write_text("not counted")
    summary = ingest(data, tmp_path / "archive", cfg, salt=SALT)
    assert summary["unknown_classes"] == {"cyst": 1} and summary["label_conflicts"] == 0
    assert summary["n_unlisted"] == 1 and summary["unlisted"] == ["dicom/stray.dcm"]
    assert len(summary["warnings"]) == 2
    logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("'cyst' (1 row)" in m and "data.classes" in m for m in logged)
    assert any("dicom/stray.dcm" in m and "not ingested" in m for m in logged)
    assert open_archive(summary["archive"]).meta["unknown_classes"] == {"cyst": 1}


def test_too_many_bad_rows_fail_without_leaving_an_archive(data, cfg, tmp_path):
    rows = labels(data)
    rows += [{"file": f"dicom/gone{i}.dcm", "label": "normal"} for i in range(6)]
    rows += [{"file": "../../etc/passwd", "label": "normal"}]
    write_labels(data, rows)
    out = tmp_path / "out" / "archive"
    with pytest.raises(DataError) as info:
        ingest(data, out, cfg, salt=SALT)
    message = str(info.value)
    assert "7 of 31 files quarantined (22.6% > 20.0%" in message
    assert "file_missing 6" in message and "path_escape 1" in message and "dicom/gone0.dcm" in message
    assert not out.exists() and list((tmp_path / "out").iterdir()) == []


def test_threshold_is_configurable(data, tmp_path):
    rows = labels(data) + [{"file": f"dicom/gone{i}.dcm", "label": "normal"} for i in range(6)]
    write_labels(data, rows)
    summary = ingest(data, tmp_path / "a", resolve("tiny", ["ingest.max_quarantine_fraction=0.5"]), salt=SALT)
    assert summary["quarantined_by_reason"] == {"file_missing": 6}


def labels_missing(root):
    (root / "labels.csv").unlink()


def labels_empty(root):
    (root / "labels.csv").write_text("")


def labels_header_only(root):
    (root / "labels.csv").write_text("file,label,patient_id,mask_file\n")


def labels_without_label(root):
    (root / "labels.csv").write_text("file,class\ndicom/a.dcm,normal\n")


def test_docs_document_every_reason_code():
    data_md = (Path(__file__).resolve().parents[3] / "docs" / "data.md").read_text()
    section = data_md.split("## Quarantine and reason codes", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE)
    assert sorted(documented) == sorted(REASONS) and len(documented) == len(set(documented))


LABELS_CASES = [
    (labels_missing, "labels.csv not found"),
    (labels_empty, "labels.csv is empty"),
    (labels_header_only, "has a header but no rows"),
    (labels_without_label, "lacks required column(s) label; found columns: file, class"),
]


@pytest.mark.parametrize(("damage", "expected"), LABELS_CASES, ids=[c[0].__name__ for c in LABELS_CASES])
def test_unusable_labels_csv(data, cfg, tmp_path, damage, expected):
    damage(data)
    with pytest.raises(DataError) as info:
        ingest(data, tmp_path / "a", cfg, salt=SALT)
    assert expected in str(info.value)
    assert not (tmp_path / "a").exists()


def test_missing_data_folder(cfg, tmp_path):
    with pytest.raises(DataError, match=r"data folder .*nope does not exist; create a sample with `medgan phantom"):
        ingest(tmp_path / "nope", tmp_path / "a", cfg, salt=SALT)


def test_no_phi_reaches_any_output(data, cfg, tmp_path, capfd, caplog):
    phi = set()
    for path in (data / "dicom").rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        phi |= {str(ds.get(k)) for k in PHI_TAGS if ds.get(k)}
    phi |= {v.replace("^", " ") for v in phi}  # also the way a name would be printed
    assert len(phi) > 20
    not_dicom(data, tmp_path)  # one quarantined row, so the quarantine table has a message too

    summary = ingest(data, tmp_path / "archive", cfg, dataset_version={"tracked": False}, salt=SALT)

    assert summary["n_quarantined"] == 1
    blobs = {p.name: p.read_bytes() for p in (tmp_path / "archive").iterdir()}
    assert set(blobs) == {"images.npy", "masks.npy", "manifest.parquet", "quarantine.csv", "archive.json"}
    blobs["summary"] = json.dumps(summary).encode()
    captured = capfd.readouterr()
    blobs["console"] = (captured.out + captured.err + caplog.text).encode()
    leaks = [(value, name) for value in phi for name, blob in blobs.items() if value.encode() in blob]
    assert leaks == []


def test_multiframe_rows_expand_into_frames_and_grow_the_archive(data, tmp_path):
    rows = labels(data)
    ds = pydicom.dcmread(data / rows[0]["file"])
    one = ds.pixel_array
    ds.NumberOfFrames = 3
    ds.PixelData = np.stack([one, one[::-1], one[:, ::-1]]).tobytes()
    ds.save_as(data / "multi.dcm")
    write_labels(data, [{"file": "multi.dcm", "label": "normal", "patient_id": "p1"}] + rows[:3])
    summary = ingest(data, tmp_path / "a", resolve("tiny"), salt=SALT)
    archive = open_archive(summary["archive"])  # 4 rows, 6 samples: the writer grew past its capacity
    assert summary["n_ok"] == len(archive) == 6
    assert list(archive.manifest["frame"][:3]) == [0, 1, 2] and set(archive.manifest["source_file"][:3]) == {
        "multi.dcm"
    }
    rejected = ingest(
        data,
        tmp_path / "b",
        resolve("tiny", ["ingest.multiframe=reject", "ingest.max_quarantine_fraction=0.5"]),
        salt=SALT,
    )
    assert rejected["quarantined_by_reason"] == {"multiframe": 1} and rejected["n_ok"] == 3


def test_paths_resolve_each_folder_once_and_follow_links_inside(data, tmp_path):
    root = data.resolve()
    some = next((root / "dicom").rglob("*.dcm"))
    (root / "alias.dcm").symlink_to(some)  # a link that stays inside is fine
    (root / "series").symlink_to(some.parent, target_is_directory=True)
    paths = core._Paths(root)
    assert paths.file("alias.dcm") == (some, "file")
    assert paths.file(f"series/{some.name}") == (some, "file")
    assert paths.file(some.relative_to(root).as_posix()) == (some, "file")
    assert paths.file("dicom/nope.dcm") == (root / "dicom" / "nope.dcm", "missing")
    assert paths.file("dicom") == (root / "dicom", "other")  # a folder is not a file
    assert paths.file("../x.dcm")[0] is None and paths.file("/etc/passwd")[0] is None
    assert set(paths.dirs) >= {"series", some.parent.relative_to(root).as_posix()}


def test_a_worker_killed_mid_ingest_is_a_clear_error_and_leaves_no_archive(data, tmp_path, monkeypatch):
    monkeypatch.setattr(core, "_POOL_START_S", 0.0)
    monkeypatch.setattr(core, "_CHUNK", 2)
    monkeypatch.setattr(core.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(core, "_decode", lambda task, cfg: time.sleep(0.5))  # leave the work to the workers
    monkeypatch.setattr(core, "_decode_chunk", _die)
    with pytest.raises(MedganError, match="decoding worker died"):
        ingest(data, tmp_path / "archive", resolve("tiny", ["ingest.workers=2"]), salt=SALT)
    assert not (tmp_path / "archive").exists()


def test_a_pool_found_broken_at_a_hand_over_is_the_same_clear_error(data, tmp_path, monkeypatch):
    """A worker may die before the next chunk is handed over: then ``submit`` itself raises (seen on a loaded CI)."""
    monkeypatch.setattr(core, "_POOL_START_S", 0.0)
    monkeypatch.setattr(core, "_CHUNK", 2)
    monkeypatch.setattr(core.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(core, "_decode", lambda task, cfg: time.sleep(0.5))  # leave the work to the workers
    real_submit = core.ProcessPoolExecutor.submit

    def submit(self, fn, *args, **kwargs):
        if fn is core._decode_chunk:
            raise BrokenProcessPool("A child process terminated abruptly")
        return real_submit(self, fn, *args, **kwargs)

    monkeypatch.setattr(core.ProcessPoolExecutor, "submit", submit)
    with pytest.raises(MedganError, match=r"decoding worker died while reading dicom/\S+ \.\. dicom/"):
        ingest(data, tmp_path / "archive", resolve("tiny", ["ingest.workers=2"]), salt=SALT)
    assert not (tmp_path / "archive").exists()


def _die(tasks):
    os._exit(9)  # what the kernel's OOM killer looks like from the parent: the worker is just gone
