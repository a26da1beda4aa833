import json

import pandas as pd
import pytest

from components.config import resolve
from components.errors import ValidationFailed
from components.validate.core import validate

LABELS = ["normal"] * 8 + ["benign"] * 4 + ["malignant"] * 3
PATIENTS = [f"p{i % 5}" for i in range(len(LABELS))]


def test_clean_archive_passes_and_writes_data_docs(synthetic_archive, tmp_path):
    summary = validate(synthetic_archive(LABELS, PATIENTS), tmp_path / "v", resolve("tiny"))
    assert summary["success"] and summary["n_failed_critical"] == 0
    assert (tmp_path / "v" / "data_docs" / "index.html").is_file()
    saved = json.loads((tmp_path / "v" / "validation.json").read_text())
    assert saved["n_expectations"] == summary["n_expectations"] >= 15


def _fails(archive, tmp_path, cfg):
    with pytest.raises(ValidationFailed) as info:
        validate(archive, tmp_path / "v", cfg)
    # a failed validation still leaves its Data Docs and JSON behind, to read
    assert (tmp_path / "v" / "data_docs" / "index.html").is_file()
    return str(info.value)


def test_too_few_images_of_a_class_stops_with_summary(synthetic_archive, tmp_path):
    message = _fails(
        synthetic_archive(LABELS, PATIENTS), tmp_path, resolve("tiny", ["validate.min_images_per_class=4"])
    )
    assert "[classes] class malignant has 3 images, fewer than validate.min_images_per_class=4" in message


def test_lesion_class_without_mask_is_critical(synthetic_archive, tmp_path):
    archive = synthetic_archive(LABELS, PATIENTS, masked=("benign",))
    message = _fails(archive, tmp_path, resolve("tiny"))
    assert "column 'lesion_mask_ok'" in message
    assert "has an empty mask in 3 of 15 images: f12.dcm (malignant), f13.dcm (malignant)" in message


def test_duplicate_content_is_critical(synthetic_archive, tmp_path):
    archive = synthetic_archive(LABELS, PATIENTS)
    manifest = pd.read_parquet(archive / "manifest.parquet")
    manifest.loc[1, "content_hash"] = manifest.loc[0, "content_hash"]
    manifest.to_parquet(archive / "manifest.parquet", index=False)
    message = _fails(archive, tmp_path, resolve("tiny"))
    assert "column 'content_hash': 2 images are duplicates (same pixels and mask): f0.dcm, f1.dcm share" in message


def test_class_missing_from_config_is_critical(synthetic_archive, tmp_path):
    cfg = resolve("tiny", ["data.classes=normal,benign", "data.lesion_classes=benign"])
    message = _fails(synthetic_archive(LABELS, PATIENTS), tmp_path, cfg)
    assert "column 'label' has classes not in data.classes=normal,benign: 'malignant' in 3 images" in message


def test_rare_class_share_is_only_a_warning(synthetic_archive, tmp_path):
    summary = validate(
        synthetic_archive(LABELS, PATIENTS), tmp_path / "v", resolve("tiny", ["validate.warn_min_class_fraction=0.25"])
    )
    assert summary["success"] and summary["n_warnings"] == 1
