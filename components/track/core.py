"""Opening the pipeline run's MLflow run: resolved config, parameters and lineage logged once, up front."""

from __future__ import annotations

import json
from typing import Any

from components.config import Config
from components.tracking import RunTracker


def open_run(cfg: Config, tracking: dict[str, str], dataset_version: dict[str, Any]) -> str:
    """Create (or find) the MLflow run of this pipeline run and log the resolved config; return its run id."""
    tracker = RunTracker.of(tracking)
    tracker.log_params(cfg.flat())
    tracker.log_dict({"config": json.loads(cfg.to_json())}, "config/resolved_config.json")
    tracker.set_tags({"medgan.preset": cfg.preset, **{f"dataset.{k}": v for k, v in dataset_version.items()}})
    return tracker.run_id
