"""Minority top-up: synthetic labelled pairs of the rare classes, filtered, written and versioned as a dataset.

With ``split.strategy=gan-topup``, after training the selected generator synthesizes every class whose train count
is below ``topup.target_ratio`` x the largest class's, up to that target (:func:`plan_topup`). Each candidate passes
a per-class quality filter against the real **train** samples of its class (:func:`filter_candidates`), in this
order, the first failed check naming the rejection:

- ``mask``: a lesion class needs a non-empty mask whose area lies within ``[min / f, max * f]`` of the class's real
  lesion areas (``f = topup.mask_area_factor``); any other class an empty mask;
- ``contrast``: a lesion class's mask must sit on something that differs from its surroundings as the real lesions
  of the class do: mean inside minus outside of the real median's sign and at least ``topup.min_contrast_fraction``
  of its size;
- ``outlier``: the realism score (Kynkaenniemi et al. 2019, "Improved precision and recall") in a feature space the
  GAN never trained against (``topup.feature_space``, by default the medical CNN fitted on the real train split):
  ``max_i r_k(real_i) / ||fake - real_i||`` over the class's real samples, ``r_k`` a real sample's distance to its
  k-th nearest real neighbour of the class; below ``topup.min_realism`` (1: outside every real k-NN ball) it is
  rejected;
- ``copy``: cosine similarity (features centred on the class's real mean) to the nearest real train sample of the
  class above ``topup.max_copy_similarity``: a near copy, which would leak a training patient into the "synthetic"
  data.

The accepted pairs (the first ``need`` in draw order) are written as an archive like ingest's
(:mod:`components.archive`; ``archive.json`` carries ``"synthetic": true``) plus ``topup.parquet``: one row per sample
with ``synthetic=True``, ``split="train"``, the generator's SHA-256 and step, the draw seed and index, and the filter
scores. The set is pushed to a DVC remote (:func:`version_with_dvc`; the ``.dvc`` pointer is returned, so any DVC
project with that remote can ``dvc pull`` exactly this set) and logged to MLflow by the caller.

Train only, always: a top-up archive cannot be split (rebalance refuses it), and :func:`train_view`, the one way the
pipeline joins it to the real data, puts its rows in the train split and refuses a top-up whose rows say otherwise
or that was made for another archive.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from components.archive import Archive, ArchiveWriter, open_archive
from components.config import Config, TopupConfig
from components.errors import ConfigError, DataError
from components.metrics.consistency import mask_contrast
from components.metrics.memorization import nearest_real
from components.samples import content_hash

TOPUP_FILE = "topup.parquet"
POINTER_FILE = "topup.dvc"
REASONS = ("mask", "contrast", "outlier", "copy")
SCORE_COLUMNS = ("mask_area", "contrast", "realism", "nn_similarity")
TOPUP_COLUMNS = (
    "sample_id",
    "label",
    "label_idx",
    "synthetic",
    "split",
    "generator_sha256",
    "generator_step",
    "seed",
    "draw",
    *SCORE_COLUMNS,
)


def plan_topup(train_counts: dict[str, int], target_ratio: float) -> dict[str, int]:
    """Synthetic samples to add per class: up to ``ceil(target_ratio * largest count)``; 0 for classes above it.

    A class without real train samples gets none: its filter would have no real reference to judge candidates by.
    """
    if not 0 <= target_ratio <= 1:
        raise ConfigError(f"topup.target_ratio must be in [0, 1], got {target_ratio}")
    largest = max(train_counts.values(), default=0)
    target = math.ceil(target_ratio * largest)
    return {c: max(0, target - n) if n > 0 else 0 for c, n in train_counts.items()}


def realism_scores(fake: np.ndarray, real: np.ndarray, k: int) -> np.ndarray:
    """Realism score of every ``fake`` row against ``real`` (Kynkaenniemi et al. 2019), Euclidean distances.

    ``max_i r_k(real_i) / ||fake - real_i||`` with ``r_k`` the distance of ``real_i`` to its k-th nearest other real
    row (``k`` at most ``len(real) - 1``): at least 1 exactly when the fake row lies inside some real row's k-NN ball.
    ``nan`` for fewer than 2 real rows.
    """
    fake, real = np.asarray(fake, dtype=np.float64), np.asarray(real, dtype=np.float64)
    if len(real) < 2:
        return np.full(len(fake), np.nan)
    k = max(1, min(int(k), len(real) - 1))
    within = np.sqrt(np.maximum(_sq_dist(real, real), 0))
    radii = np.partition(within, k, axis=1)[:, k]  # column 0 of a sorted row is the row itself
    between = np.sqrt(np.maximum(_sq_dist(fake, real), 0))
    return (radii[None, :] / np.maximum(between, 1e-12)).max(axis=1)


def _sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T


@dataclass
class ClassReference:
    """What the filter judges a class's candidates against: the class's real train pairs and their features."""

    images: np.ndarray
    masks: np.ndarray
    feats: np.ndarray
    lesion: bool


def filter_candidates(
    images: np.ndarray, masks: np.ndarray, feats: np.ndarray, ref: ClassReference, tc: TopupConfig, k: int
) -> pd.DataFrame:
    """Scores of one class's candidates and the filter's verdict: ``accepted`` and ``reason`` (first failed check).

    Columns :data:`SCORE_COLUMNS` + ``accepted`` + ``reason`` (``""`` when accepted); see the module docstring.
    """
    n = len(images)
    area = np.asarray(masks).reshape(n, -1).astype(bool).mean(axis=1) if n else np.zeros(0)
    contrast = mask_contrast(images, masks) if n else np.zeros(0)
    realism = realism_scores(feats, ref.feats, k)
    similarity = nearest_real(feats, ref.feats)[1] if n and len(ref.feats) else np.full(n, np.nan)
    if ref.lesion:
        real_area = np.asarray(ref.masks).reshape(len(ref.masks), -1).astype(bool).mean(axis=1)
        real_area = real_area[real_area > 0]
        if len(real_area):
            low, high = real_area.min() / tc.mask_area_factor, real_area.max() * tc.mask_area_factor
            mask_ok = (area > 0) & (area >= low) & (area <= high)
        else:  # no real lesion to compare with: any non-empty mask
            mask_ok = area > 0
        real_contrast = mask_contrast(ref.images, ref.masks)
        real_contrast = real_contrast[np.isfinite(real_contrast)]
        median = float(np.median(real_contrast)) if len(real_contrast) else 0.0
        with np.errstate(invalid="ignore"):
            contrast_ok = np.isfinite(contrast) & (np.sign(contrast) * np.sign(median) >= 0)
            contrast_ok &= np.abs(contrast) >= tc.min_contrast_fraction * abs(median)
    else:
        mask_ok = area == 0
        contrast_ok = np.ones(n, dtype=bool)
    with np.errstate(invalid="ignore"):
        outlier_ok = ~(realism < tc.min_realism)  # nan (too few reals to judge): not rejected here
        copy_ok = ~(similarity > tc.max_copy_similarity)
    reason = np.full(n, "", dtype=object)
    for name, ok in zip(REASONS[::-1], (copy_ok, outlier_ok, contrast_ok, mask_ok), strict=True):
        reason[~ok] = name  # the last assignment is the first check: the reported reason
    return pd.DataFrame(
        {
            "mask_area": area,
            "contrast": contrast,
            "realism": realism,
            "nn_similarity": similarity,
            "accepted": mask_ok & contrast_ok & outlier_ok & copy_ok,
            "reason": reason,
        }
    )


def class_seed(seed: int, cls: str) -> int:
    """The draw seed of a class's candidates: fixed by the run's seed and the class name."""
    return int.from_bytes(hashlib.sha256(f"topup|{seed}|{cls}".encode()).digest()[:7], "big")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes (the generator's identity in the top-up rows)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def synthesize(
    archive: Archive,
    split: pd.DataFrame,
    generator: Any,
    generator_file: str | os.PathLike[str],
    generator_step: int,
    embed: Any,
    cfg: Config,
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame, dict[str, Any]]:
    """Draw, filter and keep the top-up: ``(images, masks, rows, summary)``.

    ``embed(images) -> features`` is the filter's feature space (see the module docstring); ``rows`` has
    :data:`TOPUP_COLUMNS` minus ``sample_id`` (the archive writer sets it); ``summary`` per class: ``need``,
    ``drawn``, ``accepted``, ``kept``, ``shortfall``, ``rejected`` by reason, and the acceptance rate.
    """
    from components.gan.sampling import generate

    tc = cfg.topup
    if tc.max_draw_factor < 1:
        raise ConfigError(f"topup.max_draw_factor must be at least 1, got {tc.max_draw_factor}")
    classes, lesion = archive.classes, set(archive.lesion_classes)
    train_rows = np.sort(split.loc[split["split"] == "train", "index"].to_numpy())
    labels = archive.manifest["label_idx"].to_numpy()[train_rows]
    counts = {c: int((labels == i).sum()) for i, c in enumerate(classes)}
    need = plan_topup(counts, tc.target_ratio)
    sha = file_sha256(generator_file)
    kept_images, kept_masks, kept_rows = [], [], []
    summary: dict[str, Any] = {"train_counts": counts, "per_class": {}}
    for i, cls in enumerate(classes):
        if need[cls] == 0:
            continue
        rows = train_rows[labels == i]
        real_images = np.asarray(archive.images[rows], dtype=np.float32)
        ref = ClassReference(real_images, np.asarray(archive.masks[rows]), embed(real_images), cls in lesion)
        seed = class_seed(cfg.seed, cls)
        drawn = need[cls] * tc.max_draw_factor
        images, masks = generate(generator, np.full(drawn, i, dtype=np.int64), seed=seed)
        scores = filter_candidates(images, masks, embed(images), ref, tc, cfg.eval.manifold_k)
        keep = np.flatnonzero(scores["accepted"].to_numpy())[: need[cls]]
        kept_images.append(images[keep])
        kept_masks.append(masks[keep])
        kept_rows.append(
            scores.iloc[keep][list(SCORE_COLUMNS)].assign(
                label=cls,
                label_idx=i,
                synthetic=True,
                split="train",
                generator_sha256=sha,
                generator_step=int(generator_step),
                seed=seed,
                draw=keep,
            )
        )
        rejected = scores.loc[~scores["accepted"], "reason"].value_counts()
        summary["per_class"][cls] = {
            "real": counts[cls],
            "need": need[cls],
            "drawn": drawn,
            "accepted": int(scores["accepted"].sum()),
            "kept": len(keep),
            "shortfall": need[cls] - len(keep),
            "acceptance_rate": float(scores["accepted"].mean()),
            "rejected": {r: int(rejected.get(r, 0)) for r in REASONS},
        }
    size = archive.images.shape[1]
    images = np.concatenate(kept_images) if kept_images else np.zeros((0, size, size), np.float32)
    masks = np.concatenate(kept_masks) if kept_masks else np.zeros((0, size, size), np.uint8)
    table = pd.concat(kept_rows, ignore_index=True) if kept_rows else pd.DataFrame(columns=TOPUP_COLUMNS[1:])
    summary.update(
        generator_sha256=sha,
        generator_step=int(generator_step),
        target_ratio=tc.target_ratio,
        n=len(images),
        shortfall=int(sum(v["shortfall"] for v in summary["per_class"].values())),
    )
    return images, masks, table, summary


def write_topup(
    out_dir: str | os.PathLike[str],
    images: np.ndarray,
    masks: np.ndarray,
    table: pd.DataFrame,
    archive: Archive,
    summary: dict[str, Any],
) -> Path:
    """Write the top-up as an archive made for ``archive``, ``topup.parquet`` inside; all or nothing (atomic)."""
    size = int(archive.meta["image_size"])
    table = table.reset_index(drop=True)
    table = table.assign(sample_id=[content_hash(images[j], masks[j])[:16] for j in range(len(images))])
    with ArchiveWriter(out_dir, capacity=max(len(images), 1), image_size=size) as writer:
        for j, row in enumerate(table.itertuples(index=False)):
            writer.add(
                images[j],
                masks[j],
                {
                    "source_file": f"synthetic/{row.label}/{j:05d}",
                    "source_sha256": row.generator_sha256,
                    "patient": f"synthetic-{str(row.generator_sha256)[:12]}",
                    "label": row.label,
                    "label_idx": int(row.label_idx),
                    "modality": "SYN",
                    "pixel_spacing_row": float("nan"),
                    "pixel_spacing_col": float("nan"),
                    "orig_rows": size,
                    "orig_cols": size,
                    "frame": 0,
                },
            )
        meta = {
            "classes": archive.classes,
            "lesion_classes": archive.lesion_classes,
            "synthetic": True,
            "made_for": archive.meta.get("dataset_hash", ""),
            "topup": summary,
            "dataset_version": {"tracked": False, "path": Path(out_dir).name},
        }
        return writer.commit(meta, sidecars={TOPUP_FILE: table[list(TOPUP_COLUMNS)]})


# ---------------------------------------------------------------------------------------------------------------
# reading it back: train only


@dataclass
class TrainView:
    """The train split's real pairs followed by the top-up's synthetic ones; ``synthetic`` flags each row."""

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray  # class indices
    synthetic: np.ndarray  # bool


def open_topup(path: str | os.PathLike[str]) -> tuple[Archive, pd.DataFrame]:
    """Open a top-up archive and its ``topup.parquet``; :class:`DataError` when it is not one or is inconsistent."""
    archive = open_archive(path)
    table_file = Path(path) / TOPUP_FILE
    if not archive.meta.get("synthetic") or not table_file.is_file():
        raise DataError(f"{path}: not a top-up archive (no synthetic flag or no {TOPUP_FILE})")
    table = pd.read_parquet(table_file)
    if len(table) != len(archive) or not np.array_equal(
        table["sample_id"].to_numpy(), archive.manifest["sample_id"].to_numpy()
    ):
        raise DataError(f"{path}: {TOPUP_FILE} does not describe the archive's samples; rebuild the top-up")
    return archive, table


def check_train_only(table: pd.DataFrame, where: str) -> None:
    """Raise :class:`DataError` unless every synthetic row is flagged ``synthetic`` and assigned to ``train``."""
    bad = table.loc[~table["synthetic"].astype(bool) | (table["split"] != "train")]
    if len(bad):
        raise DataError(
            f"{where}: {len(bad)} top-up row(s) are not synthetic train rows (splits {sorted(set(bad['split']))}); "
            "synthetic samples may only ever join the train split"
        )


def train_view(archive: Archive, split: pd.DataFrame, topup_dir: str | os.PathLike[str] | None) -> TrainView:
    """The real train split plus, with ``topup_dir``, the top-up made for this archive (train rows only).

    Refuses a top-up made for another archive (its ``made_for`` dataset hash differs), one whose classes differ, and
    one with rows that are not synthetic train rows. Val and test rows never enter: only ``split == "train"`` rows of
    the real archive are read, and the top-up is appended to those.
    """
    rows = np.sort(split.loc[split["split"] == "train", "index"].to_numpy())
    images = np.asarray(archive.images[rows], dtype=np.float32)
    masks = np.asarray(archive.masks[rows])
    labels = archive.manifest["label_idx"].to_numpy()[rows]
    synthetic = np.zeros(len(rows), dtype=bool)
    if topup_dir is None:
        return TrainView(images, masks, labels, synthetic)
    top, table = open_topup(topup_dir)
    if top.meta.get("made_for") != archive.meta.get("dataset_hash") or top.classes != archive.classes:
        raise DataError(
            f"{topup_dir}: a top-up made for another dataset (archive {top.meta.get('made_for', '?')[:12]}, classes "
            f"{top.classes}); rebuild it for {archive.path}"
        )
    check_train_only(table, str(topup_dir))
    return TrainView(
        np.concatenate([images, np.asarray(top.images, dtype=np.float32)]),
        np.concatenate([masks, np.asarray(top.masks)]),
        np.concatenate([labels, top.manifest["label_idx"].to_numpy()]),
        np.concatenate([synthetic, np.ones(len(top), dtype=bool)]),
    )


# ---------------------------------------------------------------------------------------------------------------
# versioning


def dvc_remote_url(cfg: Config) -> str | None:
    """``topup.dvc_remote``, else the default remote of the DVC project around ``$MEDGAN_PROJECT_DIR`` or the cwd."""
    if cfg.topup.dvc_remote:
        return cfg.topup.dvc_remote
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    start = os.environ.get("MEDGAN_PROJECT_DIR") or os.getcwd()
    try:
        root = Repo.find_root(start)
    except NotDvcRepoError:
        return None
    with Repo(root) as repo:
        name = repo.config["core"].get("remote")
        remote = repo.config["remote"].get(name) if name else None
        return str(remote["url"]) if remote else None


def _dvc_lock() -> contextlib.AbstractContextManager[None]:
    """The project's DVC lock (runs of one project folder push to one remote), or none outside a local run."""
    project = os.environ.get("MEDGAN_PROJECT_DIR")
    if not project:
        return contextlib.nullcontext()
    from components.projectlock import DVC_LOCK, project_lock
    from components.tracking import project_runs_dir

    return project_lock(project_runs_dir(project) / DVC_LOCK, "DVC step (dvc add/push of its top-up)")


