"""The evaluate stage: how faithful, how useful and how private the trained generator is.

1. fidelity: FID and KID (every metric in :data:`components.metrics.METRICS`) of EMA-generator samples against the
   real training split, overall and per class, with bootstrap confidence intervals, in the primary feature space
   (``eval.feature_extractor``, unprefixed keys) and in every ``eval.extra_extractors`` space (keys prefixed
   ``<name>_``), each with the held-out real reference; the synthetic class mix follows the real training split;
   FID over training from the trainer's snapshots (:mod:`.curve`), with per-class collapse ratios from the same
   latents; with ``eval.select_snapshot=best_fid`` every metric scores the snapshot (or final model) of lowest FID
   on the val split (:mod:`.selection`), written as ``generator.pt`` for the register stage, with a paired test of
   whether it beats the final model beyond noise (:mod:`.uncertainty`, ``selection_fid_gap``). The headline samples
   draw latents of their own (seed stream ``headline``), not the ones the selection chose on; every interval
   resamples the real side by patient (cluster bootstrap), since slices of one patient are correlated;
2. utility: Dice on real test patients of a segmentation net trained per arm (``eval.seg_arms``: real, weighted
   sampler, class-weighted loss, real + synthetic, synthetic only) and seed, the same steps for every arm, with
   paired patient-level bootstrap intervals, false positives on lesion-free slices and a floor under which the
   real-only baseline makes the comparison uninformative (:func:`dice_comparison`);
3. consistency: do generated masks sit on lesions, and do they agree with the class? collapse: is every class as
   varied as its real images, its lesions as spread out (:mod:`components.metrics.collapse`)?
4. privacy: nearest-real-neighbour memorization audit; interpretability for the report: per-class latent
   interpolations and saliency maps of the training checkpoint's discriminator (:mod:`.interpret`);
5. outputs: ``metrics.json`` (flat metrics, the gate reads them, plus ``extractors``: the identity of every feature
   space that produced a value, with its sample counts and reference-set hashes: :mod:`.provenance`),
   ``report.json`` + ``report.html`` (the review report, with the validate stage's
   results and rebalance's split check), and the same metrics in MLflow under ``eval/`` (the FID and collapse curves
   by training step, the feature spaces as ``eval.extractor.*`` run tags).

Outputs are written only after every metric is computed, each file atomically, ``metrics.json`` last: a failed
evaluation leaves no ``metrics.json`` for the register stage to pick up.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from components.archive import Archive, open_archive
from components.config import Config
from components.errors import ConfigError, DataError
from components.evaluate.champion import champion_comparison, load_champion
from components.evaluate.curve import candidate_features, fid_curve
from components.evaluate.interpret import across_patients, interpretability
from components.evaluate.provenance import champion_spaces, counts_per_class, space_provenance
from components.evaluate.report import atomic_write_text, json_safe, pair_grid, png_base64, write_report
from components.evaluate.selection import choose_generator
from components.evaluate.spaces import EXTRACTORS_KEY, HOLDOUT, extractor_tags, prefixed, scope_name, space_prefix
from components.evaluate.uncertainty import selection_gap
from components.metrics import METRICS, compute_metric
from components.metrics.collapse import SUMMARIES, class_statistics, collapse_ratios
from components.metrics.consistency import consistency_report, pair_statistics
from components.metrics.dice import (
    REFERENCE_ARM,
    SEG_FEATURES,
    SEG_LR,
    SEG_PRIOR,
    SEG_WARMUP,
    SYNTHETIC_ARMS,
    TOPUP_ARM,
    arm_scores,
    arm_train_set,
    dice_by_class,
    gain_verdict,
    paired_bootstrap,
)
from components.metrics.features import FeatureExtractor, FitData, extract_features, get_extractor
from components.metrics.medical import fitted_network
from components.metrics.memorization import memorization_audit
from components.metrics.trust import trust_metrics
from components.rebalance.core import class_weights, load_split, load_split_check

MIN_PER_CLASS = 4  # synthetic samples per class at least, so that per-class metrics exist for rare classes
REPORT_SAMPLES = 8  # tiles per class and side in the report
REPORT_NEIGHBOURS = 8
MAX_CURVE_POINTS = 400
VOLATILE = ("train_seconds", "from_cache")  # extractor facts that differ between identical evaluations
SPLIT_COLUMNS = ("index", "sample_id", "patient", "label", "split")
NAN_CI = (float("nan"), float("nan"))
# metrics of the memorization audit, computed in the primary feature space (named in its identity's "also")
AUDIT_KEYS = ("nn_copy_fraction", "nn_similarity_max", "nn_similarity_mean", "nn_real_baseline_median")


def synthetic_label_plan(counts: list[int], total: int, min_per_class: int = MIN_PER_CLASS) -> np.ndarray:
    """Class indices of ``total`` synthetic samples, in proportion to ``counts`` (largest remainder).

    Every class with real samples gets at least ``min_per_class``; classes without any get none (there is nothing
    to compare them with).
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.sum() <= 0:
        raise DataError("the real training split is empty: nothing to compare synthetic samples with")
    quota = c / c.sum() * total
    n = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - n), kind="stable")[: max(total - int(n.sum()), 0)]:
        n[i] += 1
    n = np.where(c > 0, np.maximum(n, min_per_class), 0)
    return np.repeat(np.arange(len(c)), n)


def metric_key(name: str, cls: str | None = None) -> str:
    """Flat metric key: ``name`` overall, ``name.<class>`` per class (class sanitised for MLflow)."""
    return name if cls is None else f"{name}.{scope_name(cls)}"


