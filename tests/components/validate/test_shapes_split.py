"""Shapes, types and NaN statistics in the archive suite; the split suite: patient leaks, patients per class."""

import json

import numpy as np
import pandas as pd
import pytest

from components.config import resolve
from components.errors import ValidationFailed
from components.rebalance.core import rebalance
from components.validate.core import check_split, validate

SPLITS, LESION = ("train", "val", "test"), ("benign", "malignant")
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
    assert "column 'mask_rows' (rows of masks.npy; the archive's image_size is 16) is not 16: 8 in 15 of 15" in message
    assert "column 'mask_dtype' (dtype of masks.npy) is not uint8: int64 in 15 of 15 images" in message
    assert "img_rows" not in message


def test_declared_image_size_is_the_reference(synthetic_archive, tmp_path):
    archive = synthetic_archive(LABELS, PATIENTS)
    meta = json.loads((archive / "archive.json").read_text())
    meta["image_size"] = 32
    (archive / "archive.json").write_text(json.dumps(meta))
    message = _fails(archive, tmp_path)
    assert "column 'img_rows' (rows of images.npy; the archive's image_size is 32) is not 32: 16 in 15 of 15" in message


def test_wrong_column_types_and_nan_statistics_are_critical(synthetic_archive, tmp_path):
    archive = synthetic_archive(LABELS, PATIENTS)
    manifest = pd.read_parquet(archive / "manifest.parquet")
    manifest["orig_rows"] = manifest["orig_rows"].astype(float)
    manifest.loc[2, "img_max"] = np.nan  # NaN pixels give NaN statistics; a range check alone would skip them
    manifest.to_parquet(archive / "manifest.parquet", index=False)
    message = _fails(archive, tmp_path)
    assert "[schema] manifest column types: orig_rows is float64, expected int" in message
    assert "column 'img_max' is empty (NaN: the image has NaN pixels) in 1 of 15 images: f2.dcm (normal)" in message


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
        "  - [patients] column 'leak': patient pb is in test+train; a patient's images must all be in one split"
    )
    assert (tmp_path / "check" / "data_docs" / "index.html").is_file()
    saved = json.loads((tmp_path / "check" / "validation.json").read_text())
    assert saved["success"] is False and saved["n_failed_critical"] == 1


def test_unknown_split_name_is_critical(tmp_path):
    with pytest.raises(ValidationFailed, match=r"column 'split' has splits other than train, val, test: 'holdout' in"):
        check_split(_split_table(["pa", "pb"], ["train", "holdout"]), tmp_path / "check", resolve("tiny"))


def _class_split(malignant_in_val):
    """Two patients of every class in every split, except ``malignant_in_val`` malignant patients in val."""
    patients, labels, splits = [], [], []
    for split in SPLITS:
        for cls in ("normal", *LESION):
            for k in range(malignant_in_val if (split, cls) == ("val", "malignant") else 2):
                patients += [f"{split}-{cls}-{k}"] * 2
                labels += [cls, "normal"]  # a lesion patient's other slices are normal
                splits += [split] * 2
    table = _split_table(patients, splits)
    table["label"] = labels
    return table


def test_a_class_with_too_few_patients_in_a_split_is_a_warning_by_default(tmp_path):
    summary = check_split(_class_split(malignant_in_val=1), tmp_path / "check", resolve("tiny"))
    assert summary["success"] and summary["n_warnings"] == 1
    per_class = summary["patients_per_class"]
    assert per_class["shortfalls"] == ["malignant: 1 patient in val, below validate.min_patients_per_class=2"]
    assert per_class["counts"]["val"] == {"normal": 5, "benign": 2, "malignant": 1}  # all patients have normal slices
    assert (per_class["min_patients_per_class"], per_class["severity"]) == (2, "warning")
    (failed,) = [r for r in summary["results"] if not r["success"]]
    assert (failed["batch"], failed["column"], failed["severity"]) == ("class_patients", "shortfall", "warning")
    assert failed["examples"] == per_class["shortfalls"]


def test_a_class_with_too_few_patients_in_a_split_fails_when_configured(tmp_path):
    cfg = resolve("tiny", ["validate.patients_per_class_severity=critical"])
    with pytest.raises(ValidationFailed) as info:
        check_split(_class_split(malignant_in_val=0), tmp_path / "check", cfg)
    assert str(info.value) == (
        "split validation failed: 1 critical expectation(s) not met (32 images)\n"
        "  - [class_patients] malignant: 0 patients in val, below validate.min_patients_per_class=2\n"
        "    every class needs validate.min_patients_per_class=2 patients in each split: add patients of the class, "
        "change the split fractions, or set validate.patients_per_class_severity=warning to only report it"
    )
    assert json.loads((tmp_path / "check" / "validation.json").read_text())["n_failed_critical"] == 1


@pytest.mark.parametrize("severity", ["warning", "critical"])
def test_enough_patients_of_every_class_in_every_split_passes(tmp_path, severity):
    cfg = resolve("tiny", [f"validate.patients_per_class_severity={severity}"])
    summary = check_split(_class_split(malignant_in_val=2), tmp_path / "check", cfg)
    assert summary["success"] and summary["n_warnings"] == 0 and summary["patients_per_class"]["shortfalls"] == []


def test_the_minimum_is_a_setting(tmp_path):
    # asked for three, both lesion classes are short in every split (every patient has normal slices: six normal)
    raised = resolve("tiny", ["validate.min_patients_per_class=3"])
    shortfalls = check_split(_class_split(2), tmp_path / "check", raised)["patients_per_class"]["shortfalls"]
    assert shortfalls == [
        f"{c}: 2 patients in {s}, below validate.min_patients_per_class=3" for s in SPLITS for c in LESION
    ]


def test_rebalance_validates_its_split_before_writing_it(synthetic_archive, tmp_path, capsys):
    summary = rebalance(synthetic_archive(LABELS, PATIENTS), tmp_path / "split", resolve("tiny"))
    # five patients for three classes and three splits: classes short of two patients in a split, printed as warnings
    shortfalls = summary["split_check"].pop("patients_per_class_shortfalls")
    assert summary["split_check"] == {"success": True, "n_expectations": 10, "n_warnings": 1}
    printed = capsys.readouterr().err
    assert shortfalls and all(s.endswith("below validate.min_patients_per_class=2") for s in shortfalls)
    note = "(validate.patients_per_class_severity=critical stops on it)"
    assert printed.count("[rebalance] warning: ") == len(shortfalls) and f"{shortfalls[-1]} {note}" in printed
    assert (tmp_path / "split" / "split_validation" / "data_docs" / "index.html").is_file()
    assert (tmp_path / "split" / "split.parquet").is_file()
