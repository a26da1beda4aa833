"""Shapes, types and NaN statistics in the archive suite; the split suite's patient-leak check."""

import json

import numpy as np
import pandas as pd
import pytest

from components.config import resolve
from components.errors import ValidationFailed
from components.rebalance.core import rebalance
from components.validate.core import check_split, validate

LABELS = ["normal"] * 8 + ["benign"] * 4 + ["malignant"] * 3
PATIENTS = [f"p{i % 5}" for i in range(len(LABELS))]


def _fails(archive, tmp_path, cfg=None):
    with pytest.raises(ValidationFailed) as info:
        validate(archive, tmp_path / "v", cfg or resolve("tiny"))
    return str(info.value)


def test_shape_and_dtype_of_the_arrays_are_checked_against_the_archive_size(synthetic_archive, tmp_path):
    archive = synthetic_archive(LABELS, PATIENTS)
    summary = validate(archive, tmp_path / "ok", resolve("tiny"))
    checked = {(r["batch"], r["column"]) for r in summary["results"]}
    assert {("manifest", c) for c in ("img_rows", "img_cols", "mask_rows", "mask_cols", "img_dtype")} <= checked
    assert ("schema", "type_error") in checked
    # masks stored at another size and as int64: both caught, on every row
    np.save(archive / "masks.npy", np.zeros((len(LABELS), 8, 8), np.int64))
    message = _fails(archive, tmp_path)
    assert "on column 'mask_rows': 15 row(s) unexpected, e.g. 8" in message
    assert "on column 'mask_dtype': 15 row(s) unexpected, e.g. int64" in message
    assert "img_rows" not in message


def test_declared_image_size_is_the_reference(synthetic_archive, tmp_path):
    archive = synthetic_archive(LABELS, PATIENTS)
    meta = json.loads((archive / "archive.json").read_text())
    meta["image_size"] = 32
    (archive / "archive.json").write_text(json.dumps(meta))
    message = _fails(archive, tmp_path)
    assert "on column 'img_rows': 15 row(s) unexpected, e.g. 16" in message


def test_wrong_column_types_and_nan_statistics_are_critical(synthetic_archive, tmp_path):
    archive = synthetic_archive(LABELS, PATIENTS)
    manifest = pd.read_parquet(archive / "manifest.parquet")
    manifest["orig_rows"] = manifest["orig_rows"].astype(float)
    manifest.loc[2, "img_max"] = np.nan  # NaN pixels give NaN statistics; a range check alone would skip them
    manifest.to_parquet(archive / "manifest.parquet", index=False)
    message = _fails(archive, tmp_path)
    assert "[schema] expect_column_values_to_be_null on column 'type_error': 1 row(s) unexpected" in message
    assert "orig_rows is float64, expected int" in message
    assert "expect_column_values_to_not_be_null on column 'img_max': 1 row(s) unexpected" in message


def _split_table(patients, splits):
    n = len(patients)
    return pd.DataFrame(
        {
            "index": np.arange(n),
            "sample_id": [f"s{i:04d}" for i in range(n)],
            "patient": patients,
            "label": ["normal"] * n,
            "split": splits,
            "weight": np.ones(n),
        }
    )


def test_patient_in_two_splits_is_a_critical_failure(tmp_path):
    patients = ["pa", "pa", "pb", "pb", "pc", "pc", "pd"]
    splits = ["train", "train", "train", "test", "val", "val", "train"]
    with pytest.raises(ValidationFailed) as info:
        check_split(_split_table(patients, splits), tmp_path / "check", resolve("tiny"))
    message = str(info.value)
    assert message == (
        "split validation failed: 1 critical expectation(s) not met (7 images)\n"
        "  - [patients] expect_column_values_to_be_null on column 'leak': 1 row(s) unexpected, e.g. pb in test+train"
    )
    assert (tmp_path / "check" / "data_docs" / "index.html").is_file()
    saved = json.loads((tmp_path / "check" / "validation.json").read_text())
    assert saved["success"] is False and saved["n_failed_critical"] == 1


def test_unknown_split_name_is_critical(tmp_path):
    with pytest.raises(ValidationFailed, match=r"column 'split': 1 row\(s\) unexpected, e.g. holdout"):
        check_split(_split_table(["pa", "pb"], ["train", "holdout"]), tmp_path / "check", resolve("tiny"))


def test_rebalance_validates_its_split_before_writing_it(synthetic_archive, tmp_path):
    summary = rebalance(synthetic_archive(LABELS, PATIENTS), tmp_path / "split", resolve("tiny"))
    assert summary["split_check"] == {"success": True, "n_expectations": 9, "n_warnings": 0}
    assert (tmp_path / "split" / "split_validation" / "data_docs" / "index.html").is_file()
    assert (tmp_path / "split" / "split.parquet").is_file()