def check_split(split: pd.DataFrame, split_dir: str | os.PathLike[str], n_archive: int) -> pd.DataFrame:
    """Check the split table against the archive it indexes (a split of another archive would mix samples)."""
    missing = [c for c in SPLIT_COLUMNS if c not in split.columns]
    if missing:
        raise DataError(f"{split_dir}: split.parquet lacks column(s) {', '.join(missing)}")
    if len(split) and (split["index"].min() < 0 or split["index"].max() >= n_archive):
        raise DataError(
            f"{split_dir}: split.parquet indexes rows outside the archive's {n_archive} samples; "
            "it was made for another archive"
        )
    return split


def split_rows(split: pd.DataFrame, name: str) -> np.ndarray:
    """Archive rows of split ``name`` (train / val / test), in archive order."""
    return np.sort(split.loc[split["split"] == name, "index"].to_numpy())


def train_split_data(archive: Archive, split: pd.DataFrame) -> FitData:
    """The real **train** split's images, masks and labels, with their archive rows.

    The real side of every headline metric, and the only real data a fitted feature space (``medical``) learns from:
    val is the held-out reference and test the Dice set, so neither may shape the space they are scored in.
    """
    rows = split_rows(split, "train")
    return FitData(
        images=np.asarray(archive.images[rows], dtype=np.float32),
        labels=archive.manifest["label_idx"].to_numpy()[rows],
        masks=np.asarray(archive.masks[rows]),
        n_classes=len(archive.classes),
        rows=rows,
    )


def pick_device(requested: str) -> str:
    """``cuda`` when asked for (or ``auto``) and available, else ``cpu``."""
    if requested == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        raise ConfigError("train.device=cuda but no CUDA device is available")
    return "cpu"


def _seeds(seed: int, *names: str) -> dict[str, int]:
    # Independent streams per purpose: changing e.g. fid_samples must not change the Dice run's synthetic data.
    return {n: int(np.random.SeedSequence([seed, i]).generate_state(1)[0] >> 1) for i, n in enumerate(names)}


def distribution_metrics(
    real: np.ndarray,
    real_labels: np.ndarray,
    fake: np.ndarray,
    fake_labels: np.ndarray,
    classes: list[str],
    options: dict[str, Any],
    seed: int,
    real_groups: np.ndarray | None = None,
) -> tuple[dict[str, float], list[str]]:
    """Every registered metric overall and per class, as flat keys; plus notes on what could not be computed.

    ``real_groups`` (the patient of each real row) makes every interval's real side a cluster bootstrap over patients.
    """
    out: dict[str, float] = {}
    notes: list[str] = []
    groups = None if real_groups is None else np.asarray(real_groups)
    scopes: list[tuple[str | None, np.ndarray, np.ndarray, np.ndarray | None]] = [(None, real, fake, groups)]
    for k, cls in enumerate(classes):
        r, f = real[real_labels == k], fake[fake_labels == k]
        if min(len(r), len(f)) < 2:
            notes.append(f"class {cls}: {len(r)} real / {len(f)} synthetic samples, too few for {'/'.join(METRICS)}")
            continue
        scopes.append((cls, r, f, None if groups is None else groups[real_labels == k]))
    for name in METRICS:
        for cls, r, f, g in scopes:
            res = compute_metric(name, r, f, {**options, "real_groups": g}, seed)
            out[metric_key(name, cls)] = res["value"]
            out[metric_key(f"{name}_ci_low", cls)] = res["ci_low"]
            out[metric_key(f"{name}_ci_high", cls)] = res["ci_high"]
    return out, notes


def holdout_metrics(train: np.ndarray, val: np.ndarray | None, options: dict[str, Any], seed: int) -> dict[str, float]:
    """Every registered metric of the val split's real images scored as if synthetic, against the train split.

    The reference a generator is read against: what real images of other patients reach at these sample sizes
    (``holdout_<metric>``, overall only, no interval; nan when val has fewer than 2 images). The val split is
    usually smaller than ``eval.fid_samples``, which biases FID upwards and the k-NN metrics somewhat, so the
    baseline is a guide, not an exact ceiling.
    """
    out = {}
    for name in METRICS:
        value = float("nan")
        if val is not None and len(val) >= 2:
            value = compute_metric(name, train, val, {**options, "bootstrap": 0}, seed)["value"]
        out[HOLDOUT + name] = value
    return out


def extractor_identity(
    extractor: FeatureExtractor, role: str, prefix: str, n_real: int, n_fake: int, n_holdout: int
) -> dict[str, Any]:
    """What produced a feature space's metrics: weights fingerprint, dimension, sample counts, key prefix.

    A fitted extractor adds its training provenance (rows and data hashes, steps, seconds, whether it was cached;
    the last two, :data:`VOLATILE`, change between identical evaluations and stay out of ``metrics.json``).
    """
    info = {k: v for k, v in extractor.info.items() if isinstance(v, (str, int, float, bool))}
    return {
        "role": role,
        "prefix": prefix,
        "fingerprint": extractor.fingerprint,
        "dim": extractor.dim,
        "n_real": int(n_real),
        "n_fake": int(n_fake),
        "n_holdout": int(n_holdout),
        "metrics": list(METRICS),
        **info,
    }


