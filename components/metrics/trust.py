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


def trust_metrics(
    classifier: torch.nn.Module,
    synthetic: tuple[np.ndarray, np.ndarray],
    held_out: tuple[np.ndarray, np.ndarray] | None,
    features: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    classes: Sequence[str],
    threshold: float,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Flat metrics and the report section of the per-class trust checks.

    ``synthetic`` and ``held_out`` are (images, class indices) of the generated samples and of the val split's real
    images (``None``: no reference); ``features`` are (synthetic, synthetic labels, real train, real train labels)
    in the memorization audit's feature space. Keys: ``class_accuracy`` (macro mean) and ``class_accuracy.<class>``,
    ``holdout_class_accuracy`` likewise, ``nn_copy_fraction.<class>`` and ``nn_similarity_max.<class>``.
    """
    accuracy = class_accuracy(predict_classes(classifier, synthetic[0]), synthetic[1], classes)
    reference = class_accuracy(predict_classes(classifier, held_out[0]), held_out[1], classes) if held_out else None
    audit = per_class_memorization(*features, classes, threshold)
    metrics: dict[str, float] = {"class_accuracy": accuracy["accuracy"]}
    metrics.update({f"class_accuracy.{c}": v for c, v in accuracy["per_class"].items()})
    if reference is not None:
        metrics["holdout_class_accuracy"] = reference["accuracy"]
        metrics.update({f"holdout_class_accuracy.{c}": v for c, v in reference["per_class"].items()})
    for cls, row in audit.items():
        metrics[f"nn_copy_fraction.{cls}"] = row["copy_fraction"]
        metrics[f"nn_similarity_max.{cls}"] = row["similarity_max"]
    section = {
        "classifier": "medical network (trained on the real train split only)",
        "per_class": [
            {
                "class": cls,
                "accuracy": accuracy["per_class"][cls],
                "n": accuracy["n"][cls],
                "holdout_accuracy": reference["per_class"][cls] if reference else None,
                "holdout_n": reference["n"][cls] if reference else 0,
                "memorization": audit.get(cls),
            }
            for cls in classes
        ],
        "threshold": threshold,
    }
    return metrics, section
