"""Evaluation metrics. Distribution metrics are registered by name in :data:`METRICS` (StyleGAN2-ADA style).

A distribution metric is a function ``fn(real, fake, resamples=..., seed=..., **eval_options) -> dict`` taking
real and synthetic feature matrices ``(N, D)`` and returning ``{"value", "ci_low", "ci_high"}``; ``eval_options``
are the fields of :class:`components.config.EvalConfig` (each metric picks what it needs). Adding a metric means
writing that function and adding one line here: the evaluate stage computes every registered metric overall and
per class, and the report lists it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from components.metrics.fid import fid_metric
from components.metrics.kid import kid_metric
from components.metrics.manifold import coverage_metric, density_metric, precision_metric, recall_metric

MetricFn = Callable[..., dict[str, float]]

METRICS: dict[str, MetricFn] = {
    "fid": fid_metric,
    "kid": kid_metric,
    "precision": precision_metric,
    "recall": recall_metric,
    "density": density_metric,
    "coverage": coverage_metric,
}


def compute_metric(name: str, real: np.ndarray, fake: np.ndarray, options: dict[str, Any], seed: int) -> dict:
    """Run registered metric ``name`` with the eval options (``bootstrap`` becomes ``resamples``)."""
    return METRICS[name](real, fake, resamples=int(options.get("bootstrap", 0)), seed=seed, **options)


class DistributionMetric:
    """Stateful wrapper around a registered metric: feed feature batches, then aggregate (MONAI-style)."""

    def __init__(self, name: str, options: dict[str, Any] | None = None, seed: int = 0) -> None:
        if name not in METRICS:
            raise KeyError(f"unknown metric {name!r}; registered: {', '.join(sorted(METRICS))}")
        self.name, self.options, self.seed = name, dict(options or {}), seed
        self.reset()

    def reset(self) -> None:
        """Forget all accumulated features."""
        self._real: list[np.ndarray] = []
        self._fake: list[np.ndarray] = []

    def update(self, real: np.ndarray | None = None, fake: np.ndarray | None = None) -> None:
        """Add a batch of real and/or synthetic features."""
        if real is not None:
            self._real.append(np.asarray(real))
        if fake is not None:
            self._fake.append(np.asarray(fake))

    def aggregate(self) -> dict[str, float]:
        """The metric over everything fed since the last :meth:`reset`."""
        if not self._real or not self._fake:
            raise ValueError(f"{self.name}: aggregate() needs both real and synthetic features")
        return compute_metric(
            self.name, np.concatenate(self._real), np.concatenate(self._fake), self.options, self.seed
        )


__all__ = ["METRICS", "DistributionMetric", "MetricFn", "compute_metric"]
