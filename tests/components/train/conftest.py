"""Fixtures of the train tests: a tiny synthetic archive plus the split table the rebalance stage would write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

CLASSES = ("normal", "benign", "malignant")


def write_split(archive: Path, out: Path, test_patients: tuple[str, ...] = ("p4",)) -> Path:
    """split.parquet as rebalance writes it: patient-level split, class-balancing weights on the train rows."""
    from components.archive import open_archive

    manifest = open_archive(archive).manifest
    table = pd.DataFrame(
        {
            "index": np.arange(len(manifest)),
            "sample_id": manifest["sample_id"],
            "patient": manifest["patient"],
            "label": manifest["label"],
        }
    )
    table["split"] = np.where(table["patient"].isin(test_patients), "test", "train")
    train = table["split"] == "train"
    counts = table.loc[train, "label"].value_counts()
    table["weight"] = 0.0
    table.loc[train, "weight"] = table.loc[train, "label"].map(lambda c: counts[c] ** -0.75)
    out.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out / "split.parquet", index=False)
    return out


@pytest.fixture
def train_data(synthetic_archive, tmp_path) -> tuple[Path, Path]:
    """(archive, split) folders: 30 samples of 32 px, 3 classes (one rare), 5 patients."""
    labels = ["normal"] * 14 + ["benign"] * 11 + ["malignant"] * 5
    patients = [f"p{i % 5}" for i in range(len(labels))]
    archive = synthetic_archive(labels, patients, size=32, classes=CLASSES)
    return archive, write_split(archive, tmp_path / "split")


@pytest.fixture
def model_files() -> list[str]:
    """What a finished training leaves in its output folder, sorted."""
    return sorted(
        [
            "checkpoint.pt",
            "checkpoints",
            "generator.pt",
            "losses.csv",
            "samples.png",
            "snapshots",
            "train_summary.json",
            "training_options.json",
        ]
    )
