from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from components.config import Config, resolve
from components.errors import ConfigError, DataError, TrainingError
from components.gan.loss import PhasedLoss
from components.gan.sampling import generate, list_snapshots, load_generator, snapshot_path
from components.tracking import NullTracker
from components.train.core import train
from components.train.trainer import Trainer, condition_schedule, ema_beta, snapshot_steps


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


def test_tiny_run_writes_model_checkpoint_grid_and_options(train_data, model_files, tmp_path):
    archive, split = train_data
    cfg = resolve("tiny")
    summary = train(archive, split, tmp_path / "model", cfg, None)
    out = tmp_path / "model"
    assert summary["steps"] == 6 and summary["steps_run"] == 6 and summary["rollbacks"] == 0
    assert summary["img_per_s"] > 0 and np.isfinite(summary["final_losses"]["loss_d"])
    assert sorted(p.name for p in out.iterdir()) == model_files
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


@pytest.mark.parametrize(
    ("steps", "count", "expected"),
    [(1000, 5, [200, 400, 600, 800, 1000]), (6, 5, [1, 2, 3, 4, 6]), (3, 10, [1, 2, 3]), (100, 0, [])],
)
def test_snapshot_steps_are_evenly_spaced_and_end_at_the_last_step(steps, count, expected):
    assert snapshot_steps(steps, count) == expected


def test_ema_snapshots_are_written_at_their_steps_in_the_generator_format(train_data, tmp_path):
    archive, split = train_data
    summary = train(archive, split, tmp_path / "m", resolve("tiny", ["train.fid_snapshots=3"]), None)
    assert summary["snapshot_steps"] == [2, 4, 6]
    assert [step for step, _ in list_snapshots(tmp_path / "m")] == [2, 4, 6]
    for step, path in list_snapshots(tmp_path / "m"):
        _, meta = load_generator(path)
        assert meta["step"] == step and meta["classes"] == ["normal", "benign", "malignant"]
    # The last snapshot is the final model: the evaluate stage reuses the final model's features for it.
    final, last = _state(tmp_path / "m" / "generator.pt"), _state(snapshot_path(tmp_path / "m", 6))
    for name, tensor in final["state_dict"].items():
        assert torch.equal(tensor, last["state_dict"][name])

    none = train(archive, split, tmp_path / "off", resolve("tiny", ["train.fid_snapshots=0"]), None)
    assert none["snapshot_steps"] == [] and list_snapshots(tmp_path / "off") == []


def test_snapshots_survive_resume_and_a_fresh_start_clears_them(train_data, tmp_path):
    archive, split = train_data
    cfg = ["train.fid_snapshots=3"]
    train(archive, split, tmp_path / "a", resolve("tiny", ["train.steps=3", *cfg]), None)
    early = {step: path.read_bytes() for step, path in list_snapshots(tmp_path / "a")}
    assert sorted(early) == [1, 2, 3]  # the 3-step run's schedule
    resumed = train(archive, split, tmp_path / "a", resolve("tiny", cfg), None)
    assert resumed["resumed"] and resumed["snapshot_steps"] == [1, 2, 3, 4, 6]  # earlier ones kept, unchanged
    assert all(snapshot_path(tmp_path / "a", step).read_bytes() == blob for step, blob in early.items())

    straight = train(archive, split, tmp_path / "b", resolve("tiny", cfg), None)
    assert straight["snapshot_steps"] == [2, 4, 6]
    for step in (2, 4, 6):  # resuming is bit-for-bit, so are the snapshots taken after it
        a, b = _state(snapshot_path(tmp_path / "a", step)), _state(snapshot_path(tmp_path / "b", step))
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])

    (tmp_path / "a" / "checkpoint.pt").unlink()  # start afresh in the same folder
    fresh = train(archive, split, tmp_path / "a", resolve("tiny", cfg), None)
    assert not fresh["resumed"] and fresh["snapshot_steps"] == [2, 4, 6]


@pytest.mark.parametrize("other", ["train.g_channels=16", "train.mbstd_group=0"])
def test_resume_refuses_a_checkpoint_of_another_model(train_data, tmp_path, other):
    archive, split = train_data
    train(archive, split, tmp_path / "m", resolve("tiny", ["train.steps=2"]), None)
    with pytest.raises(TrainingError, match="different model"):
        train(archive, split, tmp_path / "m", resolve("tiny", [other]), None)


