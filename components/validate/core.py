"""Data validation with great-expectations suites: the dataset archive, and the patient-level split.

The archive suite (:func:`validate`) checks three batches: the manifest (one row per image, with its statistics and
the shape and dtype of the memory-mapped arrays it points into), a per-class table, and, when the MLflow registry
holds a ``champion`` model, the class fractions next to those of the champion's data (drift). The split suite
(:func:`check_split`, run by the rebalance stage) checks that no patient appears in two splits, and that every class
has ``validate.min_patients_per_class`` patients or more in each split (its severity is
``validate.patients_per_class_severity``).

Every expectation carries a severity in its ``meta``: a failed ``critical`` expectation stops the pipeline with a
short summary, a failed ``warning`` is logged and shown in the report. Thresholds come from ``ValidateConfig``.
Each suite writes Data Docs HTML to ``out_dir/data_docs`` and a machine-readable ``validation.json`` beside it,
both logged to MLflow, before it raises.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.archive import MANIFEST_COLUMNS, Archive, open_archive
from components.config import Config
from components.errors import ValidationFailed

CRITICAL, WARNING = "critical", "warning"
SPLITS = ("train", "val", "test")
DISTRIBUTION_ARTIFACT = "rebalance/distribution.json"

# Columns the archive suite adds to the manifest batch (see :func:`manifest_batch`).
DERIVED_COLUMNS = ["lesion_mask_ok", "img_rows", "img_cols", "mask_rows", "mask_cols", "img_dtype", "mask_dtype"]

MIN_ORIGINAL_SIZE = 16  # pixels a side of the original DICOM image, below which it is no usable slice
MIN_IMAGE_STD = 1e-3  # an image's standard deviation below this: an almost constant image (a warning)

# How a failure message names an offending row of each batch: the columns great-expectations returns with each
# unexpected row (those the batch has), the full name, and the short one used in lists of rows sharing a value.
ROW_NAMES: dict[str, tuple[tuple[str, ...], str, str]] = {
    "manifest": (("source_file", "label"), "{source_file} ({label})", "{source_file}"),
    "classes": (("label",), "class {label}", "{label}"),
    "schema": (("column",), "column {column}", "{column}"),
    "drift": (("label", "fraction", "champion_fraction"), "class {label}", "{label}"),
    "split": (("sample_id", "patient", "label"), "sample {sample_id} (patient {patient}, {label})", "{sample_id}"),
    "patients": (("patient", "splits"), "patient {patient}", "{patient}"),
    "class_patients": (("split", "label"), "{label} in {split}", "{label} in {split}"),
}
SHOWN = 5  # offending rows (or values) a failure message lists before "and N more"

# Type of each manifest column, checked through the "schema" batch: a manifest written by another tool, or a column
# that silently became strings or floats, fails here.
MANIFEST_TYPES = {
    "sample_id": "str",
    "source_file": "str",
    "content_hash": "str",
    "patient": "str",
    "label": "str",
    "label_idx": "int",
    "orig_rows": "int",
    "orig_cols": "int",
    "img_min": "float",
    "img_max": "float",
    "img_mean": "float",
    "img_std": "float",
    "mask_fraction": "float",
    "mask_binary": "bool",
}


def _has_type(values: pd.Series, kind: str) -> bool:
    from pandas.api import types

    if kind == "str":
        return types.is_string_dtype(values) and bool(values.dropna().map(type).eq(str).all())
    if kind == "int":
        return types.is_integer_dtype(values) and not types.is_bool_dtype(values)
    if kind == "float":
        return types.is_float_dtype(values)
    return types.is_bool_dtype(values)


def schema_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per typed manifest column: its dtype, the expected type, and a readable ``type_error`` or None."""
    rows = []
    for column, kind in MANIFEST_TYPES.items():
        dtype = str(manifest[column].dtype) if column in manifest else "missing"
        ok = column in manifest and _has_type(manifest[column], kind)
        error = None if ok else f"{column} is {dtype}, expected {kind}"
        rows.append({"column": column, "dtype": dtype, "expected": kind, "type_error": error})
    return pd.DataFrame(rows).astype({"type_error": object})


