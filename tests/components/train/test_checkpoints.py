"""Checkpoint hygiene: the kept step checkpoints, falling back from an unreadable checkpoint.pt, resume refusal."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

from components.config import Config, TrainConfig, resolve
from components.errors import ConfigError, TrainingError
from components.train.core import train
from components.train.trainer import (
    RESUME_SAFE_TRAIN_KEYS,
    checkpoint_path,
    list_checkpoints,
    trajectory_changes,
)


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _truncate(path):
    """Replace ``path`` by its first half (a new file: a hard-linked copy elsewhere stays intact)."""
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("links", [True, False])
def test_the_last_k_checkpoints_are_kept_by_step_name(train_data, tmp_path, monkeypatch, links):
    archive, split = train_data
    if not links:  # a file system without hard links: each kept checkpoint is a copy

        def no_link(src, dst):
            raise OSError(1, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_link)
    cfg = resolve("tiny", ["train.steps=8", "train.checkpoint_every=2", "train.keep_checkpoints=2"])
    summary = train(archive, split, tmp_path / "m", cfg, None)
    out = tmp_path / "m"
    assert [step for step, _ in list_checkpoints(out)] == [8, 6]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000006.pt", "step-000008.pt"]
    assert summary["paths"]["checkpoints"] == str(out / "checkpoints")
    latest, newest = out / "checkpoint.pt", checkpoint_path(out, 8)
    assert latest.read_bytes() == newest.read_bytes() and os.path.samefile(latest, newest) == links
    assert _state(checkpoint_path(out, 6))["step"] == 6 and _state(newest)["step"] == 8
    assert not [p for p in out.rglob(".*tmp*")]  # no temporary file left behind


def test_keep_checkpoints_must_be_at_least_one(train_data, tmp_path):
    archive, split = train_data
    with pytest.raises(ConfigError, match="train.keep_checkpoints must be at least 1"):
        train(archive, split, tmp_path / "m", resolve("tiny", ["train.keep_checkpoints=0"]), None)


def test_a_fresh_start_removes_the_kept_checkpoints_of_an_earlier_training(train_data, tmp_path):
    archive, split = train_data
    out = tmp_path / "m"
    stale = checkpoint_path(out, 1)
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an earlier training's checkpoint")  # no checkpoint.pt: this run starts afresh
    summary = train(archive, split, out, resolve("tiny"), None)
    assert not summary["resumed"] and [step for step, _ in list_checkpoints(out)] == [6, 3]


@pytest.mark.parametrize(
    ("broken", "resumes_at"),
    [(["checkpoint.pt"], 4), (["checkpoint.pt", "checkpoints/step-000004.pt"], 2)],
)
def test_resume_falls_back_from_an_unreadable_checkpoint_to_the_newest_readable_one(
    train_data, tmp_path, capsys, broken, resumes_at
):
    archive, split = train_data
    out = tmp_path / "a"
    train(archive, split, out, resolve("tiny", ["train.steps=4", "train.checkpoint_every=2"]), None)
    for name in broken:
        _truncate(out / name)
    capsys.readouterr()
    resumed = train(archive, split, out, resolve("tiny", ["train.checkpoint_every=2"]), None)
    err = capsys.readouterr().err
    assert f"{out / 'checkpoint.pt'}: unreadable checkpoint" in err
    assert f"resuming from {checkpoint_path(out, resumes_at)} instead" in err
    assert resumed["resumed"] and resumed["start_step"] == resumes_at and resumed["steps"] == 6
    straight = train(archive, split, tmp_path / "b", resolve("tiny", ["train.checkpoint_every=2"]), None)
    assert resumed["replica_fingerprints"] == straight["replica_fingerprints"]  # bit-for-bit from the older one
    assert [step for step, _ in list_checkpoints(out)] == [6, 4, 2]  # the unreadable step 4 was rewritten


def test_resume_without_any_readable_checkpoint_is_a_clear_error(train_data, tmp_path):
    archive, split = train_data
    out = tmp_path / "m"
    train(archive, split, out, resolve("tiny", ["train.steps=4", "train.checkpoint_every=2"]), None)
    for path in [out / "checkpoint.pt"] + [p for _, p in list_checkpoints(out)]:
        _truncate(path)
    with pytest.raises(TrainingError, match=r"unreadable checkpoint.*keeps no readable one; delete .*checkpoint\.pt"):
        train(archive, split, out, resolve("tiny"), None)


def test_resume_refuses_changed_training_settings_by_name_and_allows_the_others(train_data, tmp_path):
    archive, split = train_data
    out = tmp_path / "m"
    train(archive, split, out, resolve("tiny", ["train.steps=2"]), None)
    with pytest.raises(TrainingError) as refused:
        train(archive, split, out, resolve("tiny", ["train.lr_g=0.001", "seed=1", "train.log_every=3"]), None)
    message = str(refused.value)
    assert "refusing to resume" in message and "train.lr_g 0.0002 -> 0.001" in message and "seed 0 -> 1" in message
    assert "set them back (seed=0 train.lr_g=0.0002)" in message and "another output folder" in message
    assert "log_every" not in message  # resume-safe keys are not named
    assert json.loads((out / "training_options.json").read_text())["seed"] == 0  # the refused run wrote nothing
    allowed = ["train.steps=4", "train.log_every=3", "train.guard_patience=50", "train.keep_checkpoints=1"]
    summary = train(archive, split, out, resolve("tiny", allowed), None)
    assert summary["resumed"] and summary["start_step"] == 2 and summary["steps"] == 4


def _different(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, list):
        return [*value, "x"]
    return f"{value}x"


def test_every_train_key_outside_the_allow_list_is_compared_on_resume():
    """A key added to TrainConfig later is protected too, unless it is listed as resume-safe."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert RESUME_SAFE_TRAIN_KEYS <= fields  # no stale or misspelt entry
    cfg = resolve("tiny")
    for key in sorted(fields):
        saved = json.loads(cfg.to_json())
        saved["train"][key] = _different(saved["train"][key])
        changed = trajectory_changes(json.dumps(saved), cfg)
        assert list(changed) == ([] if key in RESUME_SAFE_TRAIN_KEYS else [f"train.{key}"]), key
    for key, value in (("seed", 5), ("data.image_size", 64), ("data.classes", ["a", "b"])):
        saved = json.loads(cfg.to_json())
        section, _, name = key.rpartition(".")
        (saved[section] if section else saved)[name] = value
        assert list(trajectory_changes(json.dumps(saved), cfg)) == [key]