def test_minibatch_stddev_trains_and_its_group_must_divide_the_batch(train_data, tmp_path):
    archive, split = train_data
    summary = train(archive, split, tmp_path / "m", resolve("tiny", ["train.mbstd_group=4"]), None)
    assert summary["steps_run"] == 6 and np.isfinite(summary["final_losses"]["loss_d"])
    assert _state(tmp_path / "m" / "checkpoint.pt")["d_kwargs"]["mbstd_group"] == 4
    with pytest.raises(ConfigError, match="train.mbstd_group=3 must divide the per-process batch"):
        train(archive, split, tmp_path / "n", resolve("tiny", ["train.mbstd_group=3"]), None)


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


@pytest.mark.parametrize(
    "override",
    [
        "train.log_every=0",
        "train.ema_decay=1.0",
        "train.lr_d=0",
        "train.mode_seeking=-0.1",
        "train.mode_seeking_bound=-1",
        "train.mode_seeking_share_power=-1",
        "train.mode_seeking_pool=0",
        "train.cond_transition_start=-1",
        "train.mbstd_group=-1",
        "train.nproc=3",
    ],
)
def test_bad_train_settings_are_rejected_by_name(train_data, tmp_path, override):
    archive, split = train_data
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key):
        train(archive, split, tmp_path / "m", resolve("tiny", [override]), None)


def test_the_effective_ema_decay_is_warmed_up_and_logged(train_data, tmp_path):
    archive, split = train_data
    tracker = RecordingTracker()
    Trainer(archive, split, tmp_path / "m", resolve("tiny"), tracker).fit()  # logs every 2 steps
    logged = {step: m["train/ema_beta"] for m, step in tracker.metrics if "train/ema_beta" in m}
    assert logged == {2: pytest.approx(2 / 11), 4: pytest.approx(4 / 13), 6: pytest.approx(6 / 15)}
    # The quickstart's last step: 0.991, not the configured 0.999; a half-life of ~77 steps instead of ~693.
    assert ema_beta(0.999, 999) == pytest.approx(1000 / 1009)
    assert math.log(0.5) / math.log(ema_beta(0.999, 999)) == pytest.approx(77.4, abs=0.1)
    assert ema_beta(0.999, 8990) == pytest.approx(0.999) and ema_beta(0.999, 10**6) == 0.999


def test_mode_seeking_class_weight_is_the_share_of_the_train_draw_to_a_power(train_data, tmp_path):
    archive, split = train_data
    trainer = Trainer(archive, split, tmp_path / "m", resolve("tiny", ["train.mode_seeking=0.01"]), None)
    assert trainer.loss.mode_seeking_class_weight is None  # power 0: every class alike
    cfg = resolve("tiny", ["train.mode_seeking=0.01", "train.mode_seeking_share_power=0.5"])
    trainer = Trainer(archive, split, tmp_path / "w", cfg, None)
    weight = trainer.loss.mode_seeking_class_weight
    labels, draw = trainer.row_labels.numpy(), trainer.weights.numpy()
    share = np.array([draw[labels == c].sum() for c in range(len(trainer.classes))])
    assert weight.tolist() == pytest.approx(list(np.sqrt(share / share.max())), rel=1e-6)
    assert weight.max().item() == 1.0 and len(set(weight.tolist())) > 1  # the test data is imbalanced
    assert np.isfinite(trainer.fit()["final_losses"]["loss_g"])


def test_augmentation_is_drawn_per_minibatch_stddev_group_by_default(train_data, tmp_path):
    archive, split = train_data
    trainer = Trainer(archive, split, tmp_path / "a", resolve("tiny", ["train.mbstd_group=4"]), None)
    assert trainer.loss.augment_group == 4
    assert np.isfinite(trainer.fit()["final_losses"]["loss_d"])
    per_pair = ["train.mbstd_group=4", "train.diffaugment_per_group=false"]
    assert Trainer(archive, split, tmp_path / "b", resolve("tiny", per_pair), None).loss.augment_group == 1
    no_groups = ["train.mbstd_group=0"]  # no groups in D: nothing to share a draw
    assert Trainer(archive, split, tmp_path / "c", resolve("tiny", no_groups), None).loss.augment_group == 1
    hybrid = ["train.mbstd_group=4", "train.diffaugment_per_pair=cutout"]
    trainer = Trainer(archive, split, tmp_path / "d", resolve("tiny", hybrid), None)
    assert (trainer.loss.augment_group, trainer.loss.augment_per_pair) == (4, ["cutout"])
    assert np.isfinite(trainer.fit()["final_losses"]["loss_d"])


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["train.diffaugment_per_pair=flip"], "unknown train.diffaugment_per_pair entries"),
        (["train.diffaugment=translation", "train.diffaugment_per_pair=cutout"], "does not apply"),
    ],
)
def test_a_per_pair_augmentation_must_be_one_the_policy_applies(train_data, tmp_path, overrides, match):
    archive, split = train_data
    with pytest.raises(ConfigError, match=match):
        Trainer(archive, split, tmp_path / "a", resolve("tiny", overrides), None)


