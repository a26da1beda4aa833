from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.archive import open_archive
from components.config import TopupConfig, resolve
from components.errors import ConfigError, DataError
from components.gan.sampling import GENERATOR_FILE, load_generator
from components.rebalance.core import load_split, rebalance
from components.topup.core import (
    TOPUP_FILE,
    ClassReference,
    build_topup,
    filter_candidates,
    open_topup,
    plan_topup,
    realism_scores,
    train_view,
    version_with_dvc,
)


def test_plan_tops_each_class_up_to_the_target_ratio_of_the_largest():
    counts = {"normal": 100, "benign": 30, "malignant": 5, "absent": 0}
    assert plan_topup(counts, 0.5) == {"normal": 0, "benign": 20, "malignant": 45, "absent": 0}
    assert plan_topup(counts, 0.0) == {"normal": 0, "benign": 0, "malignant": 0, "absent": 0}
    assert plan_topup(counts, 1.0)["malignant"] == 95
    with pytest.raises(ConfigError, match="topup.target_ratio"):
        plan_topup(counts, 1.5)


def test_realism_is_at_least_one_exactly_inside_a_real_k_nn_ball():
    real = np.array([[0.0], [1.0], [2.0]])  # every 1-NN radius is 1
    scores = realism_scores(np.array([[0.5], [1.0 + 1e-9], [3.0], [10.0]]), real, k=1)
    assert scores[0] == pytest.approx(2.0) and scores[1] > 1e6
    assert scores[2] == pytest.approx(1.0) and scores[3] == pytest.approx(1 / 8)
    assert np.isnan(realism_scores(np.zeros((2, 1)), real[:1], k=1)).all()


def _lesion_pairs(centres, size=16, radius=2, level=0.8, background=-0.5):
    images = np.full((len(centres), size, size), background, np.float32)
    masks = np.zeros((len(centres), size, size), np.uint8)
    for i, (y, x) in enumerate(centres):
        masks[i, y - radius : y + radius, x - radius : x + radius] = 1
        images[i][masks[i] > 0] = level
    return images, masks


def test_the_filter_names_the_first_failed_check_of_each_candidate():
    real_images, real_masks = _lesion_pairs([(4, 4), (4, 10), (10, 4), (10, 10), (7, 7)])
    real_feats = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.5, 0.5]])
    ref = ClassReference(real_images, real_masks, real_feats, lesion=True)
    good, _ = _lesion_pairs([(6, 8)])
    images, masks = _lesion_pairs([(6, 8), (6, 8), (6, 8), (6, 8), (6, 8), (6, 8)])
    masks[1] = 0  # no lesion
    masks[2, 1:15, 1:15] = 1  # a lesion 12x the largest real one
    images[3][masks[3] > 0] = -0.9  # darker than its surroundings: the real lesions are brighter
    feats = np.array([[0.3, 0.6], [0.3, 0.6], [0.3, 0.6], [0.3, 0.6], [9.0, 9.0], [1.0, 1.0]])
    # the last candidate's features are a real sample's: a near copy (cosine 1 after centring)
    scores = filter_candidates(images, masks, feats, ref, TopupConfig(), k=2)
    assert scores["reason"].tolist() == ["", "mask", "mask", "contrast", "outlier", "copy"]
    assert scores["accepted"].tolist() == [True, False, False, False, False, False]
    assert scores.loc[0, "realism"] >= 1 and scores.loc[4, "realism"] < 1
    assert scores.loc[5, "nn_similarity"] == pytest.approx(1.0)
    # a class without lesions wants empty masks, and its contrast is not judged
    normal = ClassReference(real_images, np.zeros_like(real_masks), real_feats, lesion=False)
    plain = filter_candidates(images[:2], masks[:2], feats[:2], normal, TopupConfig(), k=2)
    assert plain["reason"].tolist() == ["mask", ""]