def class_table(manifest: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Images, patients and share of the data per configured class (zero rows included)."""
    rows = []
    for cls in classes:
        sel = manifest[manifest["label"] == cls]
        rows.append(
            {
                "label": cls,
                "n_images": len(sel),
                "n_patients": int(sel["patient"].nunique()),
                "fraction": len(sel) / max(len(manifest), 1),
            }
        )
    return pd.DataFrame(rows)


def manifest_batch(archive: Archive, cfg: Config) -> pd.DataFrame:
    """The manifest plus derived columns: lesion-mask presence and the shape/dtype of the arrays of each row.

    Shapes come from the memory-mapped arrays' headers, so this reads no pixel data whatever the archive size.
    """
    manifest = archive.manifest.copy()
    manifest["lesion_mask_ok"] = ~manifest["label"].isin(cfg.data.lesion_classes) | (manifest["mask_fraction"] > 0)
    n = len(manifest)
    for prefix, array in (("img", archive.images), ("mask", archive.masks)):
        shape = tuple(array.shape[1:])
        rows, cols = shape if len(shape) == 2 else (-1, -1)  # arrays not (N, S, S): every row fails
        manifest[f"{prefix}_rows"] = np.full(n, rows, dtype=np.int64)
        manifest[f"{prefix}_cols"] = np.full(n, cols, dtype=np.int64)
        manifest[f"{prefix}_dtype"] = str(array.dtype)
    return manifest


def build_expectations(cfg: Config, image_size: int | None = None, drift: bool = False) -> dict[str, list[Any]]:
    """The archive suite, per batch name, as great-expectations expectation objects tagged with a severity.

    Every image and mask must be ``image_size`` square (the archive's declared size; ``data.image_size`` if None).
    Each expectation also carries the sentence its failure is reported with (see :func:`tag`).
    """
    import great_expectations.expectations as gxe

    v, d = cfg.validate, cfg.data
    size = int(image_size if image_size is not None else d.image_size)
    in_images = "in {n} of {total} images: {rows}"

    def empty(column: str, why: str = "") -> Any:
        says = f"column {column!r} is empty{why} {in_images}"
        return crit(gxe.ExpectColumnValuesToNotBeNull(column=column), says=says)

    def within(column: str, low: str, high: str, **bounds: float) -> Any:
        return crit(
            gxe.ExpectColumnValuesToBeBetween(column=column, **bounds),
            says=f"column {column!r} outside [{low}, {high}] {in_images}",
            each="{name}: {value:.4g}",
        )

    def array_property(column: str, expected: Any, what: str) -> Any:
        return crit(
            gxe.ExpectColumnValuesToBeInSet(column=column, value_set=[expected]),
            says=f"column {column!r} ({what}) is not {expected}: {{rows}}",
            each="{value} in {count} of {total} images ({names})",
            group=True,
        )

    lesion = ", ".join(d.lesion_classes)
    manifest = [
        crit(
            gxe.ExpectTableColumnsToMatchSet(column_set=[*MANIFEST_COLUMNS, *DERIVED_COLUMNS], exact_match=True),
            says="the manifest's columns are not the archive format's: missing {missing}; unexpected {unexpected}",
        ),
        *[empty(c) for c in ("sample_id", "patient", "label", "content_hash")],
        # NaN statistics mean NaN pixels; the range checks below would skip them as missing values
        *[empty(c, " (NaN: the image has NaN pixels)") for c in ("img_min", "img_max", "img_mean", "img_std")],
        empty("mask_fraction", " (NaN)"),
        configured_classes(d.classes, "image"),
        *[
            within(
                c,
                f"validate.image_min={v.image_min:g}",
                f"validate.image_max={v.image_max:g}",
                min_value=v.image_min,
                max_value=v.image_max,
            )
            for c in ("img_min", "img_max")
        ],
        *[
            crit(
                gxe.ExpectColumnValuesToBeBetween(column=c, min_value=MIN_ORIGINAL_SIZE),
                says=f"column {c!r} below the {MIN_ORIGINAL_SIZE}-pixel minimum of an original image {in_images}",
                each="{name}: {value}",
            )
            for c in ("orig_rows", "orig_cols")
        ],
        *[
            array_property(f"{prefix}_{axis}", size, f"{axis} of {array}; the archive's image_size is {size}")
            for prefix, array in (("img", "images.npy"), ("mask", "masks.npy"))
            for axis in ("rows", "cols")
        ],
        array_property("img_dtype", "float32", "dtype of images.npy"),
        array_property("mask_dtype", "uint8", "dtype of masks.npy"),
        crit(
            gxe.ExpectColumnValuesToBeInSet(column="mask_binary", value_set=[True]),
            says=f"column 'mask_binary': the mask has values other than 0 and 1 {in_images}",
            each="{name}",
        ),
        crit(
            gxe.ExpectColumnValuesToBeInSet(column="lesion_mask_ok", value_set=[True]),
            says=f"column 'lesion_mask_ok': an image of a lesion class (data.lesion_classes={lesion}) has an empty "
            f"mask {in_images}",
            each="{name}",
        ),
        crit(
            gxe.ExpectColumnValuesToBeUnique(column="content_hash"),
            says="column 'content_hash': {n} images are duplicates (same pixels and mask): {rows}",
            each="{names} share content_hash {value:.12}",
            group=True,
        ),
        crit(
            gxe.ExpectColumnUniqueValueCountToBeBetween(column="patient", min_value=v.min_patients),
            says=f"column 'patient' has {{observed}} distinct patients, fewer than "
            f"validate.min_patients={v.min_patients}",
        ),
        warn(
            gxe.ExpectColumnValuesToBeBetween(column="mask_fraction", min_value=0.0, max_value=v.max_mask_fraction),
            says=f"column 'mask_fraction' above validate.max_mask_fraction={v.max_mask_fraction:g} {in_images}",
            each="{name}: {value:.3g}",
        ),
        warn(
            gxe.ExpectColumnValuesToBeBetween(column="img_std", min_value=MIN_IMAGE_STD),
            says=f"column 'img_std' below {MIN_IMAGE_STD:g} (an almost constant image) {in_images}",
            each="{name}: {value:.3g}",
        ),
    ]
    classes = [
        crit(
            gxe.ExpectColumnValuesToBeBetween(column="n_images", min_value=v.min_images_per_class),
            says=f"{{rows}}, fewer than validate.min_images_per_class={v.min_images_per_class}",
            each="class {label} has {value} image{s}",
        ),
        warn(
            gxe.ExpectColumnValuesToBeBetween(column="fraction", min_value=v.warn_min_class_fraction),
            says=f"{{rows}}, less than validate.warn_min_class_fraction={v.warn_min_class_fraction:g}",
            each="class {label} is {value:.1%} of the images",
        ),
    ]
    types = gxe.ExpectColumnValuesToBeNull(column="type_error")
    schema = [crit(types, says="manifest column types: {rows}", each="{value}")]
    suite = {"manifest": manifest, "schema": schema, "classes": classes}
    if drift:
        suite["drift"] = [
            warn(
                gxe.ExpectColumnValuesToBeBetween(column="abs_diff", max_value=v.max_class_drift),
                says=f"{{rows}}: moved by more than validate.max_class_drift={v.max_class_drift:g}",
                each="class {label} is {fraction:.1%} of the images, {champion_fraction:.1%} in the champion's data",
            )
        ]
    return suite


def split_expectations(cfg: Config) -> dict[str, list[Any]]:
    """The split suite: one known split per sample, no patient in two splits, enough patients per class and split.

    The first two are critical; the third has the severity ``validate.patients_per_class_severity``. The
    ``patients`` batch (see :func:`patient_split_table`) has one row per patient whose ``leak`` names the splits of
    a patient found in more than one, and is null otherwise; the ``class_patients`` batch (see
    :func:`class_patients_table`) one row per split and class whose ``shortfall`` says what is missing, or is null.
    """
    import great_expectations.expectations as gxe

    v = cfg.validate
    enough = gxe.ExpectColumnValuesToBeNull(column="shortfall")
    enough = (crit if v.patients_per_class_severity == CRITICAL else warn)(enough, says="{rows}", each="{value}")
    other, effect = (WARNING, "only report it") if enough.meta["severity"] == CRITICAL else (CRITICAL, "stop on it")
    enough.meta["hint"] = (
        f"every class needs validate.min_patients_per_class={v.min_patients_per_class} patients in each split: "
        f"add patients of the class, change the split fractions, or set validate.patients_per_class_severity="
        f"{other} to {effect}"
    )
    in_rows = "in {n} of {total} rows of the split table: {rows}"
    return {
        "split": [
            *[
                crit(gxe.ExpectColumnValuesToNotBeNull(column=c), says=f"column {c!r} is empty {in_rows}")
                for c in ("sample_id", "patient", "label", "split")
            ],
            crit(
                gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
                says=f"column 'split' has splits other than {', '.join(SPLITS)}: {{rows}}",
                each="'{value}' in {count} row{s} ({names})",
                group=True,
            ),
            crit(
                gxe.ExpectColumnValuesToBeUnique(column="index"),
                says="column 'index': {n} rows share an archive index with another: {rows}",
                each="{value} in {names}",
                group=True,
            ),
            configured_classes(cfg.data.classes, "row"),
            crit(
                gxe.ExpectColumnValuesToBeBetween(column="weight", min_value=0.0),
                says=f"column 'weight' is negative {in_rows}",
                each="{name}: {value:.4g}",
            ),
        ],
        "patients": [
            crit(
                gxe.ExpectColumnValuesToBeNull(column="leak"),
                says="column 'leak': {rows}; a patient's images must all be in one split",
                each="patient {patient} is in {splits}",
            )
        ],
        "class_patients": [enough],
    }


def configured_classes(classes: list[str], noun: str) -> Any:
    """Critical: every ``label`` is one of ``data.classes``; the failure names each other class and its ``noun``s."""
    import great_expectations.expectations as gxe

    return crit(
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(classes)),
        says=f"column 'label' has classes not in data.classes={','.join(classes)}: {{rows}}",
        each=f"'{{value}}' in {{count}} {noun}{{s}} ({{names}})",
        group=True,
    )


def tag(e: Any, severity: str, says: str | None = None, each: str | None = None, group: bool = False) -> Any:
    """Give an expectation its severity and the sentence that reports its failure (see :func:`failure_message`).

    ``says`` is the sentence, with the fields ``{rows}`` (the offending rows or values, a few of them and how many
    more), ``{n}`` (rows that failed), ``{total}`` (rows checked), ``{observed}`` (the observed value of an
    aggregate expectation), ``{missing}`` and ``{unexpected}`` (columns, for a column-set expectation). ``each``
    names one offending row in ``{rows}``: with ``{name}`` (the row, see ``ROW_NAMES``), ``{value}`` (its value in
    the column), ``{s}`` (plural ending for the value) and the batch's row columns; ``group`` lists each offending
    value once instead, with ``{count}`` (its rows), ``{total}``, ``{names}`` (those rows) and ``{s}`` (for count).
    """
    e.meta = {"severity": severity}
    e.meta.update({k: x for k, x in (("says", says), ("each", each)) if x})
    if group:
        e.meta["group"] = True
    return e


def crit(e: Any, **message: Any) -> Any:
    """Tag an expectation as critical: failing it stops the pipeline. ``message``: see :func:`tag`."""
    return tag(e, CRITICAL, **message)


def warn(e: Any, **message: Any) -> Any:
    """Tag an expectation as a warning: failing it is logged and reported. ``message``: see :func:`tag`."""
    return tag(e, WARNING, **message)


def _run_suite(
    batches: dict[str, pd.DataFrame], expectations: dict[str, list[Any]], project_dir: Path
) -> list[tuple[str, Any]]:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no telemetry from a hospital network
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="file", project_root_dir=str(project_dir))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_or_update_pandas("medgan")
    definitions = []
    for name, items in expectations.items():
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        suite = context.suites.add_or_update(gx.ExpectationSuite(name=f"medgan_{name}", expectations=items))
        definitions.append(
            context.validation_definitions.add_or_update(gx.ValidationDefinition(name=name, data=batch, suite=suite))
        )
    results = []
    for definition in definitions:
        # One checkpoint per batch: each needs its own dataframe as a batch parameter, and its own row-naming columns
        # (only those the batch has: asking for a missing one would fail every expectation of the batch).
        frame = batches[definition.name]
        names = [c for c in ROW_NAMES.get(definition.name, ((),))[0] if c in frame.columns]
        result_format = {"result_format": "SUMMARY", "partial_unexpected_count": 20}
        if names:
            result_format["unexpected_index_column_names"] = names
        checkpoint = context.checkpoints.add_or_update(
            gx.Checkpoint(
                name=f"medgan_{definition.name}",
                validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
                result_format=result_format,
            )
        )
        results.append((definition.name, checkpoint.run(batch_parameters={"dataframe": frame})))
    return results


def run_checks(
    batches: dict[str, pd.DataFrame],
    expectations: dict[str, list[Any]],
    out_dir: str | os.PathLike[str],
    *,
    what: str,
    n_rows: int,
    tracker: Any = None,
    artifact_path: str = "validation",
    metric_prefix: str = "validate",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate ``batches`` against ``expectations``; write Data Docs + ``validation.json``; log; raise on critical.

    ``what`` names the check in the failure summary (e.g. "data validation"); ``n_rows`` is the number of images
    it covered. The Data Docs and the JSON are written (and logged) before raising, so a failed run still explains
    itself. ``extra`` is merged into the summary.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs = out / "data_docs"
    with tempfile.TemporaryDirectory() as tmp:
        runs = _run_suite(batches, expectations, Path(tmp))
        rows = []
        for batch_name, run in runs:
            for vr in run.run_results.values():
                for r in vr.results:
                    conf = r.expectation_config
                    meta, column = conf.meta or {}, conf.kwargs.get("column", "")
                    row = {
                        "batch": batch_name,
                        "expectation": conf.type,
                        "column": column,
                        "severity": meta.get("severity", CRITICAL),
                        "success": bool(r.success),
                        "unexpected_count": int(r.result.get("unexpected_count") or 0),
                        "observed": _short(r.result.get("observed_value")),
                        "examples": [_short(x) for x in (r.result.get("partial_unexpected_list") or [])[:3]],
                        **({"hint": meta["hint"]} if meta.get("hint") else {}),
                    }
                    if not r.success:
                        problem = _exception(r, column, batches[batch_name], batch_name)
                        row["message"] = problem or failure_message(batch_name, column, dict(r.result), meta)
                    rows.append(row)
        if docs.exists():
            shutil.rmtree(docs)
        shutil.copytree(Path(tmp) / "gx" / "uncommitted" / "data_docs" / "local_site", docs)
    failed = [r for r in rows if not r["success"]]
    critical = [r for r in failed if r["severity"] == CRITICAL]
    summary = {
        "success": not critical,
        "n_expectations": len(rows),
        "n_failed_critical": len(critical),
        "n_warnings": len(failed) - len(critical),
        "results": rows,
        **(extra or {}),
        "data_docs": str(docs / "index.html"),
    }
    (out / "validation.json").write_text(json.dumps(summary, indent=2, default=str))
    if tracker is not None:
        tracker.log_metrics(
            {
                f"{metric_prefix}/n_failed_critical": len(critical),
                f"{metric_prefix}/n_warnings": len(failed) - len(critical),
                f"{metric_prefix}/n_expectations": len(rows),
            }
        )
        tracker.log_artifact(docs, f"{artifact_path}/data_docs")
        tracker.log_artifact(out / "validation.json", artifact_path)
    if critical:
        raise ValidationFailed(format_failures(critical, n_rows, what))
    return summary


def validate(
    archive_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], cfg: Config, tracker: Any = None
) -> dict[str, Any]:
    """Validate the archive; write Data Docs and ``validation.json``; raise ``ValidationFailed`` on critical errors.

    Every failure is one sentence naming the column, the offending classes or files and their values, and the config
    key of the threshold (e.g. "class malignant has 4 images, fewer than validate.min_images_per_class=5"): the
    critical ones make the exception's message, the warnings are printed to stderr; both are in ``validation.json``.

    With a tracker, the class fractions are also compared with those of the registry's ``champion`` model
    (a warning when a class moved by more than ``validate.max_class_drift``); the summary's ``drift`` says what
    was compared, or why the check was skipped.
    """
    archive = open_archive(archive_dir)
    manifest = manifest_batch(archive, cfg)
    classes = class_table(manifest, list(cfg.data.classes))
    batches = {"manifest": manifest, "schema": schema_table(archive.manifest), "classes": classes}
    reference, note = champion_class_counts(tracker, cfg.registry.model_name)
    drift: dict[str, Any] = {"status": "skipped", "reason": note}
    if reference is not None:
        batches["drift"] = drift_table(manifest, list(cfg.data.classes), reference)
        tvd = float(batches["drift"]["abs_diff"].sum() / 2)
        drift = {
            "status": "checked",
            "reference": note,
            "max_class_drift": cfg.validate.max_class_drift,
            "total_variation": tvd,
            "classes": batches["drift"].to_dict(orient="records"),
        }
        if tracker is not None:
            tracker.log_metrics({"validate/class_drift_tv": tvd})
    summary = run_checks(
        batches,
        build_expectations(cfg, archive.meta.get("image_size"), drift="drift" in batches),
        out_dir,
        what="data validation",
        n_rows=len(manifest),
        tracker=tracker,
        extra={"drift": drift},
    )
    for r in summary["results"]:  # the critical ones raised above; warnings are said here, and in the report
        if not r["success"]:
            print(f"[validate] warning: [{r['batch']}] {r['message']}", file=sys.stderr)
    return summary


def champion_class_counts(tracker: Any, model_name: str) -> tuple[dict[str, int] | None, str]:
    """Images per class in the data of the registry's ``champion`` model, and a note saying where they came from.

    The counts are those the champion's pipeline run logged at rebalance (``rebalance/distribution.json``), summed
    over its splits: the whole dataset, as the manifest being validated is. Returns ``(None, why)`` when there is
    no tracker, no champion, or the champion's run has no distribution.
    """
    client = getattr(tracker, "client", None)
    if client is None:
        return None, "no MLflow tracking: drift against the champion not checked"
    from mlflow.exceptions import MlflowException

    from components.registry import champion_version

    version = champion_version(client, model_name)
    if version is None:
        return None, f"no champion version of {model_name!r} in the registry yet: drift not checked"
    where = f"champion {model_name!r} version {version.version}"
    if not version.run_id:
        return None, f"{where} has no source run: drift not checked"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(version.run_id, DISTRIBUTION_ARTIFACT, tmp)
            counts = json.loads(Path(path).read_text())["counts"]
    except (MlflowException, OSError, KeyError, ValueError) as exc:
        return None, f"{where}: run {version.run_id} has no usable {DISTRIBUTION_ARTIFACT} ({type(exc).__name__})"
    total: dict[str, int] = {}
    for split_counts in counts.values():
        for cls, n in split_counts.items():
            total[cls] = total.get(cls, 0) + int(n)
    if sum(total.values()) == 0:
        return None, f"{where}: its class distribution is empty: drift not checked"
    return total, f"{where} (run {version.run_id}, {sum(total.values())} images)"


def drift_table(manifest: pd.DataFrame, classes: list[str], reference: dict[str, int]) -> pd.DataFrame:
    """Per class (configured ones first, then any only the reference has): both fractions and their difference."""
    labels = [*classes, *sorted(c for c in reference if c not in classes)]
    counts = manifest["label"].value_counts()
    n, n_ref = max(len(manifest), 1), max(sum(reference.values()), 1)
    table = pd.DataFrame(
        {
            "label": labels,
            "fraction": [float(counts.get(c, 0)) / n for c in labels],
            "champion_fraction": [reference.get(c, 0) / n_ref for c in labels],
        }
    )
    table["abs_diff"] = (table["fraction"] - table["champion_fraction"]).abs()
    return table


def patient_split_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per patient: the splits their images are in, how many, and ``leak`` ("<patient> in a+b") or None."""
    splits = table.groupby("patient", sort=True)["split"].agg(lambda s: "+".join(sorted(set(s.dropna()))))
    out = pd.DataFrame({"patient": splits.index, "splits": splits.to_numpy()})
    out["n_splits"] = table.groupby("patient", sort=True)["split"].nunique().to_numpy().astype(np.int64)
    leaking = out["n_splits"] > 1
    out["leak"] = None
    out.loc[leaking, "leak"] = out.loc[leaking, "patient"] + " in " + out.loc[leaking, "splits"]
    return out.astype({"leak": object})


def class_patients_table(table: pd.DataFrame, classes: list[str], minimum: int) -> pd.DataFrame:
    """One row per split and class (zero counts included): its number of patients and its ``shortfall``.

    ``shortfall`` reads "<class>: <n> patient(s) in <split>, below validate.min_patients_per_class=<minimum>" when
    the class has fewer than ``minimum`` patients there, and is None otherwise.
    """
    rows = []
    for split in SPLITS:
        in_split = table[table["split"] == split]
        for cls in classes:
            n = int(in_split.loc[in_split["label"] == cls, "patient"].nunique())
            patients = f"{n} patient{'' if n == 1 else 's'}"
            short = f"{cls}: {patients} in {split}, below validate.min_patients_per_class={minimum}"
            rows.append({"split": split, "label": cls, "n_patients": n, "shortfall": short if n < minimum else None})
    return pd.DataFrame(rows).astype({"shortfall": object})


def check_split(
    table: pd.DataFrame, out_dir: str | os.PathLike[str], cfg: Config, tracker: Any = None
) -> dict[str, Any]:
    """Validate a split table (rebalance's ``split.parquet`` columns): raise ``ValidationFailed`` on a patient leak.

    A class with fewer than ``validate.min_patients_per_class`` patients in a split raises too when
    ``validate.patients_per_class_severity`` is critical, and is a warning otherwise. Data Docs and
    ``validation.json`` go to ``out_dir`` and to the MLflow artifacts under ``validation/split``. The summary's
    ``patients_per_class`` holds the minimum, the severity, the patients per split and class, and one readable line
    per shortfall.
    """
    v = cfg.validate
    per_class = class_patients_table(table, list(cfg.data.classes), v.min_patients_per_class)
    counts = {s: {c: 0 for c in cfg.data.classes} for s in SPLITS}
    for row in per_class.itertuples():
        counts[row.split][row.label] = row.n_patients
    return run_checks(
        {"split": table, "patients": patient_split_table(table), "class_patients": per_class},
        split_expectations(cfg),
        out_dir,
        what="split validation",
        n_rows=len(table),
        tracker=tracker,
        artifact_path="validation/split",
        metric_prefix="validate/split",
        extra={
            "patients_per_class": {
                "min_patients_per_class": v.min_patients_per_class,
                "severity": v.patients_per_class_severity,
                "counts": counts,
                "shortfalls": per_class["shortfall"].dropna().tolist(),
            }
        },
    )


def format_failures(failed: list[dict[str, Any]], n_rows: int, what: str = "data validation") -> str:
    """A short readable summary: one line per failed expectation, naming its batch, column and offending values."""
    lines = [f"{what} failed: {len(failed)} critical expectation(s) not met ({n_rows} images)"]
    for r in failed:
        lines.append(f"  - [{r['batch']}] {r.get('message') or _generic(r)}")
        if r.get("hint"):
            lines.append(f"    {r['hint']}")
    return "\n".join(lines)


def failure_message(batch: str, column: str, result: dict[str, Any], meta: dict[str, Any]) -> str:
    """The sentence of a failed expectation: its result told through the ``says``/``each`` of its ``meta``.

    The offending rows are named by the batch's columns in ``ROW_NAMES``: a few of them, then how many more.
    """
    n = int(result.get("unexpected_count") or 0)
    mismatched = (result.get("details") or {}).get("mismatched") or {}
    fields = {
        "n": n,
        "total": result.get("element_count"),
        "observed": _short(result.get("observed_value")),
        "missing": ", ".join(map(str, mismatched.get("missing") or [])) or "none",
        "unexpected": ", ".join(map(str, mismatched.get("unexpected") or [])) or "none",
    }
    fields["rows"] = _offenders(batch, column, result, meta, fields["total"])
    says = meta.get("says")
    if not says:
        return _generic({"column": column, "unexpected_count": n, "observed": fields["observed"], "examples": []})
    return says.format(**fields)


def _offenders(batch: str, column: str, result: dict[str, Any], meta: dict[str, Any], total: Any) -> str:
    """A few offending rows (or values, with ``group``) of a map expectation, then "and N more" rows."""
    n = int(result.get("unexpected_count") or 0)
    rows = result.get("partial_unexpected_index_list")
    if rows is None:  # no row-naming columns: the values alone
        rows = [{column: x} for x in result.get("partial_unexpected_list") or []]
    rows = [{k: _plain(x) for k, x in row.items()} for row in rows]
    each = meta.get("each", "{name}")
    if not meta.get("group"):
        items = [
            _fill(
                each,
                {
                    **row,
                    "name": _row_name(batch, row, column),
                    "value": row.get(column),
                    "s": "" if row.get(column) == 1 else "s",
                },
            )
            for row in rows[:SHOWN]
        ]
        return _listing(items, n - len(items))
    counts = result.get("partial_unexpected_counts")
    if not counts or "error" in counts[0]:  # unhashable values: counted from the rows at hand
        counts = [{"value": x, "count": c} for x, c in Counter(row.get(column) for row in rows).most_common()]
    items, listed = [], 0
    for entry in counts[:SHOWN]:
        value, count = _plain(entry["value"]), int(entry["count"])
        names = [_row_name(batch, row, column, short=True) for row in rows if row.get(column) == value][:SHOWN]
        fields = {"value": value, "count": count, "total": total, "s": "" if count == 1 else "s"}
        items.append(_fill(each, {**fields, "names": _listing(names, count - len(names))}))
        listed += count
    return _listing(items, n - listed)


def _row_name(batch: str, row: dict[str, Any], column: str, short: bool = False) -> str:
    """The row as ``ROW_NAMES`` names it in its batch, or its value when the batch has no naming columns."""
    _, full, brief = ROW_NAMES.get(batch, ((), "", ""))
    template = brief if short else full
    try:
        return template.format(**row) if template else str(row.get(column))
    except KeyError:  # a naming column the batch lacks
        return str(row.get(column))


def _fill(template: str, fields: dict[str, Any]) -> str:
    """``template`` filled in; with a value its format does not fit (e.g. None for ``{value:.3g}``), name: value."""
    try:
        return template.format(**fields)
    except (KeyError, ValueError, TypeError):
        return f"{fields.get('name', fields.get('names', ''))}: {fields.get('value')}"


def _listing(items: list[str], more: int) -> str:
    """``a, b, c`` and, when ``more`` rows were left out, `` and N more``."""
    return ", ".join(items) + (f" and {more} more" if more > 0 else "")


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (so it formats and compares like one)."""
    return value.item() if isinstance(value, np.generic) else value


def _exception(result: Any, column: str, frame: pd.DataFrame, batch: str) -> str | None:
    """Why an expectation could not be evaluated at all (a missing column, an error in great-expectations), or None."""
    if column and column not in frame.columns:
        return f"column {column!r} is missing from the {batch} table"
    info = result.exception_info or {}
    if "raised_exception" in info:  # one exception for the whole expectation
        info = {"": info}
    for detail in info.values():
        if isinstance(detail, dict) and detail.get("raised_exception"):
            return f"column {column!r} could not be checked: {_short(detail.get('exception_message'))}"
    return None


def _generic(r: dict[str, Any]) -> str:
    """The message of an expectation with no sentence of its own: column, rows affected, observed value, examples."""
    where = f"column {r['column']!r}" if r["column"] else "table"
    count = f": {r['unexpected_count']} row(s) unexpected" if r["unexpected_count"] else ""
    observed = f" (observed {r['observed']})" if r["observed"] not in ("", None) else ""
    examples = f", e.g. {', '.join(map(str, r['examples']))}" if r["examples"] else ""
    return f"{where} failed{count}{observed}{examples}"


def _short(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."
