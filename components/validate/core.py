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
import tempfile
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
    """
    import great_expectations.expectations as gxe

    v, d = cfg.validate, cfg.data
    size = [int(image_size if image_size is not None else d.image_size)]

    manifest = [
        crit(gxe.ExpectTableColumnsToMatchSet(column_set=[*MANIFEST_COLUMNS, *DERIVED_COLUMNS], exact_match=True)),
        *[crit(gxe.ExpectColumnValuesToNotBeNull(column=c)) for c in ("sample_id", "patient", "label", "content_hash")],
        # NaN statistics mean NaN pixels; the range checks below would skip them as missing values
        *[
            crit(gxe.ExpectColumnValuesToNotBeNull(column=c))
            for c in ("img_min", "img_max", "img_mean", "img_std", "mask_fraction")
        ],
        crit(gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(d.classes))),
        crit(gxe.ExpectColumnValuesToBeBetween(column="img_min", min_value=v.image_min, max_value=v.image_max)),
        crit(gxe.ExpectColumnValuesToBeBetween(column="img_max", min_value=v.image_min, max_value=v.image_max)),
        crit(gxe.ExpectColumnValuesToBeBetween(column="orig_rows", min_value=16)),
        crit(gxe.ExpectColumnValuesToBeBetween(column="orig_cols", min_value=16)),
        *[crit(gxe.ExpectColumnValuesToBeInSet(column=c, value_set=size)) for c in DERIVED_COLUMNS[1:5]],
        crit(gxe.ExpectColumnValuesToBeInSet(column="img_dtype", value_set=["float32"])),
        crit(gxe.ExpectColumnValuesToBeInSet(column="mask_dtype", value_set=["uint8"])),
        crit(gxe.ExpectColumnValuesToBeInSet(column="mask_binary", value_set=[True])),
        crit(gxe.ExpectColumnValuesToBeInSet(column="lesion_mask_ok", value_set=[True])),
        crit(gxe.ExpectColumnValuesToBeUnique(column="content_hash")),
        crit(gxe.ExpectColumnUniqueValueCountToBeBetween(column="patient", min_value=v.min_patients)),
        warn(gxe.ExpectColumnValuesToBeBetween(column="mask_fraction", min_value=0.0, max_value=v.max_mask_fraction)),
        warn(gxe.ExpectColumnValuesToBeBetween(column="img_std", min_value=1e-3)),
    ]
    classes = [
        crit(gxe.ExpectColumnValuesToBeBetween(column="n_images", min_value=v.min_images_per_class)),
        warn(gxe.ExpectColumnValuesToBeBetween(column="fraction", min_value=v.warn_min_class_fraction)),
    ]
    schema = [crit(gxe.ExpectColumnValuesToBeNull(column="type_error"))]
    suite = {"manifest": manifest, "schema": schema, "classes": classes}
    if drift:
        suite["drift"] = [warn(gxe.ExpectColumnValuesToBeBetween(column="abs_diff", max_value=v.max_class_drift))]
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
    enough = crit(enough) if v.patients_per_class_severity == CRITICAL else warn(enough)
    other, effect = (WARNING, "only report it") if enough.meta["severity"] == CRITICAL else (CRITICAL, "stop on it")
    enough.meta["hint"] = (
        f"every class needs validate.min_patients_per_class={v.min_patients_per_class} patients in each split: "
        f"add patients of the class, change the split fractions, or set validate.patients_per_class_severity="
        f"{other} to {effect}"
    )
    return {
        "split": [
            *[crit(gxe.ExpectColumnValuesToNotBeNull(column=c)) for c in ("sample_id", "patient", "label", "split")],
            crit(gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS))),
            crit(gxe.ExpectColumnValuesToBeUnique(column="index")),
            crit(gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(cfg.data.classes))),
            crit(gxe.ExpectColumnValuesToBeBetween(column="weight", min_value=0.0)),
        ],
        "patients": [crit(gxe.ExpectColumnValuesToBeNull(column="leak"))],
        "class_patients": [enough],
    }


def crit(e: Any) -> Any:
    """Tag an expectation as critical: failing it stops the pipeline."""
    e.meta = {"severity": CRITICAL}
    return e


def warn(e: Any) -> Any:
    """Tag an expectation as a warning: failing it is logged and reported."""
    e.meta = {"severity": WARNING}
    return e


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
        # One checkpoint per batch: each needs its own dataframe as a batch parameter.
        checkpoint = context.checkpoints.add_or_update(
            gx.Checkpoint(
                name=f"medgan_{definition.name}",
                validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
            )
        )
        results.append((definition.name, checkpoint.run(batch_parameters={"dataframe": batches[definition.name]})))
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
                    rows.append(
                        {
                            "batch": batch_name,
                            "expectation": conf.type,
                            "column": conf.kwargs.get("column", ""),
                            "severity": (conf.meta or {}).get("severity", CRITICAL),
                            "success": bool(r.success),
                            "unexpected_count": int(r.result.get("unexpected_count") or 0),
                            "observed": _short(r.result.get("observed_value")),
                            "examples": [_short(x) for x in (r.result.get("partial_unexpected_list") or [])[:3]],
                            **({"hint": conf.meta["hint"]} if (conf.meta or {}).get("hint") else {}),
                        }
                    )
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
    """A short readable summary: which expectations failed and on how many rows."""
    lines = [f"{what} failed: {len(failed)} critical expectation(s) not met ({n_rows} images)"]
    for r in failed:
        where = f" on column {r['column']!r}" if r["column"] else ""
        count = f": {r['unexpected_count']} row(s) unexpected" if r["unexpected_count"] else ""
        observed = f" (observed {r['observed']})" if r["observed"] not in ("", None) else ""
        examples = f", e.g. {', '.join(map(str, r['examples']))}" if r["examples"] else ""
        lines.append(f"  - [{r['batch']}] {r['expectation']}{where}{count}{observed}{examples}")
        if r.get("hint"):
            lines.append(f"    {r['hint']}")
    return "\n".join(lines)


def _short(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."
