"""Patient-level stratified split and class rebalancing weights.

No patient ever appears in two splits: slices of one patient are strongly correlated, and a leak would make every
downstream metric (FID against held-out data, Dice on test patients) optimistic. Patients are stratified by the
rarest class among their images so that rare classes reach every split when there are enough such patients. The
finished split table goes through the split suite of great-expectations (:func:`components.validate.core.check_split`)
before it is written: a patient in two splits is a critical failure that stops the pipeline; a class with fewer than
``validate.min_patients_per_class`` patients in a split is printed as a warning, or stops the pipeline too when
``validate.patients_per_class_severity`` is critical.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.archive import open_archive
from components.config import Config
from components.errors import ConfigError, DataError
from components.validate.core import check_split

SPLITS = ("train", "val", "test")
SPLIT_CHECK_DIR = "split_validation"  # in the split folder: the split check's Data Docs and validation.json
STRATEGIES = ("none", "weighted-sampler", "class-weighted-loss", "gan-topup")
# Strategies whose GAN draws its real batches with the class weights (gan-topup: the generator that makes the top-up
# cannot train on it, so it learns the rare classes from weighted real batches).
SAMPLED = ("weighted-sampler", "gan-topup")


def split_patients(
    manifest: pd.DataFrame, classes: list[str], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, str]:
    """Assign every patient to train/val/test, stratified by the rarest class the patient has.

    Within each stratum patients are shuffled (seeded) and dealt so that val and test each get their share,
    rounded, but at least one patient when the stratum has three or more; train keeps the rest and never less
    than one patient.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"split fractions must be in [0, 1) and sum below 1 (val={val_fraction}, test={test_fraction})"
        )
    class_freq = manifest["label"].value_counts()
    rarity = {c: class_freq.get(c, 0) for c in classes}
    strata = manifest.groupby("patient")["label"].agg(lambda labels: min(set(labels), key=lambda c: rarity[c]))
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for cls in sorted(strata.unique(), key=lambda c: rarity[c]):
        patients = sorted(strata.index[strata == cls])
        rng.shuffle(patients)
        n = len(patients)
        n_test = round(n * test_fraction)
        n_val = round(n * val_fraction)
        if n >= 3:
            n_test, n_val = max(n_test, 1 if test_fraction > 0 else 0), max(n_val, 1 if val_fraction > 0 else 0)
        while n_test + n_val >= n and (n_test or n_val):  # train keeps at least one patient
            if n_val >= n_test and n_val:
                n_val -= 1
            else:
                n_test -= 1
        for i, patient in enumerate(patients):
            assignment[patient] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return assignment


def class_weights(labels: pd.Series, classes: list[str], power: float) -> dict[str, float]:
    """Per-class weight ``count ** -power``, normalised so the weights of all samples average to one."""
    counts = labels.value_counts()
    raw = {c: float(counts[c]) ** -power for c in classes if counts.get(c, 0) > 0}
    total = sum(raw[c] * counts[c] for c in raw)
    return {c: w * len(labels) / total for c, w in raw.items()}


def rebalance(
    archive_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    cfg: Config,
    tracker: Any = None,
    check: bool = True,
) -> dict[str, Any]:
    """Write ``split.parquet`` (index, sample_id, patient, label, split, weight) and ``distribution.json``.

    The split table is validated first (Data Docs in ``out_dir/split_validation``, its results read back by
    :func:`load_split_check`); a leak raises ``ValidationFailed``.
    ``check=False`` skips that great-expectations run (benchmarks on machines without the GX stack).
    """
    archive = open_archive(archive_dir)
    manifest = archive.manifest
    strategy = cfg.split.strategy
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown split.strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    if manifest.empty:
        raise DataError(f"{archive_dir}: the archive holds no samples")
    if archive.meta.get("synthetic"):
        raise DataError(
            f"{archive_dir}: a synthetic top-up archive; only real archives are split (a top-up joins the train "
            f"split of the real archive it was made for, never val or test)"
        )
    assignment = split_patients(manifest, archive.classes, cfg.split.val_fraction, cfg.split.test_fraction, cfg.seed)
    table = pd.DataFrame(
        {
            "index": np.arange(len(manifest)),
            "sample_id": manifest["sample_id"].to_numpy(),
            "patient": manifest["patient"].to_numpy(),
            "label": manifest["label"].to_numpy(),
        }
    )
    table["split"] = table["patient"].map(assignment)
    train = table["split"] == "train"
    # class-weighted-loss keeps uniform sampling and hands the weights to the loss instead (recorded per class).
    power = cfg.split.sampler_power if strategy in SAMPLED else 0.0
    weights = class_weights(table.loc[train, "label"], archive.classes, power)
    table["weight"] = 0.0
    table.loc[train, "weight"] = table.loc[train, "label"].map(weights)
    loss_weights = class_weights(table.loc[train, "label"], archive.classes, cfg.split.sampler_power)

    distribution = {
        split: {c: int(((table["split"] == split) & (table["label"] == c)).sum()) for c in archive.classes}
        for split in SPLITS
    }
    patients = {split: int(table.loc[table["split"] == split, "patient"].nunique()) for split in SPLITS}
    expected = {
        c: float(table.loc[train & (table["label"] == c), "weight"].sum() / table.loc[train, "weight"].sum())
        for c in archive.classes
        if distribution["train"][c]
    }
    summary = {
        "strategy": strategy,
        "counts": distribution,
        "patients": patients,
        "sampler_class_share": expected,
        "class_loss_weights": loss_weights if strategy == "class-weighted-loss" else {},
        "missing": {s: [c for c in archive.classes if distribution[s][c] == 0] for s in SPLITS},
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Raises ValidationFailed (nothing written but the check's Data Docs) if a patient landed in two splits, or a class
    # has too few patients in a split and validate.patients_per_class_severity is critical.
    if check:
        result = check_split(table, out / SPLIT_CHECK_DIR, cfg, tracker)
        summary["split_check"] = {k: result[k] for k in ("success", "n_expectations", "n_warnings")}
        shortfalls = result["patients_per_class"]["shortfalls"]  # a critical one raised in check_split
        summary["split_check"]["patients_per_class_shortfalls"] = shortfalls
        for line in shortfalls:
            note = "validate.patients_per_class_severity=critical stops on it"
            print(f"[rebalance] warning: {line} ({note})", file=sys.stderr)
    else:  # an earlier check's results would vouch for a split they never saw
        shutil.rmtree(out / SPLIT_CHECK_DIR, ignore_errors=True)
    tmp = out / ".split.parquet.tmp"
    table.to_parquet(tmp, index=False)
    os.replace(tmp, out / "split.parquet")
    (out / "distribution.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    if tracker is not None:
        tracker.log_dict(summary, "rebalance/distribution.json")
        tracker.log_metrics({f"data/{s}_{c}": n for s, row in distribution.items() for c, n in row.items()})
    return summary


def load_split(split_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Read the split table written by :func:`rebalance`."""
    path = Path(split_dir) / "split.parquet"
    if not path.is_file():
        raise DataError(f"{split_dir}: no split.parquet; run the rebalance stage first")
    return pd.read_parquet(path)


def load_split_check(split_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The split check's summary (per expectation: result, severity, unexpected rows) for the review report.

    ``None`` when the split was made without the check (``rebalance(check=False)``). The Data Docs path is dropped:
    it names a folder of the machine that ran rebalance, and the report links nothing outside itself.
    """
    path = Path(split_dir) / SPLIT_CHECK_DIR / "validation.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable split check results ({exc}); re-run rebalance") from exc
    return {k: v for k, v in summary.items() if k != "data_docs"}
