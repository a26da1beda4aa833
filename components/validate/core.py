"""Data validation of the dataset archive with a great-expectations suite.

Two batches are validated: the manifest (one row per image, with its statistics) and a per-class table. Every
expectation carries a severity in its ``meta``: a failed ``critical`` expectation stops the pipeline with a short
summary, a failed ``warning`` is logged and shown in the report. Thresholds come from ``ValidateConfig``.
Data Docs HTML is written to ``out_dir/data_docs`` and a machine-readable ``validation.json`` beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from components.archive import MANIFEST_COLUMNS, open_archive
from components.config import Config
from components.errors import ValidationFailed

CRITICAL, WARNING = "critical", "warning"


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


def build_expectations(cfg: Config) -> dict[str, list[Any]]:
    """The suite, per batch name, as great-expectations expectation objects tagged with a severity."""
    import great_expectations.expectations as gxe

    v, d = cfg.validate, cfg.data

    def crit(e: Any) -> Any:
        e.meta = {"severity": CRITICAL}
        return e

    def warn(e: Any) -> Any:
        e.meta = {"severity": WARNING}
        return e

    manifest = [
        crit(gxe.ExpectTableColumnsToMatchSet(column_set=[*MANIFEST_COLUMNS, "lesion_mask_ok"], exact_match=True)),
        *[crit(gxe.ExpectColumnValuesToNotBeNull(column=c)) for c in ("sample_id", "patient", "label", "content_hash")],
        crit(gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(d.classes))),
        crit(gxe.ExpectColumnValuesToBeBetween(column="img_min", min_value=v.image_min, max_value=v.image_max)),
        crit(gxe.ExpectColumnValuesToBeBetween(column="img_max", min_value=v.image_min, max_value=v.image_max)),
        crit(gxe.ExpectColumnValuesToBeInTypeList(column="img_mean", type_list=["float", "float32", "float64"])),
        crit(gxe.ExpectColumnValuesToBeBetween(column="orig_rows", min_value=16)),
        crit(gxe.ExpectColumnValuesToBeBetween(column="orig_cols", min_value=16)),
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
    return {"manifest": manifest, "classes": classes}


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


def validate(
    archive_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], cfg: Config, tracker: Any = None
) -> dict[str, Any]:
    """Validate the archive; write Data Docs and ``validation.json``; raise ``ValidationFailed`` on critical errors.

    The Data Docs and the JSON are written (and logged) before raising, so a failed run still explains itself.
    """
    archive = open_archive(archive_dir)
    manifest = archive.manifest.copy()
    manifest["lesion_mask_ok"] = ~manifest["label"].isin(cfg.data.lesion_classes) | (manifest["mask_fraction"] > 0)
    batches = {"manifest": manifest, "classes": class_table(manifest, list(cfg.data.classes))}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        runs = _run_suite(batches, build_expectations(cfg), Path(tmp))
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
                        }
                    )
        docs = out / "data_docs"
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
        "data_docs": str(docs / "index.html"),
    }
    (out / "validation.json").write_text(json.dumps(summary, indent=2))
    if tracker is not None:
        tracker.log_metrics(
            {
                "validate/n_failed_critical": len(critical),
                "validate/n_warnings": len(failed) - len(critical),
                "validate/n_expectations": len(rows),
            }
        )
        tracker.log_artifact(docs, "validation/data_docs")
        tracker.log_artifact(out / "validation.json", "validation")
    if critical:
        raise ValidationFailed(format_failures(critical, len(manifest)))
    return summary


def format_failures(failed: list[dict[str, Any]], n_rows: int) -> str:
    """A short readable summary: which expectations failed and on how many rows."""
    lines = [f"data validation failed: {len(failed)} critical expectation(s) not met ({n_rows} images)"]
    for r in failed:
        where = f" on column {r['column']!r}" if r["column"] else ""
        count = f": {r['unexpected_count']} row(s) unexpected" if r["unexpected_count"] else ""
        observed = f" (observed {r['observed']})" if r["observed"] not in ("", None) else ""
        examples = f", e.g. {', '.join(map(str, r['examples']))}" if r["examples"] else ""
        lines.append(f"  - [{r['batch']}] {r['expectation']}{where}{count}{observed}{examples}")
    return "\n".join(lines)


def _short(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."
