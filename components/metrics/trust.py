"""Per-class trust in the synthetic pairs: whether class C looks like class C, and whether a class copies.

- **Class-conditional accuracy**: the medical network (:mod:`components.metrics.medical`, trained on the real
  **train** split only, never seen by the GAN) classifies every synthetic image; the accuracy of class C is the share
  of the samples generated as C that it calls C. The same network on the **val** split's real images (other
  patients) gives the reference a generator is read against: where the classifier already confuses a class on real
  data a low synthetic accuracy says little, while a class far below its reference is not what its label says.
- **Memorization per class**: the audit of :mod:`components.metrics.memorization` run class by class, each synthetic
  sample against the real train samples **of its own class**, with that class's real-to-real baseline. The rare
  classes, whose few slices the sampler draws most often, are where a generator copies first; a pooled audit lets
  the common classes hide them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from components.metrics.memorization import memorization_audit


def predict_classes(net: torch.nn.Module, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Class indices the medical network predicts for ``images`` ``(N, S, S)`` in ``[-1, 1]`` (eval mode, CPU ok)."""
    device = next(net.parameters()).device
    out = np.zeros(len(images), dtype=np.int64)
    was_training = net.training
    net.eval()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size], dtype=np.float32))
            logits = net(x[:, None].to(device))[1]
            out[start : start + len(x)] = logits.argmax(1).cpu().numpy()
    net.train(was_training)
    return out


def class_accuracy(predicted: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Share of each class's samples predicted as that class, and the macro mean over the classes present.

    Returns ``{"accuracy": macro mean, "per_class": {class: share or nan}, "n": {class: samples}}``.
    """
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    per_class, n = {}, {}
    for i, cls in enumerate(classes):
        sel = labels == i
        n[cls] = int(sel.sum())
        per_class[cls] = float((predicted[sel] == i).mean()) if sel.any() else float("nan")
    present = [v for v in per_class.values() if np.isfinite(v)]
    return {"accuracy": float(np.mean(present)) if present else float("nan"), "per_class": per_class, "n": n}


def per_class_memorization(
    fake_feats: np.ndarray,
    fake_labels: np.ndarray,
    real_feats: np.ndarray,
    real_labels: np.ndarray,
    classes: Sequence[str],
    threshold: float,
) -> dict[str, dict[str, Any]]:
    """:func:`memorization_audit` within each class (synthetic vs real train samples of that class).

    Per class with synthetic samples and at least 2 real ones: ``copy_fraction``, ``n_flagged``, ``similarity_max``,
    ``similarity_mean``, ``real_baseline_median`` / ``_p95`` (the class's real-to-real nearest-neighbour similarity),
    ``n_synthetic``, ``n_real``. Features are centred on the class's real mean, so the similarity says how close a
    sample is to one real slice *relative to the class's own variety*.
    """
    out: dict[str, dict[str, Any]] = {}
    fake_labels, real_labels = np.asarray(fake_labels), np.asarray(real_labels)
    for i, cls in enumerate(classes):
        fake, real = fake_feats[fake_labels == i], real_feats[real_labels == i]
        if len(fake) == 0 or len(real) < 2:
            continue
        audit = memorization_audit(fake, real, threshold, top_k=0)
        keep = ("copy_fraction", "n_flagged", "similarity_max", "similarity_mean")
        out[cls] = {
            **{k: audit[k] for k in keep},
            "real_baseline_median": audit["real_baseline_median"],
            "real_baseline_p95": audit["real_baseline_p95"],
            "n_synthetic": len(fake),
            "n_real": len(real),
        }
    return out
