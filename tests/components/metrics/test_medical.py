"""The medical feature space: trained here on the real train split, deterministic, cached, class-aware."""

import numpy as np
import pytest
import torch

from components.errors import ConfigError
from components.metrics import features, medical
from components.metrics.features import FitData, extract_features, get_extractor
from components.metrics.fid import fid_from_features


@pytest.fixture
def spy(monkeypatch):
    """Every FitData the network is trained on, in call order (training itself runs as usual)."""
    seen: list[FitData] = []
    train = medical.train_network

    def recording(fit, *args, **kwargs):
        seen.append(fit)
        return train(fit, *args, **kwargs)

    monkeypatch.setattr(medical, "train_network", recording)
    features._fitted_memo.clear()
    yield seen
    features._fitted_memo.clear()


@pytest.fixture
def quick(monkeypatch):
    """A few optimiser steps: these tests check the mechanics, not the quality of the space."""
    monkeypatch.setattr(medical, "MIN_SAMPLES", 128)


def blobs(n_per_class: int, seed: int, size: int = 32) -> FitData:
    """Three classes told apart by their lesion: none, a small bright disc, a large dark ring (random positions)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1, 2], n_per_class)
    yy, xx = np.mgrid[:size, :size]
    smooth = np.cos(yy / size * np.pi)[None] * rng.uniform(0.1, 0.4, (len(labels), 1, 1))
    images = (smooth + rng.normal(0, 0.15, (len(labels), size, size))).astype(np.float32)
    masks = np.zeros(images.shape, np.uint8)
    for i, label in enumerate(labels):
        if label:
            r = 3 if label == 1 else 7
            cy, cx = rng.uniform(r + 1, size - r - 1, 2)
            d2 = (yy - cy) ** 2 + (xx - cx) ** 2
            masks[i] = d2 <= r * r
            images[i][masks[i] > 0] = 0.9 if label == 1 else -0.8
            if label == 2:
                images[i][d2 <= (r - 3) ** 2] = 0.2  # the ring's centre
    rows = np.arange(len(labels)) + 1000 * seed
    return FitData(np.clip(images, -1, 1), labels, masks, 3, rows)


def test_fit_data_is_checked_and_a_fitted_extractor_needs_it():
    data = blobs(2, seed=0)
    with pytest.raises(ValueError, match="labels"):
        FitData(data.images, data.labels[:-1], data.masks, 3, data.rows)
    with pytest.raises(ConfigError, match="trained on the real train split"):
        get_extractor("medical")
    assert "medical" in features.FITTED and "pixels" not in features.FITTED


def test_training_is_deterministic_and_the_fingerprint_is_the_weights_hash(quick, spy):
    data = blobs(6, seed=0)
    rng_before, threads = torch.get_rng_state(), torch.get_num_threads()
    first = get_extractor("medical", fit=data)
    features._fitted_memo.clear()
    second = get_extractor("medical", fit=data)
    assert len(spy) == 2  # trained twice, from scratch
    assert first.fingerprint == second.fingerprint
    assert len(first.fingerprint) == 64 and int(first.fingerprint, 16) >= 0
    net, _ = medical.train_network(data)
    assert medical.weights_sha256(net) == first.fingerprint
    other, _ = medical.train_network(data, seed=1)
    assert medical.weights_sha256(other) != first.fingerprint
    assert torch.equal(torch.get_rng_state(), rng_before) and torch.get_num_threads() == threads

    feats = first(data.images, progress=False)
    assert feats.shape == (len(data.images), medical.FEATURE_DIM) == (18, first.dim) and feats.dtype == np.float32
    np.testing.assert_array_equal(feats, second(data.images, progress=False))
    # standardised by the training images' statistics (after a few steps some channels are still off everywhere)
    live = feats.std(0) > 1e-3
    assert live.mean() > 0.5
    np.testing.assert_allclose(feats.mean(0), 0, atol=1e-3)
    np.testing.assert_allclose(feats.std(0, ddof=1)[live], 1, atol=1e-2)
    assert first.info["rows"] is not None and first.info["n_train"] == 18
    # any image size in, the same space out
    assert first(np.zeros((2, 64, 64), np.float32), progress=False).shape == (2, medical.FEATURE_DIM)


def test_weights_are_cached_by_data_architecture_and_seed(quick, spy, tmp_path, monkeypatch):
    data = blobs(6, seed=0)
    first = get_extractor("medical", fit=data, cache_dir=tmp_path)
    assert get_extractor("medical", fit=data, cache_dir=tmp_path) is first  # in-process reuse
    stored = list(tmp_path.glob("medical-net-*.pt"))
    assert len(stored) == 1 and not first.info["from_cache"] and len(spy) == 1

    features._fitted_memo.clear()  # a new evaluation (another process): the weights come from the cache
    again = get_extractor("medical", fit=data, cache_dir=tmp_path)
    assert len(spy) == 1 and again.info["from_cache"] and again.fingerprint == first.fingerprint
    np.testing.assert_array_equal(again(data.images, progress=False), first(data.images, progress=False))
    # features cached under the weights fingerprint: another network never reads them
    extract_features(again, data.images, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("medical-*.npy"))) == 1

    other = FitData(data.images[1:], data.labels[1:], data.masks[1:], 3, data.rows[1:])  # other data: other key
    get_extractor("medical", fit=other, cache_dir=tmp_path)
    assert len(spy) == 2 and len(list(tmp_path.glob("medical-net-*.pt"))) == 2

    decay = medical.WEIGHT_DECAY
    monkeypatch.setattr(medical, "WEIGHT_DECAY", 0.0)  # another architecture or recipe: another key
    assert medical.weights_cache_path(tmp_path, data) != stored[0]
    monkeypatch.setattr(medical, "WEIGHT_DECAY", decay)
    assert medical.weights_cache_path(tmp_path, data) == stored[0]
    stored[0].write_bytes(b"truncated")  # an unreadable cache entry is retrained, not trusted
    features._fitted_memo.clear()
    retrained = get_extractor("medical", fit=data, cache_dir=tmp_path)
    assert len(spy) == 3 and retrained.fingerprint == first.fingerprint


def test_separates_the_classes_of_unseen_images_and_tells_blurred_ones(spy):
    """Default training budget; held-out images are new draws (chance: 1/3)."""
    train, held_out = blobs(16, seed=0), blobs(12, seed=1)
    extractor = get_extractor("medical", fit=train)
    assert len(spy) == 1 and spy[0] is train
    ref = extractor(train.images, progress=False)
    unseen = extractor(held_out.images, progress=False)
    centroids = np.stack([ref[train.labels == k].mean(0) for k in range(3)])
    pred = ((unseen[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    per_class = [(pred[held_out.labels == k] == k).mean() for k in range(3)]
    assert min(per_class) >= 0.75, per_class

    # blur: the space moves far more than between two draws of the same distribution
    from scipy.ndimage import gaussian_filter

    blurred = np.stack([gaussian_filter(x, 1.0) for x in held_out.images]).astype(np.float32)
    assert fid_from_features(ref, extractor(blurred, progress=False)) > 3 * fid_from_features(ref, unseen)


def test_separates_the_classes_of_the_tiny_phantom_train_split(archive_dir, split_dir, spy):
    """Fitted through the evaluate stage's own data function: the train split's rows, and nothing else."""
    from components.archive import open_archive
    from components.evaluate.core import split_rows, train_split_data
    from components.rebalance.core import load_split

    archive, split = open_archive(archive_dir), load_split(split_dir)
    data = train_split_data(archive, split)
    np.testing.assert_array_equal(data.rows, split_rows(split, "train"))
    assert not set(data.rows) & (set(split_rows(split, "val")) | set(split_rows(split, "test")))
    extractor = get_extractor("medical", fit=data)
    assert len(spy) == 1 and spy[0] is data
    np.testing.assert_array_equal(extractor.info["rows"], data.rows)
    feats = extractor(data.images, progress=False)
    centroids = np.stack([feats[data.labels == k].mean(0) for k in np.unique(data.labels)])
    pred = np.unique(data.labels)[((feats[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)]
    balanced = np.mean([(pred[data.labels == k] == k).mean() for k in np.unique(data.labels)])
    assert balanced >= 0.8  # chance: 1 / number of classes
