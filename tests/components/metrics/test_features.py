import numpy as np
import pytest

from components.errors import ConfigError
from components.metrics import features
from components.metrics.features import (
    INCEPTION_SHA1,
    FeatureExtractorError,
    extract_features,
    file_sha1,
    get_extractor,
    inception_weights_path,
    verify_inception_weights,
)


def images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size)).astype(np.float32)


def test_inception_weights_are_the_published_file():
    path = inception_weights_path()
    assert path.name == "default_1.pt"
    assert file_sha1(path) == INCEPTION_SHA1
    verify_inception_weights(path)


def test_inception_weights_missing_or_tampered(tmp_path, monkeypatch):
    with pytest.raises(FeatureExtractorError, match="not found"):
        verify_inception_weights(tmp_path / "default_1.pt")
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"not the network")
    with pytest.raises(FeatureExtractorError, match="does not match"):
        verify_inception_weights(fake)
    monkeypatch.setenv(features.INCEPTION_ENV, str(fake))
    assert inception_weights_path() == fake


def test_inception_features_of_a_small_batch():
    feats = get_extractor("inception")(images(2), progress=False)
    assert feats.shape == (2, 2048)
    assert np.isfinite(feats).all()
    assert (feats >= 0).all()  # average-pooled ReLU activations
    assert not np.allclose(feats[0], feats[1])


def test_inception_preprocess_range_and_size():
    import torch

    x = torch.from_numpy(images(2, 16))[:, None]
    y = features.inception_preprocess(x)
    assert y.shape == (2, 3, 299, 299)
    assert y.min() >= -1.0 and y.max() <= 0.9921875


def test_pixels_extractor_is_deterministic_area_downsampling():
    x = images(3, 32)
    ex = get_extractor("pixels")
    feats = ex(x, progress=False)
    assert feats.shape == (3, 256)
    expected = x.reshape(3, 16, 2, 16, 2).mean(axis=(2, 4)).reshape(3, -1)
    np.testing.assert_allclose(feats, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(feats, ex(x, progress=False))


def test_unknown_extractor_names_the_choices():
    with pytest.raises(ConfigError, match="inception.*pixels"):
        get_extractor("resnet-medical")


def test_feature_cache_reuses_and_keys_by_data(tmp_path):
    ex = get_extractor("pixels")
    x = images(4)
    first = extract_features(ex, x, cache_dir=tmp_path, progress=False)
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 1 and files[0].name.startswith("pixels-")
    np.save(files[0], first + 1.0)  # a cache hit returns the stored array, not a recomputation
    np.testing.assert_array_equal(extract_features(ex, x, cache_dir=tmp_path, progress=False), first + 1.0)
    extract_features(ex, images(4, seed=1), cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.npy"))) == 2
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_a_fitted_extractor_gets_the_fit_data_and_is_built_once_per_data(tmp_path, monkeypatch):
    from components.metrics.features import FITTED, FeatureExtractor, FitData

    calls = []

    def factory(device, fit, cache_dir):
        calls.append((device, fit, cache_dir))
        return FeatureExtractor("mean", 1, f"mean-{len(calls)}", lambda x: x.mean(dim=(1, 2, 3))[:, None], device)

    monkeypatch.setitem(features.EXTRACTORS, "mean", factory)
    monkeypatch.setattr(features, "FITTED", {*FITTED, "mean"})
    fit = FitData(images(3), np.array([0, 1, 1]), np.zeros((3, 32, 32), np.uint8), 2, np.array([4, 7, 9]))
    first = get_extractor("mean", fit=fit, cache_dir=tmp_path)
    assert calls == [("cpu", fit, tmp_path)] and get_extractor("mean", fit=fit, cache_dir=tmp_path) is first
    same_data = FitData(fit.images.copy(), fit.labels, fit.masks, 2, fit.rows)
    assert get_extractor("mean", fit=same_data, cache_dir=tmp_path) is first  # keyed by content, not identity
    other = FitData(images(3, seed=5), fit.labels, fit.masks, 2, fit.rows)
    assert get_extractor("mean", fit=other, cache_dir=tmp_path) is not first and len(calls) == 2
    with pytest.raises(ConfigError, match="trained on the real train split"):
        get_extractor("mean")
    # the fixed extractors ignore fit data
    assert get_extractor("pixels", fit=fit) is get_extractor("pixels")
    features._fitted_memo.clear()