def version_with_dvc(folder: str | os.PathLike[str], remote: str) -> dict[str, Any]:
    """``dvc add`` the folder in a scratch DVC project and ``dvc push`` it to ``remote``; return its lineage.

    The returned ``pointer`` is the ``.dvc`` file's text: placed in any DVC project whose remote is ``remote``,
    ``dvc pull`` restores exactly this folder. A scratch project (no git) keeps concurrent runs apart and leaves the
    user's workspace and git history untouched; the remote deduplicates content across runs.
    """
    from dvc.repo import Repo

    folder = Path(folder)
    with tempfile.TemporaryDirectory(prefix="medgan-dvc-") as tmp:
        repo = Repo.init(tmp, no_scm=True)
        try:
            with repo.config.edit() as conf:
                conf["core"]["analytics"] = False
                conf["core"]["remote"] = "store"
                conf["remote"]["store"] = {"url": remote}
            target = Path(tmp) / folder.name
            shutil.copytree(folder, target)
            with _dvc_lock():
                repo.add(str(target))
                repo.push()
        finally:
            repo.close()
        pointer = (Path(tmp) / f"{folder.name}.dvc").read_text()
    out = (yaml.safe_load(pointer).get("outs") or [{}])[0]
    return {
        "tracked": True,
        "remote": remote,
        "md5": str(out.get("md5", "")),
        "size": int(out.get("size", 0) or 0),
        "nfiles": int(out.get("nfiles", 0) or 0),
        "pointer": pointer,
    }


