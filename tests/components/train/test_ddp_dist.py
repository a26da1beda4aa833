"""Real DDP: two CPU processes with gloo, launched by train() through torchrun --standalone."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from components.config import resolve
from components.errors import DataError
from components.tracking import RunTracker
from components.train.core import train

pytestmark = pytest.mark.timeout(300)


def test_two_process_ddp_trains_identical_replicas_and_only_rank0_writes(train_data, model_files, tmp_path):
    archive, split = train_data
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = {"tracking_uri": uri, "experiment": "ddp-test", "run_key": "run-1"}
    cfg = resolve("tiny", ["train.nproc=2"])
    summary = train(archive, split, tmp_path / "model", cfg, tracking)

    assert summary["world_size"] == 2 and summary["steps"] == 6
    prints = summary["replica_fingerprints"]
    assert len(prints) == 2 and prints[0] == prints[1]  # both ranks end with identical G, D and G_ema
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == model_files
    assert summary["snapshot_steps"] == [1, 2, 3, 4, 6]  # written by rank 0 alone, like every output
    assert torch.load(tmp_path / "model" / "checkpoint.pt", weights_only=True)["step"] == 6

    # Rank 0 alone logs: every logged step appears exactly once.
    run_id = RunTracker(uri, "ddp-test", "run-1").run_id
    client = MlflowClient(uri)
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss_g")]
    assert steps == sorted(set(steps)) and steps == [2, 4, 6]
    grids = sorted(a.path for a in client.list_artifacts(run_id, "samples"))
    assert grids == ["samples/step_000003.png", "samples/step_000006.png"]


def test_worker_errors_keep_their_type_and_message(train_data, tmp_path):
    archive, _ = train_data
    empty_split = tmp_path / "no-split"
    empty_split.mkdir()
    with pytest.raises(DataError, match="split.parquet"):
        train(archive, empty_split, tmp_path / "model", resolve("tiny", ["train.nproc=2"]), None)
