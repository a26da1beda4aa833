"""Divergence guards (exploding gradients, D collapse) and the background batch prefetcher."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from components.config import resolve
from components.errors import TrainingError
from components.gan.loss import PhasedLoss
from components.tracking import NullTracker
from components.train import trainer as trainer_module
from components.train.core import train
from components.train.trainer import BatchPrefetcher, Trainer, checkpoint_path, list_checkpoints


class EventTracker(NullTracker):
    def __init__(self) -> None:
        self.metrics, self.tags, self.dicts = [], {}, {}

    def log_metrics(self, metrics, step=None):
        self.metrics.append((dict(metrics), step))

    def set_tags(self, tags):
        self.tags.update(tags)

    def log_dict(self, data, artifact_file):
        self.dicts[artifact_file] = data


def _patch_dmain(monkeypatch, at_calls, **fake):
    """Make the D phase report ``fake`` statistics on the Dmain calls ``at_calls`` selects (1-based)."""
    original = PhasedLoss.accumulate_gradients
    calls = {"n": 0}

    def patched(self, phase, *args, **kwargs):
        stats = original(self, phase, *args, **kwargs)
        if phase == "Dmain":
            calls["n"] += 1
            if at_calls(calls["n"]):
                return {**stats, **{k: torch.tensor(v) for k, v in fake.items()}}
        return stats

    monkeypatch.setattr(PhasedLoss, "accumulate_gradients", patched)


def test_default_guards_stay_quiet_on_a_healthy_run(train_data, tmp_path):
    archive, split = train_data
    tracker = EventTracker()
    summary = Trainer(archive, split, tmp_path / "m", resolve("tiny", ["train.steps=12"]), tracker).fit()
    assert summary["rollbacks"] == 0 and "train/rollback_reason" not in tracker.tags
    logged = {k for metrics, _ in tracker.metrics for k in metrics}
    assert {"train/grad_norm_d", "train/grad_norm_g", "train/d_acc_real", "train/d_acc_fake"} <= logged


def test_exploding_gradients_roll_back_with_a_reason(train_data, tmp_path, monkeypatch, capsys):
    archive, split = train_data
    original = Trainer._grad_norm
    calls = {"n": 0}

    def spiky(self, module):
        calls["n"] += 1
        norm = original(self, module)
        return norm * 1e9 if calls["n"] == 9 else norm  # the 5th step's D phase (two norms per step)

    monkeypatch.setattr(Trainer, "_grad_norm", spiky)
    tracker = EventTracker()
    summary = Trainer(archive, split, tmp_path / "m", resolve("tiny"), tracker).fit()
    assert summary["steps"] == 6 and summary["rollbacks"] == 1
    err = capsys.readouterr().err
    assert "exploding gradients at step 4: D gradient norm" in err and "rolled back to step 3" in err
    assert ({"train/rollback": 1}, 4) in tracker.metrics
    assert "train.guard_grad_norm=10000" in tracker.tags["train/rollback_reason"]
    event = tracker.dicts["train/rollbacks/rollback_01.json"]
    assert event["event"] == "train/rollback" and event["kind"] == "grad_norm" and event["rolled_back_to_step"] == 3
    assert event["lr_g"] == pytest.approx(resolve("tiny").train.lr_g / 2)


def test_persistent_gradient_explosion_ends_in_training_error(train_data, tmp_path):
    archive, split = train_data
    cfg = resolve("tiny", ["train.guard_grad_norm=1e-9", "train.max_rollbacks=2"])
    with pytest.raises(TrainingError, match=r"exploding gradients at step 0.*after 2 rollbacks"):
        train(archive, split, tmp_path / "m", cfg, None)
    assert not (tmp_path / "m" / "generator.pt").exists()


def test_discriminator_margin_collapse_for_k_steps_rolls_back(train_data, tmp_path, monkeypatch, capsys):
    archive, split = train_data
    # Steps 2..4 (Dmain calls 3..5) report a huge real/fake margin; patience 3 trips on the third of them.
    _patch_dmain(monkeypatch, lambda n: 3 <= n <= 5, d_real=40.0, d_fake=-40.0)
    tracker = EventTracker()
    cfg = resolve("tiny", ["train.guard_patience=3"])
    summary = Trainer(archive, split, tmp_path / "m", cfg, tracker).fit()
    assert summary["rollbacks"] == 1 and summary["steps"] == 6
    assert "discriminator collapse at step 4" in capsys.readouterr().err
    reason = tracker.tags["train/rollback_reason"]
    assert "margin above train.guard_margin=20" in reason and "3 consecutive steps" in reason
    assert tracker.dicts["train/rollbacks/rollback_01.json"]["kind"] == "collapse"


def test_margin_spikes_shorter_than_the_patience_do_not_trigger(train_data, tmp_path, monkeypatch):
    archive, split = train_data
    _patch_dmain(monkeypatch, lambda n: n % 3 != 0, d_real=40.0, d_fake=-40.0)  # never 3 in a row
    summary = Trainer(archive, split, tmp_path / "m", resolve("tiny", ["train.guard_patience=3"])).fit()
    assert summary["rollbacks"] == 0


def test_perfect_discriminator_accuracy_collapse_exhausts_the_rollbacks(train_data, tmp_path, monkeypatch):
    archive, split = train_data
    _patch_dmain(monkeypatch, lambda n: True, d_acc_real=1.0, d_acc_fake=1.0)
    cfg = resolve("tiny", ["train.guard_patience=2", "train.max_rollbacks=1"])
    with pytest.raises(TrainingError, match=r"D accuracy on reals and fakes at least .*after 1 rollbacks"):
        Trainer(archive, split, tmp_path / "m", cfg).fit()


def test_disabled_guards_never_trigger(train_data, tmp_path, monkeypatch):
    archive, split = train_data
    _patch_dmain(monkeypatch, lambda n: True, d_real=40.0, d_fake=-40.0, d_acc_real=1.0, d_acc_fake=1.0)
    cfg = resolve("tiny", ["train.guard_patience=1", "train.guard_margin=0", "train.guard_d_accuracy=0"])
    assert Trainer(archive, split, tmp_path / "m", cfg).fit()["rollbacks"] == 0


@pytest.mark.parametrize("depth", [1, 3])
def test_prefetching_is_bit_identical_to_drawing_in_step(train_data, tmp_path, depth, monkeypatch):
    archive, split = train_data
    monkeypatch.setattr(trainer_module, "PREFETCH_ON_CPU", True)  # CPU only prefetches when asked to
    sync = train(archive, split, tmp_path / "sync", resolve("tiny", ["train.prefetch=0"]), None)
    ahead = train(archive, split, tmp_path / "ahead", resolve("tiny", [f"train.prefetch={depth}"]), None)
    assert sync["replica_fingerprints"] == ahead["replica_fingerprints"]
    a, b = pd.read_csv(tmp_path / "sync" / "losses.csv"), pd.read_csv(tmp_path / "ahead" / "losses.csv")
    pd.testing.assert_frame_equal(a.drop(columns="step_time_s"), b.drop(columns="step_time_s"))


def test_prefetcher_serves_each_key_and_drops_stale_work_after_a_rollback():
    made = []

    def make(step, salt):
        made.append((step, salt))
        return torch.Generator(), torch.tensor([step]), torch.tensor([salt])

    loader = BatchPrefetcher(make, depth=2, end=10)
    try:
        for step in range(4):
            _, real, labels = loader.get(step, 0)
            assert (int(real), int(labels)) == (step, 0)
        _, real, labels = loader.get(2, 1)  # rollback to step 2 with a new salt
        assert (int(real), int(labels)) == (2, 1)
        assert all(key[1] == 1 for key in loader.pending) and set(loader.pending) == {(3, 1), (4, 1)}
        loader.get(8, 1)
        assert set(loader.pending) == {(9, 1)}  # never past the last step
    finally:
        loader.close()


def test_resume_with_prefetching_continues_bit_for_bit(train_data, tmp_path, monkeypatch):
    archive, split = train_data
    monkeypatch.setattr(trainer_module, "PREFETCH_ON_CPU", True)
    train(archive, split, tmp_path / "a", resolve("tiny", ["train.steps=4"]), None)
    resumed = train(archive, split, tmp_path / "a", resolve("tiny"), None)
    straight = train(archive, split, tmp_path / "b", resolve("tiny", ["train.prefetch=0"]), None)
    assert resumed["start_step"] == 4 and resumed["replica_fingerprints"] == straight["replica_fingerprints"]


def test_a_rollback_never_lands_inside_a_collapse_streak(train_data, tmp_path, monkeypatch, capsys):
    archive, split = train_data
    # Steps 3..5 (Dmain calls 4..6) report a huge margin: the checkpoint at 4 is saved inside the streak, the third
    # collapsed step trips the guard, and the rollback goes to the checkpoint at 2, saved before the streak.
    _patch_dmain(monkeypatch, lambda n: 4 <= n <= 6, d_real=40.0, d_fake=-40.0)
    cfg = resolve("tiny", ["train.steps=8", "train.checkpoint_every=2", "train.guard_patience=3"])
    summary = Trainer(archive, split, tmp_path / "m", cfg).fit()
    err = capsys.readouterr().err
    assert summary["rollbacks"] == 1 and summary["steps"] == 8
    assert "discriminator collapse at step 5" in err and "rolled back to step 2" in err


def test_after_a_resume_the_rollback_target_is_the_newest_state_saved_outside_a_streak(
    train_data, tmp_path, monkeypatch
):
    archive, split = train_data
    out = tmp_path / "m"
    # Steps 2.. (Dmain calls 3..) report a huge margin, below the patience: the final checkpoint (4) is in the streak.
    _patch_dmain(monkeypatch, lambda n: n >= 3, d_real=40.0, d_fake=-40.0)
    settings = ["train.checkpoint_every=2", "train.guard_patience=10", "train.keep_checkpoints=1"]
    first = Trainer(archive, split, out, resolve("tiny", ["train.steps=4", *settings]))
    first.fit()
    latest = torch.load(out / "checkpoint.pt", weights_only=True)
    assert latest["step"] == 4 and latest["collapse_streak"] == 2 and not latest["rollback_target"]
    assert first._good["step"] == 2 and first._good["rollback_target"]
    assert [step for step, _ in list_checkpoints(out)] == [4, 2]  # keep 1, and the rollback target besides

    resumed = Trainer(archive, split, out, resolve("tiny", settings))
    assert resumed._load_checkpoint(out / "checkpoint.pt")
    assert resumed.step == 4 and resumed.collapse_streak == 2
    assert resumed._good["step"] == 2 and resumed._good["rollback_target"]

    checkpoint_path(out, 2).unlink()  # no kept state outside the streak: the latest is the target
    again = Trainer(archive, split, out, resolve("tiny", settings))
    assert again._load_checkpoint(out / "checkpoint.pt") and again._good["step"] == 4