def _embed(images):
    """A cheap, fixed feature space for the tests: 4x4 average-pooled pixels."""
    n, s = len(images), images.shape[1]
    return np.asarray(images, np.float64).reshape(n, 4, s // 4, 4, s // 4).mean(axis=(2, 4)).reshape(n, 16)


@pytest.fixture
def build(archive_dir, split_dir, model_dir, tmp_path):
    """build(cfg) -> (archive, split, out, summary): a top-up of the tiny model's generator, in ``tmp_path/topup``."""

    def make(cfg):
        archive, split = open_archive(archive_dir), load_split(split_dir)
        generator, meta = load_generator(model_dir)
        out = tmp_path / "topup"
        summary = build_topup(archive, split, generator, model_dir / GENERATOR_FILE, meta["step"], _embed, out, cfg)
        return archive, split, out, summary

    return make


@pytest.fixture
def built(build, lenient_topup, tmp_path):
    cfg = resolve("tiny", [*lenient_topup, f"topup.dvc_remote={tmp_path / 'remote'}"])
    return (*build(cfg), cfg)


def test_top_up_is_a_train_only_archive_of_filtered_flagged_rows_with_the_planned_counts(built):
    archive, split, out, summary, cfg = built
    train = split[split["split"] == "train"]
    counts = train["label"].value_counts().to_dict()
    need = plan_topup({c: counts.get(c, 0) for c in archive.classes}, cfg.topup.target_ratio)
    assert any(need.values())
    top, table = open_topup(out)
    for cls, n in need.items():
        kept = int((table["label"] == cls).sum())
        assert kept + (summary["per_class"][cls]["shortfall"] if n else 0) == n
    assert summary["n"] == len(top) == len(table) and summary["shortfall"] == 0
    assert table["synthetic"].all() and (table["split"] == "train").all()
    assert table["generator_sha256"].nunique() == 1 and len(table["generator_sha256"].iloc[0]) == 64
    assert {"mask_area", "contrast", "realism", "nn_similarity", "seed", "draw"} <= set(table.columns)
    assert top.meta["synthetic"] is True and top.meta["made_for"] == archive.meta["dataset_hash"]
    assert (top.manifest["label"].to_numpy() == table["label"].to_numpy()).all()
    # what the filter said: every kept row passed, every drawn row is counted
    for info in summary["per_class"].values():
        assert info["drawn"] == info["accepted"] + sum(info["rejected"].values())


def test_the_top_up_joins_the_train_split_only_and_a_tampered_or_foreign_one_is_refused(built, tmp_path):
    archive, split, out, summary, cfg = built
    view = train_view(archive, split, out)
    n_train = int((split["split"] == "train").sum())
    assert len(view.images) == n_train + summary["n"] and view.synthetic.sum() == summary["n"]
    assert not view.synthetic[:n_train].any()
    held_out = np.sort(split.loc[split["split"] != "train", "index"].to_numpy())
    real_part = view.images[:n_train]
    for row in held_out:  # no val/test image is in the view
        assert not np.isclose(real_part, archive.images[row]).all(axis=(1, 2)).any()
    # re-splitting the top-up itself (a re-run fed the synthetic archive) is refused
    with pytest.raises(DataError, match="synthetic top-up archive"):
        rebalance(out, tmp_path / "resplit", cfg)
    # a row that claims another split
    table = pd.read_parquet(out / TOPUP_FILE)
    table.loc[0, "split"] = "test"
    table.to_parquet(out / TOPUP_FILE, index=False)
    with pytest.raises(DataError, match="may only ever join the train split"):
        train_view(archive, split, out)
    table.loc[0, "split"] = "train"
    table.to_parquet(out / TOPUP_FILE, index=False)
    archive.meta["dataset_hash"] = "another"  # the same top-up against another dataset
    with pytest.raises(DataError, match="made for another dataset"):
        train_view(archive, split, out)


def test_the_top_up_is_pushed_to_the_dvc_remote_and_pulled_back_exactly(built, tmp_path):
    from dvc.repo import Repo

    _, _, out, summary, _ = built
    dvc = summary["dvc"]
    assert dvc["tracked"] and dvc["md5"].endswith(".dir") and dvc["nfiles"] >= 5
    # another DVC project with the same remote restores the very files from the pointer alone
    other = tmp_path / "elsewhere"
    other.mkdir()
    repo = Repo.init(str(other), no_scm=True)
    with repo.config.edit() as conf:
        conf["core"]["remote"] = "store"
        conf["remote"]["store"] = {"url": dvc["remote"]}
    (other / "topup.dvc").write_text(dvc["pointer"])
    repo.pull()
    repo.close()
    for name in ("images.npy", "masks.npy", "manifest.parquet", TOPUP_FILE, "archive.json"):
        assert (other / "topup" / name).read_bytes() == (out / name).read_bytes()
    # the same content versioned again is the same version
    assert version_with_dvc(out, dvc["remote"])["md5"] == dvc["md5"]


def test_without_a_dvc_remote_the_top_up_is_written_and_marked_unversioned(build, lenient_topup, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDGAN_PROJECT_DIR", str(tmp_path))  # no DVC project here or above
    monkeypatch.chdir(tmp_path)
    _, _, out, summary = build(resolve("tiny", lenient_topup))
    assert summary["dvc"]["tracked"] is False and "no DVC remote" in summary["dvc"]["reason"]
    assert open_topup(out)[1]["synthetic"].all()


@pytest.mark.parametrize(
    "override",
    [
        "topup.target_ratio=1.5",
        "topup.max_draw_factor=0",
        "topup.feature_space=pixels",
        "topup.mask_area_factor=0.5",
        "topup.min_contrast_fraction=-1",
        "topup.min_realism=-1",
        "topup.max_copy_similarity=0",
    ],
)
def test_bad_top_up_settings_are_refused_by_name(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        resolve("tiny", [override])