def extra_space_metrics(
    extractor: FeatureExtractor,
    images: tuple[np.ndarray, np.ndarray | None, np.ndarray],
    labels: tuple[np.ndarray, np.ndarray],
    classes: list[str],
    options: dict[str, Any],
    seed: int,
    cache_dir: str | os.PathLike[str] | None,
    real_groups: np.ndarray | None = None,
    provenance: dict[str, Any] | None = None,
) -> tuple[dict[str, float], list[str], dict[str, Any]]:
    """Every registered metric (overall, per class, held-out reference) in a secondary feature space.

    ``images`` are the real train, val (None: fewer than 2) and synthetic images, ``labels`` the train and synthetic
    class indices, ``real_groups`` the train images' patients (cluster bootstrap) and ``provenance`` the identity
    fields the spaces share (:func:`components.evaluate.provenance.space_provenance`). Returns the prefixed flat
    metrics, the notes and the space's identity.
    """
    real, val, fake = images
    prefix = space_prefix(extractor.name)
    real_feats = extract_features(extractor, real, cache_dir=cache_dir, progress=False)
    val_feats = extract_features(extractor, val, cache_dir=cache_dir, progress=False) if val is not None else None
    fake_feats = extract_features(extractor, fake, progress=False)
    metrics, notes = distribution_metrics(
        real_feats, labels[0], fake_feats, labels[1], classes, options, seed, real_groups
    )
    metrics.update(holdout_metrics(real_feats, val_feats, options, seed))
    n_val = 0 if val is None else len(val)
    identity = {**extractor_identity(extractor, "extra", prefix, len(real), len(fake), n_val), **(provenance or {})}
    return prefixed(metrics, prefix), notes, identity


def collapse_metrics(consistency: dict[str, Any], weights: dict[str, int] | None = None) -> dict[str, float]:
    """Flat collapse metrics of a consistency report: the summaries and the per-class ratios.

    With ``weights`` (per class: the smaller of its real and synthetic sample counts) also
    ``diversity_ratio_weighted``, the per-class diversity ratios averaged with those weights: the plain mean
    (``diversity_ratio``) lets a class of 4 synthetic samples, whose spread is mostly noise, count as much as one of
    90 and can read 0.7 while the large classes collapsed.
    """
    out = {name: consistency[name] for name in SUMMARIES}
    for cls, ratios in consistency["per_class"].items():
        out.update({metric_key(name, cls): value for name, value in ratios.items()})
    if weights is not None:
        pairs = [
            (float(weights.get(cls, 0)), r["diversity_ratio"])
            for cls, r in consistency["per_class"].items()
            if np.isfinite(r.get("diversity_ratio", np.nan))
        ]
        total = sum(w for w, _ in pairs)
        out["diversity_ratio_weighted"] = sum(w * r for w, r in pairs) / total if total > 0 else float("nan")
    return out


def arm_key(arm: str) -> str:
    """An arm's name in metric keys: real, weighted_sampler, class_weighted_loss, real_synth, synth."""
    return {"real+synthetic": "real_synth", "synthetic": "synth"}.get(arm, arm.replace("-", "_"))


SKIPPED = "skipped: no synthetic pairs"  # the verdict of an arm that could not be trained
NO_SYNTHETIC = "no synthetic pairs (with gan-topup: every top-up candidate was rejected)"


def gain_key(arm: str) -> str:
    """Name of an arm's Dice gain over the real arm: ``dice_gain`` for the top-up arm, else ``dice_gain_<key>``."""
    return "dice_gain" if arm == TOPUP_ARM else f"dice_gain_{arm_key(arm)}"


