"""Every failure of the validation suites names its column, the offending classes/files/patients and values, and
the config key of its threshold: one case per expectation, on data broken in the test (issue 16)."""

import json

import numpy as np
import pandas as pd
import pytest

from components.config import resolve
from components.errors import ValidationFailed
from components.validate.core import build_expectations, check_split, drift_table, run_checks, validate
from pipeline.cli import main

LABELS = ["normal"] * 8 + ["benign"] * 4 + ["malignant"] * 3  # files f0..f14.dcm, in this order
PATIENTS = [f"p{i % 5}" for i in range(len(LABELS))]


def _set(**cells):
    """A manifest edit: ``column=[(row, value), ...]``."""

    def edit(manifest):
        for column, changes in cells.items():
            for row, value in changes:
                manifest.loc[row, column] = value

    return edit


def _duplicate(manifest):
    manifest.loc[[1, 5], "content_hash"] = manifest.loc[0, "content_hash"]


def _int64_masks_of_another_size(archive):
    np.save(archive / "masks.npy", np.zeros((len(LABELS), 8, 8), np.int64))


def _misspelt_column(manifest):
    manifest["Modality"] = manifest.pop("modality")


def _hash(archive):
    return pd.read_parquet(archive / "manifest.parquet").loc[0, "content_hash"][:12]


# (id, config overrides, manifest edit, archive edit, severity, expected message with {hash} = f0.dcm's content_hash)
ARCHIVE_CASES = [
    (
        "too-few-images-of-a-class",
        ["validate.min_images_per_class=5"],
        None,
        None,
        "critical",
        "[classes] class benign has 4 images, class malignant has 3 images, fewer than validate.min_images_per_class=5",
    ),
    (
        "too-few-patients",
        ["validate.min_patients=6"],
        None,
        None,
        "critical",
        "[manifest] column 'patient' has 5 distinct patients, fewer than validate.min_patients=6",
    ),
    (
        "empty-patient",
        [],
        _set(patient=[(3, None)]),
        None,
        "critical",
        "[manifest] column 'patient' is empty in 1 of 15 images: f3.dcm (normal)",
    ),
    (
        "nan-statistics",
        [],
        _set(img_max=[(2, np.nan)], img_mean=[(2, np.nan)]),
        None,
        "critical",
        [
            "[manifest] column 'img_max' is empty (NaN: the image has NaN pixels) in 1 of 15 images: f2.dcm (normal)",
            "[manifest] column 'img_mean' is empty (NaN: the image has NaN pixels) in 1 of 15 images: f2.dcm (normal)",
        ],
    ),
    (
        "class-not-configured",
        ["data.classes=normal,benign", "data.lesion_classes=benign"],
        None,
        None,
        "critical",
        "[manifest] column 'label' has classes not in data.classes=normal,benign: "
        "'malignant' in 3 images (f12.dcm, f13.dcm, f14.dcm)",
    ),
    (
        "intensity-out-of-range",
        [],
        _set(img_min=[(4, -1.5), (9, -2.25)]),
        None,
        "critical",
        "[manifest] column 'img_min' outside [validate.image_min=-1, validate.image_max=1] in 2 of 15 images: "
        "f4.dcm (normal): -1.5, f9.dcm (benign): -2.25",
    ),
    (
        "original-too-small",
        [],
        _set(orig_cols=[(6, 8)]),
        None,
        "critical",
        "[manifest] column 'orig_cols' below the 16-pixel minimum of an original image in 1 of 15 images: "
        "f6.dcm (normal): 8",
    ),
    (
        "mask-not-binary",
        [],
        _set(mask_binary=[(7, False)]),
        None,
        "critical",
        "[manifest] column 'mask_binary': the mask has values other than 0 and 1 in 1 of 15 images: f7.dcm (normal)",
    ),
    (
        "duplicate-content",
        [],
        _duplicate,
        None,
        "critical",
        "[manifest] column 'content_hash': 3 images are duplicates (same pixels and mask): "
        "f0.dcm, f1.dcm, f5.dcm share content_hash {hash}",
    ),
    (
        "wrong-column-type",
        [],
        lambda m: m.__setitem__("orig_rows", m["orig_rows"].astype(float)),
        None,
        "critical",
        "[schema] manifest column types: orig_rows is float64, expected int",
    ),
    (
        "columns-not-the-format",
        [],
        _misspelt_column,
        None,
        "critical",
        "[manifest] the manifest's columns are not the archive format's: missing modality; unexpected Modality",
    ),
    (
        "mask-array-shape-and-dtype",
        [],
        None,
        _int64_masks_of_another_size,
        "critical",
        [
            f"[manifest] column 'mask_{axis}' ({axis} of masks.npy; the archive's image_size is 16) is not 16: "
            "8 in 15 of 15 images (f0.dcm, f1.dcm, f2.dcm, f3.dcm, f4.dcm and 10 more)"
            for axis in ("rows", "cols")
        ]
        + [
            "[manifest] column 'mask_dtype' (dtype of masks.npy) is not uint8: "
            "int64 in 15 of 15 images (f0.dcm, f1.dcm, f2.dcm, f3.dcm, f4.dcm and 10 more)"
        ],
    ),
    (
        "mask-too-large",
        [],
        _set(mask_fraction=[(9, 0.75)]),
        None,
        "warning",
        "[manifest] column 'mask_fraction' above validate.max_mask_fraction=0.5 in 1 of 15 images: "
        "f9.dcm (benign): 0.75",
    ),
    (
        "constant-image",
        [],
        _set(img_std=[(10, 0.0)]),
        None,
        "warning",
        "[manifest] column 'img_std' below 0.001 (an almost constant image) in 1 of 15 images: f10.dcm (benign): 0",
    ),
    (
        "rare-class-share",
        ["validate.warn_min_class_fraction=0.25"],
        None,
        None,
        "warning",
        "[classes] class malignant is 20.0% of the images, less than validate.warn_min_class_fraction=0.25",
    ),
]