def test_a_key_the_checkpoint_predates_counts_with_its_default():
    saved = json.loads(Config().to_json())
    del saved["train"]["mode_seeking"]
    assert trajectory_changes(json.dumps(saved), Config()) == {}
    changed = trajectory_changes(json.dumps(saved), resolve("quickstart", ["train.mode_seeking=0.01"]))
    assert changed == {"train.mode_seeking": (0.0, 0.01)}


def test_a_key_the_checkpoint_predates_counts_with_the_behaviour_before_it_where_the_default_changed():
    # Checkpoints from before train.diffaugment_per_group drew augmentations per pair, whatever the default is now.
    saved = json.loads(Config().to_json())
    del saved["train"]["diffaugment_per_group"]
    per_group = resolve("quickstart", ["train.diffaugment_per_group=true"])
    assert trajectory_changes(json.dumps(saved), per_group) == {"train.diffaugment_per_group": (False, True)}
    per_pair = resolve("quickstart", ["train.diffaugment_per_group=false"])
    assert trajectory_changes(json.dumps(saved), per_pair) == {}
    # ... and drew every augmentation of a group alike once the groups existed, before train.diffaugment_per_pair
    saved = json.loads(per_group.to_json())
    del saved["train"]["diffaugment_per_pair"]
    hybrid = resolve("quickstart", ["train.diffaugment_per_group=true", "train.diffaugment_per_pair=cutout"])
    assert trajectory_changes(json.dumps(saved), hybrid) == {"train.diffaugment_per_pair": ("", "cutout")}
    assert trajectory_changes(json.dumps(saved), per_group) == {}