def dice_comparison(
    real: tuple[np.ndarray, np.ndarray, np.ndarray],
    synthetic: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    test: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    lesion: list[str],
    cfg: Config,
    seed: int,
    device: str = "cpu",
) -> tuple[dict[str, float | None], dict[str, Any]]:
    """The Dice evidence: a segmenter per arm (``eval.seg_arms``) and seed, scored on the real test patients.

    ``real`` and ``synthetic`` are (images, masks, class names) of the real train split and of the synthetic pairs
    (``None``: none; then no synthetic arm may be asked for); ``test`` is (images, masks, class names, patient ids)
    of the real test split. Every arm gets the same optimiser steps (``eval.seg_steps``) and seeds (``eval.seg_seeds``,
    pooled per test slice), so arms differ only in their data. Intervals are a paired bootstrap over test patients
    within each class (:func:`components.metrics.dice.paired_bootstrap`). Flat metrics, with arm key ``k``
    (:func:`arm_key`):

    - ``dice_<k>`` (mean over lesion classes) and ``dice_<k>.<class>``: Dice on test slices with a lesion, with
      ``_ci_low`` / ``_ci_high``;
    - ``dice_gain`` (real + synthetic minus real) and ``dice_gain_<k>`` (any other arm minus real), overall and per
      class, with paired intervals; ``None`` (undefined) where the real arm's Dice is below
      ``eval.seg_min_baseline_dice`` in any seed;
    - ``dice_baseline_ok`` and ``dice_baseline_ok.<class>``: 1 when the real arm reaches that floor in every seed,
      else 0;
    - ``seg_fp_rate_<k>``: share of lesion-free test slices on which the net predicts any lesion pixel, with an
      interval over patients.

    Returns the metrics and the report section.
    """
    ev = cfg.eval
    test_images, test_masks, test_labels, test_patients = test
    test_labels = np.asarray(test_labels).astype(str)
    real_names = np.asarray(real[2]).astype(str)
    weights = class_weights(pd.Series(real_names), sorted(set(real_names)), cfg.split.sampler_power)
    seg_seeds = [seed + i for i in range(ev.seg_seeds)]
    # An empty synthetic set (every top-up candidate rejected) skips the arms that need it: their numbers are
    # undefined, and the report says why, instead of the whole evaluation failing.
    no_synthetic = synthetic is None or len(synthetic[0]) == 0
    skipped = [arm for arm in ev.seg_arms if no_synthetic and arm in SYNTHETIC_ARMS]
    runs = {
        arm: arm_scores(
            arm_train_set(arm, real, synthetic, weights),
            test_images,
            test_masks,
            seg_seeds,
            ev.seg_steps,
            ev.seg_batch_size,
            device,
        )
        for arm in ev.seg_arms
        if arm not in skipped
    }
    scores = {arm: run["dice"] for arm, run in runs.items()}
    dice = paired_bootstrap(scores, test_labels, test_patients, lesion, ev.bootstrap, seed, reference=REFERENCE_ARM)
    empty = np.isfinite(runs[REFERENCE_ARM]["fp"])  # lesion-free test slices
    fp_labels = np.where(empty, "lesion-free", "")
    fp = paired_bootstrap(
        {a: r["fp"] for a, r in runs.items()}, fp_labels, test_patients, ["lesion-free"], ev.bootstrap, seed
    )
    summary = {arm: dice_by_class(run["dice"], test_labels, lesion) for arm, run in runs.items()}
    base = summary[REFERENCE_ARM]
    # The floor: below it, in any seed, the real arm has not learned a class, and a gain would compare near-zero
    # scores (or one seed's failure, pooled with the others).
    per_seed = [dice_by_class(d, test_labels, lesion)["per_class"] for d in runs[REFERENCE_ARM]["dice_per_seed"]]
    worst = {c: float(np.min([p[c] for p in per_seed])) for c in lesion}  # nan: no test slice of the class to score
    baseline_ok: dict[str | None, bool | None] = {
        c: bool(worst[c] >= ev.seg_min_baseline_dice) if np.isfinite(worst[c]) else None for c in lesion
    }
    tested = [ok for ok in baseline_ok.values() if ok is not None]
    baseline_ok[None] = bool(tested) and all(tested)

    metrics: dict[str, float | None] = {}

    def put(name: str, scope: str | None, value: float, ci: tuple[float, float] = NAN_CI) -> None:
        metrics[metric_key(name, scope)] = value
        metrics[metric_key(f"{name}_ci_low", scope)] = ci[0]
        metrics[metric_key(f"{name}_ci_high", scope)] = ci[1]

    gains = []
    for scope in [None, *lesion]:
        metrics[metric_key("dice_baseline_ok", scope)] = (
            None if baseline_ok[scope] is None else float(baseline_ok[scope])
        )
        for arm, res in summary.items():
            value = res["dice"] if scope is None else res["per_class"][scope]
            put(f"dice_{arm_key(arm)}", scope, value, dice["value"][arm].get(scope, NAN_CI))
            if arm == REFERENCE_ARM:
                continue
            gain, ci = (
                value - (base["dice"] if scope is None else base["per_class"][scope]),
                dice["gain"][arm].get(scope, NAN_CI),
            )
            if not baseline_ok[scope]:  # undefined for the gate, not a comparison of zeros
                gain, ci = float("nan"), NAN_CI
            put(gain_key(arm), scope, gain, ci)
            verdict = gain_verdict(gain, ci, bool(baseline_ok[scope]))
            gains.append({"arm": arm, "class": scope, "gain": gain, "ci": list(ci), "verdict": verdict})
        for arm in skipped:  # undefined: the arm was not trained
            put(f"dice_{arm_key(arm)}", scope, float("nan"))
            put(gain_key(arm), scope, float("nan"))
            gains.append({"arm": arm, "class": scope, "gain": float("nan"), "ci": list(NAN_CI), "verdict": SKIPPED})
    for arm, run in runs.items():
        rate = float(np.nanmean(run["fp"])) if empty.any() else float("nan")
        put(f"seg_fp_rate_{arm_key(arm)}", None, rate, fp["value"][arm].get("lesion-free", NAN_CI))
    for arm in skipped:
        put(f"seg_fp_rate_{arm_key(arm)}", None, float("nan"))

    scored = np.isfinite(runs[REFERENCE_ARM]["dice"])
    synthetic_counts = {} if synthetic is None else pd.Series(np.asarray(synthetic[2]).astype(str)).value_counts()
    section = {
        "arms": [
            {
                "arm": arm,
                "key": arm_key(arm),
                "dice": summary[arm]["dice"],
                "ci": list(dice["value"][arm].get(None, NAN_CI)),
                "per_class": {c: summary[arm]["per_class"][c] for c in lesion},
                "per_class_ci": {c: list(dice["value"][arm].get(c, NAN_CI)) for c in lesion},
                "per_seed": [dice_by_class(s, test_labels, lesion)["dice"] for s in run["dice_per_seed"]],
                "fp_rate": metrics[f"seg_fp_rate_{arm_key(arm)}"],
                "fp_rate_ci": list(fp["value"][arm].get("lesion-free", NAN_CI)),
                "fp_area": float(np.nanmean(run["fp_area"])) if empty.any() else float("nan"),
                "final_loss": run["final_loss"],
                "train_seconds": run["seconds"],
            }
            for arm, run in runs.items()
        ],
        "gains": gains,
        "skipped": [{"arm": arm, "reason": NO_SYNTHETIC} for arm in skipped],
        "classes": [
            {
                "class": c,
                "n_test": base["n_scored"][c],
                "n_patients": len(set(np.asarray(test_patients)[scored & (test_labels == c)])),
                "baseline": base["per_class"][c],
                "baseline_worst_seed": worst[c],
                "baseline_ok": baseline_ok[c],
            }
            for c in lesion
        ],
        "baseline": base["dice"],
        "baseline_ok": baseline_ok[None],
        "min_baseline_dice": ev.seg_min_baseline_dice,
        "n_lesion_free": int(empty.sum()),
        "seeds": seg_seeds,
        "steps": ev.seg_steps,
        "batch_size": ev.seg_batch_size,
        "n_synthetic": 0 if synthetic is None else len(synthetic[0]),
        "synthetic_per_class": {str(c): int(n) for c, n in dict(synthetic_counts).items()},
        "model": f"MONAI BasicUNet{SEG_FEATURES}",
        "schedule": (
            f"Adam, one-cycle to lr {SEG_LR:g} ({SEG_WARMUP:.0%} warm-up), Dice + BCE, random left-right flips, "
            f"lesion prior {SEG_PRIOR:.0%}"
        ),
    }
    return metrics, section