def _failures(out):
    """(severity, "[batch] message") of every failed expectation, as validation.json records them."""
    results = json.loads((out / "validation.json").read_text())["results"]
    return [(r["severity"], f"[{r['batch']}] {r['message']}") for r in results if not r["success"]]


@pytest.mark.parametrize(
    ("overrides", "edit_manifest", "edit_archive", "severity", "expected"),
    [case[1:] for case in ARCHIVE_CASES],
    ids=[case[0] for case in ARCHIVE_CASES],
)
def test_archive_failure_names_column_rows_values_and_setting(
    synthetic_archive, tmp_path, capsys, overrides, edit_manifest, edit_archive, severity, expected
):
    archive = synthetic_archive(LABELS, PATIENTS)
    if edit_manifest:
        manifest = pd.read_parquet(archive / "manifest.parquet")
        edit_manifest(manifest)
        manifest.to_parquet(archive / "manifest.parquet", index=False)
    if edit_archive:
        edit_archive(archive)
    expected = [line.format(hash=_hash(archive)) for line in ([expected] if isinstance(expected, str) else expected)]
    cfg, out = resolve("tiny", overrides), tmp_path / "v"
    if severity == "critical":
        with pytest.raises(ValidationFailed) as info:
            validate(archive, out, cfg)
        assert str(info.value).splitlines() == [
            f"data validation failed: {len(expected)} critical expectation(s) not met (15 images)",
            *[f"  - {line}" for line in expected],
        ]
    else:
        assert validate(archive, out, cfg)["success"]
        assert capsys.readouterr().err.splitlines()[-len(expected) :] == [f"[validate] warning: {x}" for x in expected]
    assert _failures(out) == [(severity, line) for line in expected]


def test_the_issue_example_reads_as_asked(synthetic_archive, tmp_path):
    labels = ["normal"] * 8 + ["benign"] * 5 + ["malignant"] * 4
    archive = synthetic_archive(labels, [f"p{i % 5}" for i in range(len(labels))])
    issue = "class malignant has 4 images, fewer than validate.min_images_per_class=5"
    with pytest.raises(ValidationFailed, match=issue):
        validate(archive, tmp_path / "v", resolve("tiny", ["validate.min_images_per_class=5"]))


def test_many_offending_rows_are_a_few_names_and_a_count(synthetic_archive, tmp_path):
    archive = synthetic_archive(LABELS, PATIENTS, masked=())  # no lesion image has a mask: seven rows
    with pytest.raises(ValidationFailed) as info:
        validate(archive, tmp_path / "v", resolve("tiny"))
    assert str(info.value).splitlines()[1] == (
        "  - [manifest] column 'lesion_mask_ok': an image of a lesion class (data.lesion_classes=benign, malignant) "
        "has an empty mask in 7 of 15 images: f8.dcm (benign), f9.dcm (benign), f10.dcm (benign), f11.dcm (benign), "
        "f12.dcm (malignant) and 2 more"
    )