def test_mode_seeking_cap_is_the_bound_times_each_real_class_s_pairwise_distance(train_data, tmp_path):
    archive, split = train_data
    cfg_overrides = ["train.mode_seeking=0.01", "train.mode_seeking_bound=2"]
    cfg = resolve("tiny", cfg_overrides)
    trainer = Trainer(archive, split, tmp_path / "m", cfg, None)
    cap = trainer.loss.mode_seeking_cap
    assert cap is not None and cap.shape == (len(trainer.classes),)
    labels = trainer.row_labels.numpy()
    for c in range(len(trainer.classes)):  # the same value by brute force over the class's train pairs
        rows = np.sort(trainer.rows[labels == c])
        x = np.stack([trainer.archive.images[rows], trainer.archive.masks[rows]], axis=1).astype(np.float64)
        x = x.reshape(len(rows), -1)
        pairs = [np.abs(x[i] - x[j]).mean() for i in range(len(x)) for j in range(len(x)) if i != j]
        assert cap[c].item() == pytest.approx(2 * np.mean(pairs) / (2 / math.sqrt(math.pi)), rel=1e-5)
    pooled = Trainer(
        archive, split, tmp_path / "p", resolve("tiny", [*cfg_overrides, "train.mode_seeking_pool=4"]), None
    )
    assert pooled.loss.mode_seeking_pool == 4
    assert (pooled.loss.mode_seeking_cap < cap).all()  # pooling removes the pixel-level part of the distances
    unbounded = Trainer(archive, split, tmp_path / "n", resolve("tiny", ["train.mode_seeking=0.01"]), None)
    assert unbounded.loss.mode_seeking_cap is None
    summary = trainer.fit()
    assert np.isfinite(summary["final_losses"]["loss_g"])


def test_class_weighted_loss_reads_rebalance_s_class_weights_and_refuses_a_split_without(train_data, tmp_path):
    archive, split = train_data
    cfg = resolve("tiny", ["split.strategy=class-weighted-loss"])
    with pytest.raises(DataError, match="no class loss weights"):
        Trainer(archive, split, tmp_path / "m", cfg, None)
    weights = {"normal": 0.5, "benign": 1.5, "malignant": 3.0}
    (split / "distribution.json").write_text(json.dumps({"class_loss_weights": weights}))
    trainer = Trainer(archive, split, tmp_path / "m", cfg, None)
    assert trainer.loss.class_weights.tolist() == [weights[c] for c in trainer.classes]
    assert Trainer(archive, split, tmp_path / "n", resolve("tiny"), None).loss.class_weights is None
    (split / "distribution.json").write_text(json.dumps({"class_loss_weights": {}}))
    with pytest.raises(DataError, match="another strategy"):
        Trainer(archive, split, tmp_path / "o", cfg, None)


def test_transitional_conditioning_blends_the_class_in_and_the_model_file_keeps_its_weight(train_data, tmp_path):
    """Unconditional until the start step, a linear ramp, then conditional; snapshots record the weight they had."""
    from components.gan.networks import condition_weight

    assert [condition_schedule(s, 2, 6) for s in (0, 1, 2, 4, 6, 9)] == [0.0, 0.0, 0.0, 0.5, 1.0, 1.0]
    assert condition_schedule(0, 0, 0) == 1.0  # the default: conditional from the first step
    archive, split = train_data
    tracker = RecordingTracker()
    cfg = resolve("tiny", ["train.cond_transition_start=2", "train.cond_transition_end=10", "train.fid_snapshots=2"])
    Trainer(archive, split, tmp_path / "m", cfg, tracker).fit()  # 6 steps, logged every 2
    logged = {step: m["train/cond_weight"] for m, step in tracker.metrics if "train/cond_weight" in m}
    assert logged == {2: 0.0, 4: pytest.approx(1 / 8), 6: pytest.approx(3 / 8)}  # the last (0-based) step's weight
    generator, meta = load_generator(tmp_path / "m")
    assert meta["cond_weight"] == pytest.approx(3 / 8) and condition_weight(generator) == pytest.approx(3 / 8)
    labels = np.array([0, 1, 2, 0])
    unconditional = Trainer(archive, split, tmp_path / "u", resolve("tiny"), None).G_ema
    from components.gan.networks import set_condition_weight

    set_condition_weight(0.0, unconditional)  # weight 0: the class has no effect on the output
    a, _ = generate(unconditional, labels, seed=3)
    b, _ = generate(unconditional, labels[::-1].copy(), seed=3)
    np.testing.assert_array_equal(a, b)