def report_images(
    real: tuple[np.ndarray, np.ndarray, np.ndarray],
    fake: tuple[np.ndarray, np.ndarray, np.ndarray],
    classes: list[str],
    top_pairs: list[dict[str, Any]],
    real_ids: np.ndarray,
    real_patients: np.ndarray | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The report's pictures: per-class sample grids (synthetic and real) and the nearest-neighbour pairs.

    ``real`` and ``fake`` are (images, masks, label indices); ``top_pairs`` come from the memorization audit and
    ``real_ids`` are the sample ids of the real rows. With ``real_patients`` (the patient of each real row) a class's
    real grid takes one slice per patient in turn (:func:`components.evaluate.interpret.across_patients`), not its
    first rows, which are consecutive slices of one patient.
    """
    samples = []
    for k, cls in enumerate(classes):
        f = np.flatnonzero(fake[2] == k)[:REPORT_SAMPLES]
        r = np.flatnonzero(real[2] == k)
        if real_patients is None:
            r = r[:REPORT_SAMPLES]
        else:
            r = across_patients(r, np.asarray(real_patients)[r], REPORT_SAMPLES)
        if len(f) or len(r):
            samples.append(
                {
                    "class": cls,
                    "synthetic": png_base64(pair_grid(fake[0][f], fake[1][f])),
                    "real": png_base64(pair_grid(real[0][r], real[1][r])),
                    "n_synthetic": int(len(f)),
                    "n_real": int(len(r)),
                    "n_real_patients": None
                    if real_patients is None
                    else len(set(np.asarray(real_patients)[r].astype(str).tolist())),
                }
            )
    neighbours = [
        {
            "similarity": p["similarity"],
            "flagged": p["flagged"],
            "class": classes[int(fake[2][p["fake"]])],
            "synthetic_index": p["fake"],
            "real_sample_id": str(real_ids[p["real"]]),
            "synthetic": png_base64(pair_grid(fake[0][[p["fake"]]], fake[1][[p["fake"]]])),
            "real": png_base64(pair_grid(real[0][[p["real"]]], real[1][[p["real"]]])),
        }
        for p in top_pairs
    ]
    return samples, neighbours


def curve_series(curve: dict[str, Any]) -> dict[str, list[float | None]]:
    """The curves evaluate logs by training step: ``fid_curve`` and ``<ratio>_curve`` overall and per class."""
    out = {"fid_curve": curve["fid"]}
    out.update({f"{name}_curve": curve[name] for name in SUMMARIES if name in curve})
    for cls, ratios in (curve.get("per_class") or {}).items():
        out.update({metric_key(f"{name}_curve", cls): values for name, values in ratios.items()})
    return out


def _losses(model_dir: Path) -> dict[str, list[float]]:
    path = model_dir / "losses.csv"
    if not path.is_file():
        return {}
    df = pd.read_csv(path)
    if "step" not in df.columns or df.empty:
        return {}
    df = df.select_dtypes("number")
    if len(df) > MAX_CURVE_POINTS:  # keep report.json small: evenly spaced rows, always including the last
        df = df.iloc[np.unique(np.linspace(0, len(df) - 1, MAX_CURVE_POINTS).round().astype(int))]
    return {c: df[c].astype(float).tolist() for c in df.columns}


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def run_topup(
    archive: Archive,
    split: pd.DataFrame,
    chosen: tuple[Any, Path, int],
    fit: FitData,
    cfg: Config,
    out_dir: str | os.PathLike[str],
    device: str,
    cache_dir: str | os.PathLike[str] | None,
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Build the top-up of the chosen generator (``(module, file, step)``) in ``out_dir``: its summary and pairs.

    The pairs are (images, masks, class indices). The filter's feature space (``topup.feature_space``) is fitted on
    ``fit``, the real train split, like the evaluation's own. The pairs are read back through
    :func:`components.topup.core.train_view` (train rows only).
    """
    from components.topup.core import build_topup, train_view

    generator, generator_file, step = chosen
    space = get_extractor(cfg.topup.feature_space, device, fit=fit, cache_dir=cache_dir)
    summary = build_topup(
        archive,
        split,
        generator,
        generator_file,
        step,
        lambda images: extract_features(space, images, progress=False),
        out_dir,
        cfg,
    )
    summary["feature_space"] = {"name": space.name, "fingerprint": space.fingerprint}
    view = train_view(archive, split, out_dir)
    return summary, (view.images[view.synthetic], view.masks[view.synthetic], view.labels[view.synthetic])


def topup_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """Flat metrics of a top-up: its size and shortfall, per class what was kept and the filter's acceptance rate."""
    out = {"topup_n": float(summary["n"]), "topup_shortfall": float(summary["shortfall"])}
    for cls, info in summary["per_class"].items():
        out[metric_key("topup_kept", cls)] = float(info["kept"])
        out[metric_key("topup_acceptance_rate", cls)] = info["acceptance_rate"]
    return out


def log_topup(tracker: Any, summary: dict[str, Any], topup_dir: Path, out: Path) -> None:
    """Log the top-up archive (``topup/``), its DVC pointer (``topup/topup.dvc``) and lineage tags to the run."""
    from components.topup.core import POINTER_FILE

    tracker.log_artifact(topup_dir, "topup/dataset")
    dvc = summary.get("dvc", {})
    if dvc.get("tracked"):
        atomic_write_text(out / POINTER_FILE, dvc["pointer"])
        tracker.log_artifact(out / POINTER_FILE, "topup")
    tracker.set_tags(
        {
            "topup.n": summary["n"],
            "topup.generator_sha256": summary["generator_sha256"],
            "topup.dvc_md5": dvc.get("md5", "not versioned"),
            "topup.dvc_remote": dvc.get("remote", ""),
        }
    )


def evaluate(
    archive_dir: str | os.PathLike[str],
    split_dir: str | os.PathLike[str],
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    cfg: Config,
    tracking: dict[str, str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    validation: dict[str, Any] | list[dict[str, Any]] | None = None,
    topup_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Evaluate the EMA generator in ``model_dir``; write metrics.json, report.json, report.html to ``out_dir``.

    ``tracking`` (``tracking_uri``, ``experiment``, ``run_key``) logs the metrics as ``eval/<key>`` to the
    pipeline's MLflow run; ``cache_dir`` keeps real-image features (and fitted feature extractors) between runs;
    ``validation`` (the validate stage's summary) is shown in the report, next to the split check rebalance left in
    ``split_dir``. With ``split.strategy=gan-topup`` and ``topup_dir``, the selected generator's synthetic top-up is
    built there (:mod:`components.topup.core`) and is the synthetic side of the Dice comparison. Returns metrics.json's
    content: the flat metrics (``None`` where a value is undefined) and
    ``extractors`` (:data:`EXTRACTORS_KEY`), the identity of every feature space behind them.
    """
    # heavy, and not needed to import this module
    from components.fsio import atomic_write
    from components.gan.sampling import GENERATOR_FILE, generate, load_generator

    timings: dict[str, float] = {}
    clock = time.perf_counter()
    ev = cfg.eval
    model_dir, out = Path(model_dir), Path(out_dir)
    archive = open_archive(archive_dir)
    classes, lesion = archive.classes, archive.lesion_classes
    split = check_split(load_split(split_dir), split_dir, len(archive))
    device = pick_device(cfg.train.device)
    # new streams go last: the earlier ones keep their values
    seeds = _seeds(cfg.seed, "fid", "metrics", "seg_synth", "seg", "champion", "headline", "interpret")

    generator, gmeta = load_generator(model_dir, device=device)
    if list(gmeta.get("classes", classes)) != classes:
        raise DataError(
            f"{model_dir}: generator classes {gmeta.get('classes')} differ from the archive's "
            f"{classes}; evaluate the model on the data it was trained on"
        )
    label_idx = archive.manifest["label_idx"].to_numpy()
    train_idx = split_rows(split, "train")
    test_idx = split_rows(split, "test")
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise DataError(
            f"{split_dir}: the split has {len(train_idx)} train and {len(test_idx)} test samples; evaluation needs both"
        )
    # the real train split: every headline metric's real side, and all a fitted feature space may learn from
    fit = train_split_data(archive, split)
    real_images, real_masks, real_labels = fit.images, fit.masks, fit.labels
    patient_of = split.set_index("index")["patient"]
    train_patients = patient_of.loc[train_idx].to_numpy()  # intervals resample patients: slices are correlated
    counts = np.bincount(real_labels, minlength=len(classes)).tolist()
    fake_labels = synthetic_label_plan(counts, ev.fid_samples)
    extractor = get_extractor(ev.feature_extractor, device, fit=fit, cache_dir=cache_dir)
    timings["load"] = time.perf_counter() - clock
    clock = time.perf_counter()
    extras = [
        get_extractor(name, device, fit=fit, cache_dir=cache_dir)
        for name in dict.fromkeys(ev.extra_extractors)
        if name != ev.feature_extractor
    ]
    timings["extra_extractors_fit"] = time.perf_counter() - clock

    # real features: the train split's (every headline metric) and the val split's (selection, held-out baseline)
    clock = time.perf_counter()
    real_feats = extract_features(extractor, real_images, cache_dir=cache_dir)
    val_idx = split_rows(split, "val")
    val_images = np.asarray(archive.images[val_idx], dtype=np.float32) if len(val_idx) >= 2 else None
    val_feats = extract_features(extractor, val_images, cache_dir=cache_dir) if val_images is not None else None
    val_patients = patient_of.loc[val_idx].to_numpy()
    timings["features_real"] = time.perf_counter() - clock

    # collapse statistics of the real pairs, which every candidate's curve samples and the headline's are read against
    names_real = np.asarray(classes)[real_labels]
    real_collapse = class_statistics(real_images, real_masks, names_real, classes, lesion)

    def curve_collapse(images: np.ndarray, masks: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        synth = class_statistics(images, masks, np.asarray(classes)[labels], classes, lesion)
        return collapse_ratios(real_collapse, synth)

    # 0. which generator: the snapshot of lowest val FID, or the final model --------------------------------------
    clock = time.perf_counter()
    final_step = int(gmeta.get("step", 0))
    curve_inputs = (model_dir, final_step, fake_labels, seeds["fid"], ev.fid_curve_samples, extractor, device)
    curve_options = {"collapse": curve_collapse}
    selection: dict[str, Any] = {
        "mode": ev.select_snapshot,
        "steps": [],
        "fid": [],
        "selected_step": final_step,
        "final_step": final_step,
        "notes": [],
    }
    candidates, chosen_path, model_meta = None, None, gmeta
    metrics_selection: dict[str, float] = {}
    if ev.select_snapshot == "best_fid":
        candidates = candidate_features(*curve_inputs, **curve_options)  # the curve's samples: scored on val here
        chosen_path = choose_generator(
            candidates, selection, {"val": val_feats, "train": real_feats}, ev.select_min_diversity
        )
        if selection["selected_step"] != final_step:
            generator, model_meta = load_generator(chosen_path, device=device)
        # does the winner beat the final model beyond noise? paired over the same latents, patients resampled
        on_val = selection.get("real_split", "val") == "val"
        selection["gap"] = selection_gap(
            candidates,
            selection["selected_step"],
            val_feats if on_val else real_feats,
            val_patients if on_val else train_patients,
            ev.bootstrap,
            seeds["metrics"],
        )
        if selection["gap"].get("compared"):
            gap = selection["gap"]
            metrics_selection = {
                "selection_fid_gap": gap["gap"],
                "selection_fid_gap_ci_low": gap["ci"][0],
                "selection_fid_gap_ci_high": gap["ci"][1],
            }
    timings["selection"] = time.perf_counter() - clock

    # 1. fidelity ------------------------------------------------------------------------------------------------
    # The headline samples have latents of their own: the selection chose its snapshot on the "fid" stream's latents,
    # and scoring the winner on the same latents would favour it.
    clock = time.perf_counter()
    fake_images, fake_masks = generate(generator, fake_labels, seed=seeds["headline"])
    timings["generate"] = time.perf_counter() - clock
    clock = time.perf_counter()
    fake_feats = extract_features(extractor, fake_images)
    timings["features_synthetic"] = time.perf_counter() - clock
    clock = time.perf_counter()
    options = asdict(ev)
    metrics, notes = distribution_metrics(
        real_feats, real_labels, fake_feats, fake_labels, classes, options, seeds["metrics"], train_patients
    )
    metrics.update(holdout_metrics(real_feats, val_feats, options, seeds["metrics"]))
    metrics.update(metrics_selection)
    n_val = 0 if val_feats is None else len(val_feats)
    provenance = space_provenance((real_images, real_labels, train_patients), fake_labels, val_images, classes)
    spaces = {
        extractor.name: {
            **extractor_identity(extractor, "primary", "", len(real_feats), len(fake_feats), n_val),
            **provenance,
            "also": list(AUDIT_KEYS),  # the memorization audit runs in this space too
        }
    }
    timings["distribution_metrics"] = time.perf_counter() - clock
    for extra in extras:  # the same metrics in every further feature space, from the same images
        clock = time.perf_counter()
        extra_metrics, extra_notes, spaces[extra.name] = extra_space_metrics(
            extra,
            (real_images, val_images, fake_images),
            (real_labels, fake_labels),
            classes,
            options,
            seeds["metrics"],
            cache_dir,
            real_groups=train_patients,
            provenance=provenance,
        )
        metrics.update(extra_metrics)
        notes += [n for n in extra_notes if n not in notes]
        timings[f"space_{extra.name}"] = time.perf_counter() - clock
    clock = time.perf_counter()
    metrics["selected_step"] = float(selection["selected_step"])
    metrics["final_step"] = float(final_step)
    if candidates is None:  # no selection: the curve's own samples (the headline's latents are another stream)
        candidates = candidate_features(*curve_inputs, **curve_options)
    curve = fid_curve(candidates, real_feats)
    timings["fid_curve"] = time.perf_counter() - clock

    # 1b. the registry's champion, scored here like the challenger (paired FID improvement for the gate) --------------
    clock = time.perf_counter()
    tracking_uri = (tracking or {}).get("tracking_uri")
    champion = (
        load_champion(tracking_uri, cfg.registry.model_name, classes, cfg.data.image_size, device)
        if ev.compare_champion
        else (None, "eval.compare_champion is off")
    )
    champion_metrics, champion_section = champion_comparison(
        champion, generator, real_feats, fake_labels, extractor, seeds["champion"], ev.bootstrap
    )
    metrics.update(champion_metrics)
    timings["champion"] = time.perf_counter() - clock

    # 2. the synthetic top-up of the rare classes (split.strategy=gan-topup), from the selected generator ---------
    clock = time.perf_counter()
    topup = None
    if cfg.split.strategy == "gan-topup" and topup_dir is not None:
        chosen = (generator, chosen_path or model_dir / GENERATOR_FILE, int(selection["selected_step"]))
        topup = run_topup(archive, split, chosen, fit, cfg, topup_dir, device, cache_dir)
        metrics.update(topup_metrics(topup[0]))
    elif topup_dir is not None:  # the output says why it holds no samples
        Path(topup_dir).mkdir(parents=True, exist_ok=True)
        note = {"built": False, "reason": f"split.strategy={cfg.split.strategy} (the top-up needs gan-topup)"}
        atomic_write_text(Path(topup_dir) / "topup.json", json.dumps(note))
    timings["topup"] = time.perf_counter() - clock

    # 3. utility: Dice real vs real + synthetic (the top-up, else pairs drawn here), same optimiser budget --------
    clock = time.perf_counter()
    if topup is not None:
        seg_images, seg_masks, seg_labels = topup[1]
    else:
        lesion_idx = [classes.index(c) for c in lesion]
        seg_labels = np.repeat(np.asarray(lesion_idx, dtype=np.int64), ev.synth_per_class)
        seg_images, seg_masks = generate(generator, seg_labels, seed=seeds["seg_synth"])
    test_images = np.asarray(archive.images[test_idx], dtype=np.float32)
    test_masks = np.asarray(archive.masks[test_idx])
    test_names = np.asarray(classes)[label_idx[test_idx]]
    test_patients = split.set_index("index").loc[test_idx, "patient"].to_numpy()
    dice_metrics, dice_section = dice_comparison(
        real=(real_images, real_masks, names_real),
        synthetic=(seg_images, seg_masks, np.asarray(classes)[seg_labels]),
        test=(test_images, test_masks, test_names, test_patients),
        lesion=lesion,
        cfg=cfg,
        seed=seeds["seg"],
        device=device,
    )
    metrics.update(dice_metrics)
    timings["dice"] = time.perf_counter() - clock

    # 4. consistency, 5. memorization ------------------------------------------------------------------------
    clock = time.perf_counter()
    names_fake = np.asarray(classes)[fake_labels]
    consistency = consistency_report(
        pair_statistics(real_images, real_masks, names_real, classes, lesion),
        pair_statistics(fake_images, fake_masks, names_fake, classes, lesion),
    )
    metrics["mask_contrast_gap"] = consistency["contrast_gap"]
    metrics["mask_label_mismatch"] = consistency["label_mismatch"]
    sizes = counts_per_class(fake_labels, classes), counts_per_class(real_labels, classes)
    metrics.update(collapse_metrics(consistency, {c: min(sizes[0][c], sizes[1][c]) for c in classes}))
    for cls, stats in consistency["synthetic"].items():
        metrics[metric_key("mask_contrast_synth", cls)] = stats["contrast"]
        metrics[metric_key("mask_contrast_real", cls)] = consistency["real"].get(cls, {}).get("contrast", np.nan)
    audit = memorization_audit(fake_feats, real_feats, ev.nn_copy_threshold, top_k=REPORT_NEIGHBOURS)
    metrics["nn_copy_fraction"] = audit["copy_fraction"]
    metrics["nn_similarity_max"] = audit["similarity_max"]
    metrics["nn_similarity_mean"] = audit["similarity_mean"]
    metrics["nn_real_baseline_median"] = audit["real_baseline_median"]
    metrics["n_synthetic"] = float(len(fake_labels))
    metrics["n_real_train"] = float(len(train_idx))
    timings["audit"] = time.perf_counter() - clock

    # per-class trust: does each class look like itself to a classifier of real data; does any class copy
    clock = time.perf_counter()
    classifier, _ = fitted_network(fit, Path(cache_dir) if cache_dir else None)
    held_out = (val_images, label_idx[val_idx]) if val_images is not None else None
    trust, trust_section = trust_metrics(
        classifier,
        (fake_images, fake_labels),
        held_out,
        (fake_feats, fake_labels, real_feats, real_labels),
        classes,
        ev.nn_copy_threshold,
    )
    metrics.update(trust)
    timings["trust"] = time.perf_counter() - clock

    # interpretability: latent walks per class, where the discriminator looks (a handful of samples: < 1 s on a CPU)
    clock = time.perf_counter()
    interpret = interpretability(
        generator,
        model_dir,
        (real_images, real_masks, real_labels, train_patients),
        (fake_images, fake_masks, fake_labels),
        classes,
        seeds["interpret"],
        device,
        int(selection["selected_step"]),
    )
    timings["interpretability"] = time.perf_counter() - clock

    # 6. outputs ---------------------------------------------------------------------------------------------
    stable = {name: {k: v for k, v in ident.items() if k not in VOLATILE} for name, ident in spaces.items()}
    metrics = json_safe({**metrics, EXTRACTORS_KEY: stable})
    samples, neighbours = report_images(
        (real_images, real_masks, real_labels),
        (fake_images, fake_masks, fake_labels),
        classes,
        audit["top"],
        archive.manifest["sample_id"].to_numpy()[train_idx],
        train_patients,
    )
    distribution = {
        s: {
            c: int(n)
            for c, n in split.loc[split["split"] == s, "label"].value_counts().reindex(classes).fillna(0).items()
        }
        for s in ("train", "val", "test")
    }
    meta = archive.meta
    report = {
        "title": "medgan-ops evaluation report",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run_key": (tracking or {}).get("run_key"),
        "preset": cfg.preset,
        "dataset": {
            "version": meta.get("dataset_version"),
            "hash": meta.get("dataset_hash"),
            "n": meta.get("n"),
            "image_size": meta.get("image_size"),
            "classes": classes,
            "lesion_classes": lesion,
            "split_sizes": " / ".join(str(int((split["split"] == s).sum())) for s in ("train", "val", "test")),
        },
        "model": {
            "name": model_dir.name,
            "path": str(model_dir),
            "options": _read_json(model_dir / "training_options.json"),
            "generator": {k: v for k, v in model_meta.items() if isinstance(v, (str, int, float, bool, list, dict))},
        },
        "config": {**asdict(ev), "seed": cfg.seed, "device": device, "segmenter": f"BasicUNet{SEG_FEATURES}"},
        "metrics": metrics,
        "extractors": spaces,
        "notes": notes,
        "dice": dice_section,
        "samples": samples,
        "memorization": {k: v for k, v in audit.items() if k not in ("nn_index", "similarity", "top")},
        "neighbours": neighbours,
        "trust": trust_section,
        "consistency": consistency,
        "losses": _losses(model_dir),
        "fid_curve": {**curve, "n_samples_headline": len(fake_labels)},
        "selection": selection,
        "champion": champion_section,
        "champion_registry": champion_spaces((tracking or {}).get("tracking_uri"), cfg.registry.model_name),
        "interpretability": interpret,
        "topup": {"built": True, **topup[0]} if topup is not None else {"built": False, "strategy": cfg.split.strategy},
        "class_distribution": distribution,
        "validation": validation,
        "split_validation": load_split_check(split_dir),
        "timings": {**timings, "feature_img_per_s": len(fake_feats) / max(timings["features_synthetic"], 1e-9)},
    }
    out.mkdir(parents=True, exist_ok=True)
    if chosen_path is not None:  # the weights the metrics describe, for the register stage
        atomic_write(out / GENERATOR_FILE, lambda tmp: shutil.copyfile(chosen_path, tmp))
    else:  # no selection: register takes the final model; a file left by an earlier evaluation must not win
        (out / GENERATOR_FILE).unlink(missing_ok=True)
    html_path = write_report(report, out)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True))
    if tracking:
        from components.tracking import RunTracker

        tracker = RunTracker.of(tracking)
        tracker.log_metrics({f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
        tracker.set_tags(extractor_tags(metrics, "eval.extractor."))
        for name, series in curve_series(curve).items():
            for step, value in zip(curve["steps"], series, strict=True):
                if value is not None:
                    tracker.log_metrics({f"eval/{name}": value}, step=step)
        for step, value in zip(selection["steps"], selection["fid"], strict=True):
            if value is not None:
                tracker.log_metrics({"eval/selection_fid": value}, step=step)
        tracker.log_artifact(out / "metrics.json", "eval")
        tracker.log_artifact(out / "report.json", "eval")
        tracker.log_artifact(html_path, "report")
        if topup is not None:
            log_topup(tracker, topup[0], Path(topup_dir), out)
    return metrics