def test_class_drift_names_each_class_and_both_shares(tmp_path):
    cfg = resolve("tiny", ["validate.max_class_drift=0.1"])
    manifest = pd.DataFrame({"label": LABELS})
    table = drift_table(manifest, list(cfg.data.classes), {"normal": 12, "benign": 2, "malignant": 1})
    summary = run_checks(
        {"drift": table}, {"drift": build_expectations(cfg, drift=True)["drift"]}, tmp_path, what="drift", n_rows=15
    )
    assert summary["success"]
    assert _failures(tmp_path) == [
        (
            "warning",
            "[drift] class normal is 53.3% of the images, 80.0% in the champion's data, "
            "class benign is 26.7% of the images, 13.3% in the champion's data, "
            "class malignant is 20.0% of the images, 6.7% in the champion's data: "
            "moved by more than validate.max_class_drift=0.1",
        )
    ]


def _split(**columns):
    table = pd.DataFrame(
        {
            "index": np.arange(4),
            "sample_id": ["s0", "s1", "s2", "s3"],
            "patient": ["pa", "pa", "pb", "pc"],
            "label": ["normal", "benign", "normal", "malignant"],
            "split": ["train", "train", "val", "test"],
            "weight": np.ones(4),
        }
    )
    for column, value in columns.items():
        table[column] = value
    return table


SPLIT_CASES = [
    (
        "empty-split",
        {"split": ["train", None, "val", "test"]},
        "[split] column 'split' is empty in 1 of 4 rows of the split table: sample s1 (patient pa, benign)",
    ),
    (
        "unknown-split",
        {"split": ["train", "train", "holdout", "holdout"]},
        "[split] column 'split' has splits other than train, val, test: 'holdout' in 2 rows (s2, s3)",
    ),
    (
        "index-repeated",
        {"index": [0, 1, 1, 3]},
        "[split] column 'index': 2 rows share an archive index with another: 1 in s1, s2",
    ),
    (
        "class-not-configured",
        {"label": ["normal", "benign", "normal", "cyst"]},
        "[split] column 'label' has classes not in data.classes=normal,benign,malignant: 'cyst' in 1 row (s3)",
    ),
    (
        "negative-weight",
        {"weight": [1.0, -0.5, 1.0, 1.0]},
        "[split] column 'weight' is negative in 1 of 4 rows of the split table: sample s1 (patient pa, benign): -0.5",
    ),
    (
        "patient-in-two-splits",
        {"patient": ["pa", "pb", "pb", "pc"]},
        "[patients] column 'leak': patient pb is in train+val; a patient's images must all be in one split",
    ),
]


@pytest.mark.parametrize(
    ("columns", "expected"), [case[1:] for case in SPLIT_CASES], ids=[case[0] for case in SPLIT_CASES]
)
def test_split_failure_names_column_rows_and_values(tmp_path, columns, expected):
    cfg = resolve("tiny", ["validate.min_patients_per_class=0"])
    with pytest.raises(ValidationFailed) as info:
        check_split(_split(**columns), tmp_path, cfg)
    assert str(info.value).splitlines() == [
        "split validation failed: 1 critical expectation(s) not met (4 images)",
        f"  - {expected}",
    ]


def test_the_cli_prints_the_messages_without_a_traceback(synthetic_archive, tmp_path, capsys):
    archive = synthetic_archive(LABELS, PATIENTS)
    argv = ["validate", "--archive", str(archive), "--out", str(tmp_path / "v"), "--preset", "tiny"]
    assert main([*argv, "--set", "validate.min_images_per_class=4"]) == 2
    err = capsys.readouterr().err
    assert "  - [classes] class malignant has 3 images, fewer than validate.min_images_per_class=4" in err
    assert "Traceback" not in err
    assert main([*argv, "--set", "validate.warn_min_class_fraction=0.25"]) == 0
    err = capsys.readouterr().err
    assert "[validate] warning: [classes] class malignant is 20.0% of the images, less than " in err
