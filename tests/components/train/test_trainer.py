from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from components.config import Config, resolve
from components.errors import ConfigError, TrainingError
from components.gan.loss import PhasedLoss
from components.gan.sampling import generate, load_generator
from components.tracking import NullTracker
from components.train.core import train
from components.train.trainer import Trainer


class RecordingTracker(NullTracker):
    """The tracker interface, keeping what was logged in memory."""

    def __init__(self) -> None:
        self.metrics: list[tuple[dict[str, float], int | None]] = []
        self.images: list[str] = []

    def log_metrics(self, metrics, step=None):
        self.metrics.append((dict(metrics), step))

    def log_image(self, image, artifact_file):
        assert image.dtype == np.uint8
        self.images.append(artifact_file)


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_tiny_run_writes_model_checkpoint_grid_and_options(train_data, tmp_path):
    archive, split = train_data
    cfg = resolve("tiny")
    summary = train(archive, split, tmp_path / "model", cfg, None)
    out = tmp_path / "model"
    assert summary["steps"] == 6 and summary["steps_run"] == 6 and summary["rollbacks"] == 0
    assert summary["img_per_s"] > 0 and np.isfinite(summary["final_losses"]["loss_d"])
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["checkpoint.pt", "generator.pt", "losses.csv", "samples.png", "train_summary.json", "training_options.json"]
    )
    ckpt = _state(out / "checkpoint.pt")
    assert ckpt["step"] == 6
    assert {"G", "D", "G_ema", "opt_g", "opt_d", "rng", "config"} <= set(ckpt)
    assert Config.from_json(json.dumps(json.loads((out / "training_options.json").read_text()))) == cfg
    losses = pd.read_csv(out / "losses.csv")
    assert losses["step"].tolist() == [1, 2, 3, 4, 5, 6]
    assert losses["r1"].notna().sum() == 3  # lazy R1 every r1_interval=2 steps

    G, meta = load_generator(out)
    assert meta["classes"] == ["normal", "benign", "malignant"] and meta["step"] == 6
    for name, tensor in G.state_dict().items():  # the EMA weights are what gets shipped
        torch.testing.assert_close(tensor, ckpt["G_ema"][name])
    images, masks = generate(G, np.array([0, 1, 2]), seed=3)
    assert images.shape == (3, 32, 32) and masks.shape == (3, 32, 32)
    grid = np.asarray(Image.open(out / "samples.png"))
    assert grid.dtype == np.uint8 and grid.shape[0] == 3 * (32 + 2) + 2  # one row per class


def test_resume_continues_bit_for_bit_from_the_checkpoint(train_data, tmp_path):
    archive, split = train_data
    first = train(archive, split, tmp_path / "a", resolve("tiny", ["train.steps=3"]), None)
    assert first["steps"] == 3
    resumed = train(archive, split, tmp_path / "a", resolve("tiny"), None)
    assert resumed["resumed"] and resumed["start_step"] == 3 and resumed["steps_run"] == 3
    assert pd.read_csv(tmp_path / "a" / "losses.csv")["step"].tolist() == [1, 2, 3, 4, 5, 6]

    straight = train(archive, split, tmp_path / "b", resolve("tiny"), None)
    assert straight["replica_fingerprints"] == resumed["replica_fingerprints"]
    a, b = _state(tmp_path / "a" / "checkpoint.pt"), _state(tmp_path / "b" / "checkpoint.pt")
    for net in ("G", "D", "G_ema"):
        for name in a[net]:
            assert torch.equal(a[net][name], b[net][name]), f"{net}.{name} differs after resume"


def test_resume_refuses_a_checkpoint_of_another_model(train_data, tmp_path):
    archive, split = train_data
    train(archive, split, tmp_path / "m", resolve("tiny", ["train.steps=2"]), None)
    with pytest.raises(TrainingError, match="different model"):
        train(archive, split, tmp_path / "m", resolve("tiny", ["train.g_channels=16"]), None)


def _inject_nan(monkeypatch, at_calls):
    original = PhasedLoss.accumulate_gradients
    calls = {"Gmain": 0}

    def flaky(self, phase, *args, **kwargs):
        stats = original(self, phase, *args, **kwargs)
        if phase == "Gmain":
            calls["Gmain"] += 1
            if at_calls(calls["Gmain"]):
                return {**stats, "loss_g": torch.tensor(float("nan"))}
        return stats

    monkeypatch.setattr(PhasedLoss, "accumulate_gradients", flaky)


def test_nan_loss_rolls_back_to_last_checkpoint_with_halved_lr(train_data, tmp_path, monkeypatch, capsys):
    archive, split = train_data
    cfg = resolve("tiny")
    _inject_nan(monkeypatch, lambda n: n == 5)  # the 5th step (index 4); the last checkpoint is at step 3
    tracker = RecordingTracker()
    summary = Trainer(archive, split, tmp_path / "m", cfg, tracker).fit()
    assert summary["steps"] == 6 and summary["rollbacks"] == 1
    assert "rolled back to step 3" in capsys.readouterr().err
    assert ({"train/rollback": 1}, 4) in tracker.metrics
    assert "samples/step_000006.png" in tracker.images
    ckpt = _state(tmp_path / "m" / "checkpoint.pt")
    assert ckpt["rollbacks"] == 1
    assert ckpt["opt_g"]["param_groups"][0]["lr"] == pytest.approx(cfg.train.lr_g / 2)
    assert pd.read_csv(tmp_path / "m" / "losses.csv")["step"].tolist() == [1, 2, 3, 4, 5, 6]


def test_repeated_nan_raises_training_error(train_data, tmp_path, monkeypatch):
    archive, split = train_data
    _inject_nan(monkeypatch, lambda n: n >= 2)
    with pytest.raises(TrainingError, match="after 3 rollbacks"):
        train(archive, split, tmp_path / "m", resolve("tiny"), None)
    assert not (tmp_path / "m" / "generator.pt").exists()


@pytest.mark.parametrize("override", ["train.log_every=0", "train.ema_decay=1.0", "train.lr_d=0"])
def test_bad_train_settings_are_rejected_by_name(train_data, tmp_path, override):
    archive, split = train_data
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key):
        train(archive, split, tmp_path / "m", resolve("tiny", [override]), None)