def build_topup(
    archive: Archive,
    split: pd.DataFrame,
    generator: Any,
    generator_file: str | os.PathLike[str],
    generator_step: int,
    embed: Any,
    out_dir: str | os.PathLike[str],
    cfg: Config,
) -> dict[str, Any]:
    """Synthesize, filter, write (``out_dir``) and version the top-up; its summary, with ``dvc`` lineage.

    The summary's ``dvc`` is :func:`version_with_dvc`'s result, or ``{"tracked": False, "reason": ...}`` when no
    remote is configured or found (the set is still written and logged; the report says it is not versioned).
    """
    images, masks, table, summary = synthesize(archive, split, generator, generator_file, generator_step, embed, cfg)
    path = write_topup(out_dir, images, masks, table, archive, summary)
    remote = dvc_remote_url(cfg)
    if remote is None:
        summary["dvc"] = {"tracked": False, "reason": "no DVC remote (topup.dvc_remote) and no DVC project found"}
    else:
        summary["dvc"] = version_with_dvc(path, remote)
    return summary


def summary_json(summary: dict[str, Any]) -> str:
    """The summary as JSON (numpy scalars as numbers)."""
    return json.dumps(summary, indent=2, sort_keys=True, default=lambda v: v.item() if hasattr(v, "item") else str(v))
