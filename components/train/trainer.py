"""The GAN training loop: one :class:`Trainer` (pytorch/examples + torchtitan style) for 1..N processes.

Distributed set-up comes from torchrun's environment only (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); without it
the trainer runs as a single process. Every rank computes, rank 0 alone writes (checkpoints, model, grids,
tracking). A step is a pure function of the checkpointed state and ``(seed, rank, step)``: batches, latents and
augmentations all come from a per-step ``torch.Generator``, so resuming from a checkpoint continues bit-for-bit.

Outputs in ``out_dir`` (all written atomically and fsynced, :func:`components.fsio.atomic_write`)::

    checkpoint.pt           G, D, G_ema, both optimisers, step, RNG states, config (every checkpoint_every steps)
    checkpoints/            the last train.keep_checkpoints checkpoints as step-NNNNNN.pt (hard links of, or copies
                            of, checkpoint.pt): resume falls back to them when checkpoint.pt is unreadable, and the
                            rollback target comes from them when checkpoint.pt was saved inside a D-collapse streak
    generator.pt            EMA generator weights + constructor kwargs + classes (what sampling loads)
    training_options.json   the resolved config
    losses.csv              per-step losses and step times
    samples.png             the final per-class sample grid (rows = classes, cells = image | mask)
    snapshots/              EMA generator at train.fid_snapshots evenly spaced steps (generator.pt's format), for
                            the FID-over-training curve; kept across resumes, cleared when training starts afresh
    train_summary.json      what :meth:`Trainer.fit` returns
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import inspect
import json
import math
import os
import random
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from components.archive import open_archive
from components.config import Config, flatten
from components.errors import ConfigError, DataError, TrainingError
from components.fsio import atomic_write
from components.gan.loss import PhasedLoss, pool_pairs
from components.gan.models import (
    DISCRIMINATORS,
    GENERATORS,
    build_discriminator,
    build_generator,
    discriminator_kwargs,
    generator_kwargs,
)
from components.gan.networks import condition_weight, set_condition_weight
from components.gan.sampling import (
    GENERATOR_FILE,
    GENERATOR_FORMAT,
    SNAPSHOT_DIR,
    list_snapshots,
    sample_grid,
    snapshot_path,
)
from components.rebalance.core import load_split
from components.tracking import NullTracker, Tracker

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_DIR = "checkpoints"  # the kept step checkpoints, step-NNNNNN.pt
CHECKPOINT_FORMAT = 1
# train.* keys that may differ between a checkpoint and the run resuming it: where and how fast it runs, how often it
# writes and logs, how long it runs, the guards. Every other train.* key (a new one too, unless it is added here) and
# RESUME_COMPARED_KEYS must be equal, as they change what the steps compute (nproc, precision, channels_last and
# compile change the numerics too, but resuming on other hardware is what they are for).
RESUME_SAFE_TRAIN_KEYS = frozenset(
    {
        "steps",
        "checkpoint_every",
        "log_every",
        "sample_every",
        "fid_snapshots",
        "keep_checkpoints",
        "max_rollbacks",
        "guard_grad_norm",
        "guard_margin",
        "guard_d_accuracy",
        "guard_patience",
        "nproc",
        "device",
        "precision",
        "channels_last",
        "compile",
        "prefetch",
        "launcher",
        "nodes",
        "gpus_per_node",
        "namespace",
        "service_account",
        "image_pull_policy",
        "data_volume_claim",
        "data_mount_path",
        "job_timeout_s",
    }
)
RESUME_COMPARED_KEYS = ("seed", "data.image_size", "data.classes")  # outside train.*
# What a checkpoint written before a key existed trained with, where that is not the key's default today (a key added
# with a new behaviour as its default): such a checkpoint must not resume under the new behaviour unannounced.
BEFORE_KEY_EXISTED = {"train.diffaugment_per_group": False, "train.diffaugment_per_pair": ""}
OPTIONS_FILE = "training_options.json"
LOSSES_FILE = "losses.csv"
GRID_FILE = "samples.png"
SUMMARY_FILE = "train_summary.json"
MAX_ROLLBACKS = 3  # the default of train.max_rollbacks
LOSS_KEYS = ("loss_g", "loss_d", "d_real", "d_fake", "r1")
# What the divergence guards watch besides the losses (rank-averaged like them, logged to MLflow, not to losses.csv).
GUARD_KEYS = ("d_acc_real", "d_acc_fake", "grad_norm_d", "grad_norm_g")
LAUNCHERS = ("local", "trainjob", "pytorchjob")
SPLIT_COLUMNS = ("index", "sample_id", "label", "split", "weight")
# channels_last on CPU is a measured toss-up, so it follows the design (CUDA only): quickstart, 2 cores, median step
# 72-75 ms with it vs 80-82 ms without on the dev machine's Sapphire Rapids cores, but no difference (82 vs 82 ms) on
# two pinned cores of another Xeon. Flip this to use it on CPU as well.
CHANNELS_LAST_ON_CPU = False
PRECISIONS = ("auto", "fp32", "bf16")
# The prefetch thread pays off where the step waits for the host (H100: the loader fell from 18-25 % of a step to
# 2 %, see bench/RESULTS.md); on the 2-core CPU quickstart it only competes with the compute threads for the same
# cores and the measurements on a loaded dev machine were inconclusive, so CPU draws in-step. Flip to prefetch there.
PREFETCH_ON_CPU = False


# ----------------------------------------------------------------------------------------------------- distributed


@dataclasses.dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files or logs."""
        return self.rank == 0


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when available; asking for ``cuda`` without one is a clear error."""
    if preference not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"train.device must be auto, cpu or cuda, got {preference!r}")
    if preference == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device=cuda but no CUDA device is visible; use train.device=auto or cpu")
    if preference != "cpu" and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise TrainingError(
                f"process with local rank {local_rank} has no CUDA device of its own ({torch.cuda.device_count()} "
                f"visible); set train.nproc to at most the number of GPUs, or train.device=cpu"
            )
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


@contextlib.contextmanager
def distributed(preference: str = "auto") -> Iterator[DistContext]:
    """Join the process group described by torchrun's environment (if any); always tear it down on exit."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        if world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        yield DistContext(rank, world_size, local_rank, device)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------------ helpers


def step_generator(seed: int, rank: int, step: int, salt: int = 0) -> torch.Generator:
    """The CPU generator that drives every random draw of one step on one rank."""
    entropy = [seed & 0xFFFFFFFF, rank, step] + ([salt] if salt else [])
    state = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) & ((1 << 63) - 1)
    return torch.Generator().manual_seed(state)


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    # Contiguous CPU copies: independent of the device and memory format the module trains in.
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    random.setstate(state["python"])


def fingerprint(*modules: nn.Module) -> str:
    """SHA-256 over all parameters and buffers: equal on every rank iff the replicas are identical."""
    h = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def snapshot_steps(steps: int, count: int) -> list[int]:
    """The ``count`` evenly spaced steps (the last one ``steps``) at which the EMA generator is snapshotted.

    Fewer when ``count`` exceeds ``steps`` (a step is snapshotted once); none for ``count=0``.
    """
    return sorted({max(1, steps * k // count) for k in range(1, count + 1)}) if count > 0 else []


def ema_beta(decay: float, step: int) -> float:
    """The EMA decay used at (0-based) step ``step``: ``train.ema_decay``, warmed up as ``(1 + step) / (10 + step)``.

    The warm-up (as TF's ExponentialMovingAverage with ``num_updates``) keeps a short run's EMA from being dominated
    by the random initialisation: a fixed 0.999 would still weigh the initial weights by 0.999**600 = 55 % after 600
    steps. It is not short: the effective decay reaches 0.999 only at step 8990, so the 1000-step quickstart ends at
    0.991, an EMA half-life of ln(0.5) / ln(beta) = 77 steps instead of 0.999's 693. Logged as ``train/ema_beta``.
    """
    return min(decay, (1 + step) / (10 + step))


def condition_schedule(step: int, start: int, end: int) -> float:
    """Weight of the class input at (0-based) ``step``: 0 before ``start``, linear to 1 at ``end``, then 1."""
    if step >= end:
        return 1.0
    if step < start:
        return 0.0
    return (step - start) / (end - start)


def checkpoint_path(out_dir: str | os.PathLike[str], step: int) -> Path:
    """Where the kept checkpoint of ``step`` lives."""
    return Path(out_dir) / CHECKPOINT_DIR / f"step-{step:06d}.pt"


def list_checkpoints(out_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """The kept step checkpoints in ``out_dir`` as ``(step, path)``, newest first."""
    folder = Path(out_dir) / CHECKPOINT_DIR
    found = []
    for path in folder.glob("step-*.pt") if folder.is_dir() else []:
        digits = path.stem.removeprefix("step-")
        if digits.isdigit():
            found.append((int(digits), path))
    return sorted(found, reverse=True)


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated/foreign file: name it instead of surfacing the unpickler's message
        raise TrainingError(f"{path}: unreadable checkpoint ({exc})") from exc
    if not isinstance(state, dict):
        raise TrainingError(f"{path}: unreadable checkpoint (a {type(state).__name__}, not a training state)")
    return state


def _is_rollback_target(state: dict[str, Any]) -> bool:
    # Checkpoints written before the flag existed: outside a D-collapse streak is what makes a state a target.
    return bool(state.get("rollback_target", int(state.get("collapse_streak", 0)) == 0))


def _link_or_copy(src: Path, dest: Path) -> None:
    """``dest`` as a hard link of ``src`` (no second copy on disk), or a copy where the file system has no links."""
    dest.unlink(missing_ok=True)  # a temporary file a killed process left behind
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def trajectory_changes(saved_config: str, cfg: Config) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved, now)}`` for the settings that change the training trajectory and differ from the checkpoint's.

    Compared: :data:`RESUME_COMPARED_KEYS` and every ``train.*`` key outside :data:`RESUME_SAFE_TRAIN_KEYS`. A key
    the checkpoint's config lacks (added to the code after it was written) counts with its default value, or with the
    behaviour before the key existed where :data:`BEFORE_KEY_EXISTED` names it.
    """
    defaults = {**Config().flat(), **BEFORE_KEY_EXISTED}
    saved = {**defaults, **flatten(json.loads(saved_config))}
    now = cfg.flat()
    keys = [
        k for k in now if k in RESUME_COMPARED_KEYS or (k.startswith("train.") and k[6:] not in RESUME_SAFE_TRAIN_KEYS)
    ]
    return {k: (saved.get(k), now[k]) for k in keys if saved.get(k) != now[k]}


def check_train_config(cfg: Config) -> None:
    """Reject settings the loop cannot run with, naming the key."""
    tc = cfg.train
    for key in (
        "steps",
        "batch_size",
        "z_dim",
        "g_channels",
        "d_channels",
        "r1_interval",
        "checkpoint_every",
        "log_every",
        "sample_every",
        "nproc",
        "guard_patience",
        "nodes",
        "gpus_per_node",
        "job_timeout_s",
        "keep_checkpoints",
        "mode_seeking_pool",
    ):
        if getattr(tc, key) < 1:
            raise ConfigError(f"train.{key} must be at least 1, got {getattr(tc, key)}")
    if not 0 <= tc.cond_transition_start <= tc.cond_transition_end:
        raise ConfigError(
            "train.cond_transition_start and _end must satisfy 0 <= start <= end, got "
            f"{tc.cond_transition_start} and {tc.cond_transition_end}"
        )
    for key in ("lr_g", "lr_d"):
        if not getattr(tc, key) > 0:
            raise ConfigError(f"train.{key} must be positive, got {getattr(tc, key)}")
    for key in ("beta1", "beta2", "ema_decay"):
        if not 0 <= getattr(tc, key) < 1:
            raise ConfigError(f"train.{key} must be in [0, 1), got {getattr(tc, key)}")
    for key in (
        "r1_gamma",
        "max_rollbacks",
        "guard_grad_norm",
        "guard_margin",
        "guard_d_accuracy",
        "prefetch",
        "fid_snapshots",
        "mode_seeking",
        "mode_seeking_bound",
        "mode_seeking_share_power",
        "mbstd_group",
    ):
        if getattr(tc, key) < 0:
            raise ConfigError(f"train.{key} must not be negative, got {getattr(tc, key)}")
    if tc.launcher not in LAUNCHERS:
        raise ConfigError(f"train.launcher must be one of {', '.join(LAUNCHERS)}, got {tc.launcher!r}")
    for key, known in (("g_arch", GENERATORS), ("d_arch", DISCRIMINATORS)):
        if getattr(tc, key) not in known:
            raise ConfigError(f"train.{key} must be one of {', '.join(known)}, got {getattr(tc, key)!r}")
    if tc.mapping_layers < 1:
        raise ConfigError(f"train.mapping_layers must be at least 1, got {tc.mapping_layers}")
    if tc.precision not in PRECISIONS:
        raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {tc.precision!r}")


class _Diverged(Exception):
    """A step tripped a guard: non-finite loss, exploding gradients or D collapse (internal rollback signal)."""

    def __init__(self, step: int, stats: dict[str, float], reason: str = "", kind: str = "nan") -> None:
        self.reason = reason or f"non-finite loss at step {step}"
        super().__init__(f"{self.reason}: {stats}")
        self.step, self.stats, self.kind = step, stats, kind


Batch = tuple[torch.Generator, torch.Tensor, torch.Tensor]


class BatchPrefetcher:
    """Prepares the batches of the next ``depth`` steps in a background thread.

    ``make(step, salt)`` returns ``(generator, real, labels)``: the step's own generator *after* it drew the batch,
    so the caller continues the same random stream and the result is bit-identical to drawing in-step. Batches are
    keyed by ``(step, salt)``; a rollback (new step, new salt) or resume simply asks for a key that is not queued,
    which drops the stale work. ``depth=0`` draws synchronously.
    """

    def __init__(self, make: Callable[[int, int], Batch], depth: int, end: int) -> None:
        self.make, self.depth, self.end = make, depth, end
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="medgan-prefetch") if depth > 0 else None
        self.pending: dict[tuple[int, int], Future[Batch]] = {}

    def get(self, step: int, salt: int) -> Batch:
        """The batch of ``step`` (drawn now if it was not prepared), queueing the following ones."""
        if self.pool is None:
            return self.make(step, salt)
        future = self.pending.pop((step, salt), None)
        for key in [k for k in self.pending if k[1] != salt or not step < k[0] <= step + self.depth]:
            self.pending.pop(key).cancel()
        for ahead in range(step + 1, min(step + self.depth, self.end - 1) + 1):
            if (ahead, salt) not in self.pending:
                self.pending[(ahead, salt)] = self.pool.submit(self.make, ahead, salt)
        return future.result() if future is not None else self.make(step, salt)

    def close(self) -> None:
        """Stop the thread, dropping queued work."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pending.clear()


# ------------------------------------------------------------------------------------------------------ trainer


class Trainer:
    """Trains the class-conditional GAN described by ``cfg.train`` on the train split of an archive.

    ``fit()`` resumes automatically from ``out_dir/checkpoint.pt`` when present, runs to ``cfg.train.steps`` and
    returns a summary. A non-finite loss, exploding gradients (``train.guard_grad_norm``) or a collapsed discriminator
    (``train.guard_margin`` / ``train.guard_d_accuracy`` for ``train.guard_patience`` steps) roll the state back to
    the last checkpoint saved outside a D-collapse streak, with halved learning rates; the divergence after
    ``train.max_rollbacks`` rollbacks raises :class:`TrainingError`.
    """

    def __init__(
        self,
        archive_dir: str | os.PathLike[str],
        split_dir: str | os.PathLike[str],
        out_dir: str | os.PathLike[str],
        cfg: Config,
        tracker: Tracker | None = None,
        ctx: DistContext | None = None,
    ) -> None:
        self.cfg = cfg
        tc = cfg.train
        self.ctx = ctx or DistContext(device=resolve_device(tc.device))
        self.device = self.ctx.device
        self.tracker = tracker if tracker is not None and self.ctx.is_main else NullTracker()
        self.out_dir = Path(out_dir)
        check_train_config(cfg)
        source = "train.nproc" if tc.launcher == "local" else "train.nodes x train.gpus_per_node"
        self.batch = tc.per_process_batch(self.ctx.world_size, source)
        self._load_data(archive_dir, split_dir)

        torch.manual_seed(cfg.seed)  # identical initial weights (and spectral-norm vectors) on every rank
        n_classes = len(self.classes)
        self.G = build_generator(generator_kwargs(tc, n_classes, self.image_size)).to(self.device)
        self.D = build_discriminator(discriminator_kwargs(tc, n_classes, self.image_size)).to(self.device)
        cuda = self.device.type == "cuda"
        nhwc = (cuda and tc.channels_last) or CHANNELS_LAST_ON_CPU
        self.memory_format = torch.channels_last if nhwc else torch.contiguous_format
        self.G.to(memory_format=self.memory_format)
        self.D.to(memory_format=self.memory_format)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)

        # Lazy regularisation takes an extra D optimiser step every r1_interval steps; StyleGAN2 compensates by
        # scaling the D learning rate and betas by interval / (interval + 1).
        self.use_r1 = tc.r1_gamma > 0
        ratio = tc.r1_interval / (tc.r1_interval + 1) if self.use_r1 else 1.0
        self.base_lr = {"G": tc.lr_g, "D": tc.lr_d * ratio}
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=tc.lr_g, betas=(float(tc.beta1), float(tc.beta2)))
        self.opt_d = torch.optim.Adam(
            self.D.parameters(), lr=self.base_lr["D"], betas=(float(tc.beta1) ** ratio, float(tc.beta2) ** ratio)
        )

        if self.ctx.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # Spectral-norm vectors evolve identically on every rank (they depend on the weights only), so there
            # is nothing to broadcast per forward.
            no_sync = (
                {"forward_sync_buffers": False}
                if "forward_sync_buffers" in inspect.signature(DDP).parameters
                else {"broadcast_buffers": False}  # torch < 2.13
            )
            self.G_train: nn.Module = DDP(self.G, device_ids=ids, **no_sync)
            self.D_train: nn.Module = DDP(self.D, device_ids=ids, **no_sync)
            # The (1, C) weight of D's output layer gets (1, 1)-strided gradients: same memory layout as its bucket
            # view (the size-1 dimension makes the stride meaningless), yet DDP warns about it.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        else:
            self.G_train, self.D_train = self.G, self.D
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
        if cuda:
            torch.backends.cudnn.benchmark = True
        if tc.precision == "bf16" or (tc.precision == "auto" and cuda):
            device_type = self.device.type

            def autocast() -> contextlib.AbstractContextManager:
                return torch.autocast(device_type, dtype=torch.bfloat16)

        G_fwd, D_fwd = self.G_train, self.D_train
        if tc.compile:
            G_fwd, D_fwd = torch.compile(G_fwd), torch.compile(D_fwd)
        self.loss = PhasedLoss(
            G_fwd,
            D_fwd,
            tc.loss,
            tc.r1_gamma,
            tc.r1_interval,
            tc.diffaugment,
            autocast,
            D_reg=self.D_train,
            mode_seeking=tc.mode_seeking,
            mode_seeking_cap=self._mode_seeking_cap() if tc.mode_seeking > 0 and tc.mode_seeking_bound > 0 else None,
            mode_seeking_pool=tc.mode_seeking_pool,
            mode_seeking_class_weight=self._mode_seeking_class_weight() if tc.mode_seeking_share_power > 0 else None,
            group_by_class=tc.mbstd_group > 1,  # D's minibatch-stddev groups then hold one class each
            class_weights=self.class_loss_weights,
            augment_group=tc.mbstd_group if tc.diffaugment_per_group and tc.mbstd_group > 1 else 1,
            augment_per_pair=tc.diffaugment_per_pair,
        )

        self.step = 0
        self.rollbacks = 0
        self.collapse_streak = 0  # consecutive steps the collapse guard saw a collapsed D (checkpointed)
        self.max_rollbacks = tc.max_rollbacks
        self.records: list[dict[str, float]] = []
        self.logged_grid_steps: set[int] = set()
        self.snapshot_at = set(snapshot_steps(tc.steps, tc.fid_snapshots))
        self._good: dict[str, Any] | None = None  # the rollback target (saved outside a D-collapse streak)
        self.resumed_from: Path | None = None
        self._prefetcher: BatchPrefetcher | None = None

    # -------------------------------------------------------------------------------------------------- data

    def _load_data(self, archive_dir: str | os.PathLike[str], split_dir: str | os.PathLike[str]) -> None:
        archive = open_archive(archive_dir)
        split = load_split(split_dir)
        split_file = Path(split_dir) / "split.parquet"
        missing = [c for c in SPLIT_COLUMNS if c not in split.columns]
        if missing:
            raise DataError(f"{split_file}: missing columns {missing}")
        train = split[(split["split"] == "train") & (split["weight"] > 0)]
        if train.empty:
            raise DataError(f"{split_file}: no train rows with a positive weight")
        index = train["index"].to_numpy(np.int64)
        if index.min() < 0 or index.max() >= len(archive):
            raise DataError(f"{split_file}: row index out of range for {archive.path} ({len(archive)} samples)")
        if not np.array_equal(archive.manifest["sample_id"].to_numpy()[index], train["sample_id"].to_numpy()):
            raise DataError(
                f"{split_file}: sample ids do not match {archive.path}; the split was made from "
                f"another archive (re-run rebalance)"
            )
        size = int(archive.meta["image_size"])
        if size != self.cfg.data.image_size:
            raise ConfigError(
                f"{archive.path} holds {size} px images but data.image_size={self.cfg.data.image_size}"
                f"; re-ingest or set data.image_size={size}"
            )
        self.archive = archive
        self.image_size = size
        self.classes = archive.classes
        self.rows = index
        self.row_labels = torch.from_numpy(archive.manifest["label_idx"].to_numpy(np.int64)[index])
        self.weights = torch.tensor(train["weight"].to_numpy(np.float64))
        self.dataset_hash = archive.meta.get("dataset_hash", "")
        self.class_loss_weights = self._class_loss_weights(Path(split_dir) / "distribution.json")

    def _class_loss_weights(self, distribution_file: Path) -> torch.Tensor | None:
        """Per class index, the loss weight rebalance chose for ``split.strategy=class-weighted-loss`` (else None)."""
        if self.cfg.split.strategy != "class-weighted-loss":
            return None
        try:
            weights = json.loads(distribution_file.read_text())["class_loss_weights"]
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(
                f"{distribution_file}: no class loss weights ({exc}); re-run rebalance with "
                f"split.strategy=class-weighted-loss"
            ) from exc
        if not weights:
            raise DataError(
                f"{distribution_file}: the split was made with another strategy than class-weighted-loss; re-run "
                f"rebalance with the run's config"
            )
        # A class without train samples is never drawn: its weight does not matter.
        return torch.tensor([float(weights.get(c, 1.0)) for c in self.classes], device=self.device)

    def _mode_seeking_cap(self, max_per_class: int = 128) -> torch.Tensor:
        """Per class: ``train.mode_seeking_bound`` x the real class's typical image-distance / latent-distance ratio.

        The real ratio is the mean L1 distance (over image and mask pixels, pooled by ``train.mode_seeking_pool`` as
        the term's own distances are) between two different real train pairs of
        the class, over E|z1 - z2| = 2 / sqrt(pi) per latent element of two standard normal latents. At most
        ``max_per_class`` rows of a class enter (the first ones, in split order: deterministic); a class with fewer
        than 2 train rows gets the mean of the other classes' caps (all classes: no cap, i.e. infinity).
        """
        labels = self.row_labels.numpy()
        ratios = torch.full((len(self.classes),), float("nan"), dtype=torch.float64)
        for c in range(len(self.classes)):
            rows = self.rows[labels == c][:max_per_class]
            if len(rows) < 2:
                continue
            images = np.asarray(self.archive.images[np.sort(rows)], dtype=np.float64)
            masks = np.asarray(self.archive.masks[np.sort(rows)], dtype=np.float64)
            x = torch.from_numpy(np.stack([images, masks], axis=1))
            x = pool_pairs(x, self.cfg.train.mode_seeking_pool).reshape(len(rows), -1)
            pairwise = torch.cdist(x, x, p=1) / x.shape[1]
            mean = pairwise.sum() / (len(rows) * (len(rows) - 1))  # the diagonal is 0
            ratios[c] = mean / (2 / math.sqrt(math.pi))
        known = ratios[torch.isfinite(ratios)]
        fill = known.mean() if len(known) else torch.tensor(float("inf"), dtype=torch.float64)
        ratios = torch.where(torch.isfinite(ratios), ratios, fill)
        return (self.cfg.train.mode_seeking_bound * ratios).float().to(self.device)

    def _mode_seeking_class_weight(self) -> torch.Tensor:
        """Per class: (its share of the weighted train draw / the largest class's share) ** mode_seeking_share_power.

        A class without train rows is never drawn; its weight is 0.
        """
        share = torch.zeros(len(self.classes), dtype=torch.float64)
        share.index_add_(0, self.row_labels, self.weights)
        return ((share / share.max()) ** self.cfg.train.mode_seeking_share_power).float().to(self.device)

    def _draw(self, step: int, salt: int) -> Batch:
        """Step ``step``'s generator and the weighted batch of real pairs (image, mask as float) + labels it drew.

        Runs in the prefetch thread: CPU only (pinned when training on CUDA); :meth:`_batch` moves it to the device.
        """
        g = step_generator(self.cfg.seed, self.ctx.rank, step, salt)
        pick = torch.multinomial(self.weights, self.batch, replacement=True, generator=g).numpy()
        rows = self.rows[pick]
        images = torch.from_numpy(np.asarray(self.archive.images[rows], dtype=np.float32))
        masks = torch.from_numpy(np.asarray(self.archive.masks[rows], dtype=np.float32))
        real, labels = torch.stack([images, masks], dim=1), self.row_labels[pick]
        if self.device.type == "cuda":
            real, labels = real.pin_memory(), labels.pin_memory()
        return g, real, labels

    def _batch(self, step: int) -> tuple[torch.Generator, torch.Tensor, torch.Tensor]:
        """The step's generator and its real batch on the device (prefetched in the background when enabled)."""
        if self._prefetcher is None:
            g, real, labels = self._draw(step, self.rollbacks)
        else:
            g, real, labels = self._prefetcher.get(step, self.rollbacks)
        real = real.to(self.device, memory_format=self.memory_format, non_blocking=True)
        return g, real, labels.to(self.device, non_blocking=True)

    def _grad_norm(self, module: nn.Module) -> torch.Tensor:
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if not grads:
            return torch.zeros((), device=self.device)
        return torch.linalg.vector_norm(torch.stack([n.float() for n in torch._foreach_norm(grads)]))

    # -------------------------------------------------------------------------------------------------- step

    def _run_step(self, step: int) -> dict[str, float]:
        """One optimisation step (Dmain, lazy Dreg, Gmain, EMA); returns the rank-averaged statistics."""
        tc = self.cfg.train
        g, real, real_labels = self._batch(step)
        set_condition_weight(condition_schedule(step, tc.cond_transition_start, tc.cond_transition_end), self.G, self.D)
        gen_labels = self.row_labels[torch.multinomial(self.weights, self.batch, True, generator=g)].to(self.device)
        z_d = torch.randn(self.batch, tc.z_dim, generator=g).to(self.device)
        z_g = torch.randn(self.batch, tc.z_dim, generator=g).to(self.device)
        phases: list[tuple[str, torch.Tensor, torch.optim.Optimizer]] = [("Dmain", z_d, self.opt_d)]
        if self.use_r1 and step % tc.r1_interval == 0:
            phases.append(("Dreg", z_d, self.opt_d))
        phases.append(("Gmain", z_g, self.opt_g))

        stats: dict[str, torch.Tensor] = {}
        for phase, z, opt in phases:
            # Only the network being trained needs parameter gradients; skipping the other's halves its backward.
            self.G.requires_grad_(phase == "Gmain")
            self.D.requires_grad_(phase != "Gmain")
            opt.zero_grad(set_to_none=True)
            stats.update(self.loss.accumulate_gradients(phase, real, real_labels, z, gen_labels, g))
            if tc.guard_grad_norm > 0 and phase != "Dreg":
                stats["grad_norm_d" if phase == "Dmain" else "grad_norm_g"] = self._grad_norm(
                    self.D if phase == "Dmain" else self.G
                )
            opt.step()
        self._update_ema(step)

        # One small all-reduce per step: averaged statistics for logging, and a verdict every rank agrees on.
        has_r1 = "r1" in stats
        keys = LOSS_KEYS + GUARD_KEYS
        vec = torch.stack(
            [torch.as_tensor(stats.get(k, 0.0), dtype=torch.float64, device=self.device).reshape(()) for k in keys]
        )
        if self.ctx.world_size > 1:
            dist.all_reduce(vec)
            vec = vec / self.ctx.world_size
        values = {k: float(v) for k, v in zip(keys, vec.tolist(), strict=True)}
        if not has_r1:
            values["r1"] = math.nan
        if not all(math.isfinite(v) for k, v in values.items() if k != "r1" or has_r1):
            raise _Diverged(step, values)
        self._check_guards(step, values)
        return values

    def _check_guards(self, step: int, values: dict[str, float]) -> None:
        """Exploding gradients and D collapse: the same verdict on every rank (the values are rank-averaged)."""
        tc = self.cfg.train
        grad = max(values["grad_norm_d"], values["grad_norm_g"])
        if tc.guard_grad_norm > 0 and grad > tc.guard_grad_norm:
            which = "D" if values["grad_norm_d"] >= values["grad_norm_g"] else "G"
            raise _Diverged(
                step,
                values,
                f"exploding gradients at step {step}: {which} gradient norm {grad:.4g} > "
                f"train.guard_grad_norm={tc.guard_grad_norm:g}",
                "grad_norm",
            )
        margin = values["d_real"] - values["d_fake"]
        accurate = tc.guard_d_accuracy > 0 and min(values["d_acc_real"], values["d_acc_fake"]) >= tc.guard_d_accuracy
        wide = tc.guard_margin > 0 and margin > tc.guard_margin
        self.collapse_streak = self.collapse_streak + 1 if accurate or wide else 0
        if self.collapse_streak >= tc.guard_patience:
            what = (
                f"D(real) - D(fake) margin above train.guard_margin={tc.guard_margin:g}"
                if wide
                else f"D accuracy on reals and fakes at least train.guard_d_accuracy={tc.guard_d_accuracy:g}"
            )
            raise _Diverged(
                step,
                values,
                f"discriminator collapse at step {step}: {what} for {self.collapse_streak} consecutive steps "
                f"(train.guard_patience={tc.guard_patience}; now margin {margin:.4g}, accuracy real "
                f"{values['d_acc_real']:.3f} / fake {values['d_acc_fake']:.3f})",
                "collapse",
            )

    @torch.no_grad()
    def _update_ema(self, step: int) -> None:
        """G_ema <- beta * G_ema + (1 - beta) * G with the warmed-up decay of :func:`ema_beta` (not ema_decay as is)."""
        beta = ema_beta(self.cfg.train.ema_decay, step)
        ema = list(self.G_ema.parameters())
        torch._foreach_lerp_(ema, [p.detach() for p in self.G.parameters()], 1 - beta)
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
            b_ema.copy_(b)

    # ---------------------------------------------------------------------------------------------- state

    def _state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "rollbacks": self.rollbacks,
            "collapse_streak": self.collapse_streak,
            # A divergence guard may roll back to this state only if it was saved outside a D-collapse streak.
            "rollback_target": self.collapse_streak == 0,
            "G": _cpu_state(self.G),
            "D": _cpu_state(self.D),
            "G_ema": _cpu_state(self.G_ema),
            "opt_g": copy.deepcopy(self.opt_g.state_dict()),
            "opt_d": copy.deepcopy(self.opt_d.state_dict()),
            "rng": _rng_state(),
            "config": self.cfg.to_json(),
            "g_kwargs": self.G.init_kwargs(),
            "d_kwargs": self.D.init_kwargs(),
            "classes": list(self.classes),
            "dataset_hash": self.dataset_hash,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.G_ema.load_state_dict(state["G_ema"])
        # Deep copies: load_state_dict may adopt the given tensors, and Adam would then update the rollback
        # snapshot in place.
        self.opt_g.load_state_dict(copy.deepcopy(state["opt_g"]))
        self.opt_d.load_state_dict(copy.deepcopy(state["opt_d"]))
        _set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.collapse_streak = int(state.get("collapse_streak", 0))

    def _save_checkpoint(self) -> None:
        """Save the state on disk (rank 0) and, outside a D-collapse streak, as the in-memory rollback target.

        A state saved while the collapse guard counts a streak is written for resume but never becomes the rollback
        target: rolling back into the streak would only repeat it.
        """
        state = self._state()
        if state["rollback_target"]:
            self._good = state
        if self.ctx.is_main:
            self._write_checkpoint(state)
            self._write_losses()

    def _write_checkpoint(self, state: dict[str, Any]) -> None:
        """checkpoint.pt, then its kept copy checkpoints/step-N.pt, then prune; a crash anywhere leaves both readable.

        Pruned: kept checkpoints after this step (the trajectory a rollback abandoned) and all but the newest
        ``train.keep_checkpoints``, except the in-memory rollback target's (so a resume finds it again).
        """
        latest = self.out_dir / CHECKPOINT_FILE
        atomic_write(latest, lambda p: torch.save(state, p))
        step = int(state["step"])
        kept = checkpoint_path(self.out_dir, step)
        kept.parent.mkdir(exist_ok=True)
        atomic_write(kept, lambda p: _link_or_copy(latest, p))
        good_step = self._good["step"] if self._good is not None else None
        count = 0
        for kept_step, path in list_checkpoints(self.out_dir):  # newest first
            count += kept_step <= step
            if kept_step > step or (count > self.cfg.train.keep_checkpoints and kept_step != good_step):
                path.unlink(missing_ok=True)

    def _clear_checkpoints(self) -> None:
        """A fresh start must not leave kept checkpoints of an earlier training to fall back or roll back to."""
        for _, path in list_checkpoints(self.out_dir):
            path.unlink()

    def _load_checkpoint(self, path: Path) -> bool:
        """Resume from ``path`` if it exists; returns whether it did.

        An unreadable ``path`` (truncated, not a checkpoint) falls back to the newest readable kept checkpoint, with
        a note; a checkpoint of a different model or of settings that change the training is refused with a clear
        error. The rollback target becomes the newest kept state saved outside a D-collapse streak.
        """
        if not path.is_file():
            return False
        try:
            state = _read_state(path)
        except TrainingError as exc:
            path, state = self._fall_back(path, exc)
        self._check_resumable(path, state)
        self._restore(state)
        self.rollbacks = int(state.get("rollbacks", 0))
        self._apply_lr_scale()
        self._good = state if _is_rollback_target(state) else self._newest_rollback_target(state)
        self.resumed_from = path
        return True

    def _fall_back(self, path: Path, error: TrainingError) -> tuple[Path, dict[str, Any]]:
        for _, kept in list_checkpoints(self.out_dir):
            try:
                state = _read_state(kept)
            except TrainingError:
                continue
            if self.ctx.is_main:
                print(
                    f"[train] note: {error}; resuming from {kept} instead, the newest readable kept checkpoint "
                    f"(step {state.get('step')})",
                    file=sys.stderr,
                )
            return kept, state
        raise TrainingError(
            f"{error}, and {self.out_dir / CHECKPOINT_DIR} keeps no readable one; delete {path} to start afresh"
        ) from error

    def _newest_rollback_target(self, latest: dict[str, Any]) -> dict[str, Any]:
        """The newest kept state before ``latest`` saved outside a collapse streak; ``latest`` when none is kept."""
        for step, kept in list_checkpoints(self.out_dir):
            if step >= int(latest["step"]):
                continue
            try:
                state = _read_state(kept)
            except TrainingError:
                continue
            if _is_rollback_target(state):
                return state
        return latest

    def _check_resumable(self, path: Path, state: dict[str, Any]) -> None:
        """Refuse a checkpoint of another format, another model or other trajectory-changing settings."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise TrainingError(f"{path}: checkpoint format {state.get('format')} is not {CHECKPOINT_FORMAT}")
        mine = {"g_kwargs": self.G.init_kwargs(), "d_kwargs": self.D.init_kwargs(), "classes": list(self.classes)}
        theirs = {k: state.get(k) for k in mine}
        if theirs != mine:
            raise TrainingError(
                f"{path}: checkpoint is of a different model ({theirs}) than this config builds "
                f"({mine}); use another output folder or delete the checkpoint"
            )
        changed = trajectory_changes(state["config"], self.cfg) if state.get("config") else {}
        if changed:
            listed = ", ".join(f"{k} {json.dumps(old)} -> {json.dumps(new)}" for k, (old, new) in changed.items())
            back = " ".join(f"{k}={json.dumps(old, separators=(',', ':'))}" for k, (old, _) in changed.items())
            raise TrainingError(
                f"{path}: refusing to resume, the checkpoint was trained with other settings that change the "
                f"training ({listed}); to continue it set them back ({back}), otherwise use another output folder "
                f"or delete the checkpoint (and {CHECKPOINT_DIR}/) to train afresh"
            )
        if state.get("dataset_hash") != self.dataset_hash and self.ctx.is_main:
            print(f"[train] note: resuming {path} on a different dataset than it was trained on", file=sys.stderr)

    def _apply_lr_scale(self) -> None:
        scale = 0.5**self.rollbacks
        for opt, key in ((self.opt_g, "G"), (self.opt_d, "D")):
            for group in opt.param_groups:
                group["lr"] = self.base_lr[key] * scale

    def _rollback(self, event: _Diverged) -> None:
        stats = ", ".join(f"{k}={v:.4g}" for k, v in event.stats.items() if k in LOSS_KEYS)
        if self.rollbacks >= self.max_rollbacks:
            raise TrainingError(
                f"training diverged ({event.reason}: {stats}) after {self.max_rollbacks} rollbacks "
                f"with halved learning rates; lower train.lr_g/train.lr_d or raise train.r1_gamma"
                + ("" if event.kind == "nan" else " (or loosen the guard named above)")
            )
        assert self._good is not None
        self._restore(self._good)
        self.rollbacks += 1
        self._apply_lr_scale()
        self.records = [r for r in self.records if r["step"] <= self.step]
        # On disk too: a resume after a crash continues from here with the halved rates, not from a checkpoint of
        # the abandoned trajectory (whose kept checkpoints this prunes).
        self._save_checkpoint()
        if self.ctx.is_main:
            print(
                f"\n[train] {event.reason} ({stats}): rolled back to step {self.step} "
                f"and halved the learning rates (lr_g={self.opt_g.param_groups[0]['lr']:.3g}, "
                f"lr_d={self.opt_d.param_groups[0]['lr']:.3g}); rollback {self.rollbacks}/{self.max_rollbacks}",
                file=sys.stderr,
                flush=True,
            )
        # The MLflow event: a metric marks when, a tag and a JSON record say why.
        self.tracker.log_metrics({"train/rollback": self.rollbacks}, step=event.step)
        self.tracker.set_tags({"train/rollback_reason": event.reason})
        self.tracker.log_dict(
            {
                "event": "train/rollback",
                "rollback": self.rollbacks,
                "kind": event.kind,
                "reason": event.reason,
                "at_step": event.step,
                "rolled_back_to_step": self.step,
                "lr_g": self.opt_g.param_groups[0]["lr"],
                "lr_d": self.opt_d.param_groups[0]["lr"],
                "stats": {k: (v if math.isfinite(v) else str(v)) for k, v in event.stats.items()},
            },
            f"train/rollbacks/rollback_{self.rollbacks:02d}.json",
        )

    # -------------------------------------------------------------------------------------------- outputs

    def _write_losses(self) -> None:
        columns = ["step", *LOSS_KEYS, "step_time_s"]
        frame = pd.DataFrame(self.records, columns=columns)
        atomic_write(self.out_dir / LOSSES_FILE, lambda p: frame.to_csv(p, index=False))

    def _read_losses(self) -> None:
        path = self.out_dir / LOSSES_FILE
        if path.is_file():
            frame = pd.read_csv(path)
            self.records = [r for r in frame.to_dict("records") if r["step"] <= self.step]

    def _grid(self) -> np.ndarray:
        per_class = max(2, min(8, 512 // self.image_size))
        return sample_grid(self.G_ema, self.classes, per_class, seed=self.cfg.seed)

    def _log_grid(self) -> np.ndarray:
        grid = self._grid()
        if self.step not in self.logged_grid_steps:
            self.tracker.log_image(grid, f"samples/step_{self.step:06d}.png")
            self.logged_grid_steps.add(self.step)
        return grid

    def _generator_blob(self) -> dict[str, Any]:
        """The EMA generator as :func:`~components.gan.sampling.load_generator` reads it (final model and snapshots)."""
        return {
            "format": GENERATOR_FORMAT,
            "state_dict": _cpu_state(self.G_ema),
            "kwargs": self.G.init_kwargs(),
            "classes": list(self.classes),
            "step": self.step,
            "cond_weight": condition_weight(self.G_ema),  # the class input's weight these weights were trained at
            "dataset_hash": self.dataset_hash,
            "config": self.cfg.to_json(),
        }

    def _save_snapshot(self) -> None:
        """Keep the EMA generator of this step for the FID curve (a rollback past it rewrites it when re-reached)."""
        path = snapshot_path(self.out_dir, self.step)
        path.parent.mkdir(exist_ok=True)
        blob = self._generator_blob()
        atomic_write(path, lambda p: torch.save(blob, p))

    def _clear_snapshots(self) -> None:
        """A fresh start's curve must not mix in the snapshots of an earlier training left in the folder."""
        for _, path in list_snapshots(self.out_dir):
            path.unlink()

    def _write_outputs(self, grid: np.ndarray) -> dict[str, str]:
        from PIL import Image

        out = self.out_dir
        model = self._generator_blob()
        atomic_write(out / GENERATOR_FILE, lambda p: torch.save(model, p))
        atomic_write(out / GRID_FILE, lambda p: Image.fromarray(grid).save(p, format="PNG"))
        self._write_losses()
        return {
            name: str(out / f)
            for name, f in (
                ("checkpoint", CHECKPOINT_FILE),
                ("checkpoints", CHECKPOINT_DIR),
                ("generator", GENERATOR_FILE),
                ("options", OPTIONS_FILE),
                ("losses", LOSSES_FILE),
                ("samples", GRID_FILE),
                ("snapshots", SNAPSHOT_DIR),
                ("summary", SUMMARY_FILE),
            )
        }

    def _log_window(self, window: list[dict[str, float]], bar: tqdm) -> None:
        if not window:
            return
        frame = pd.DataFrame(window)
        keys = [k for k in LOSS_KEYS + GUARD_KEYS if k in frame]
        metrics = {f"train/{k}": float(frame[k].mean()) for k in keys if frame[k].notna().any()}
        metrics["train/img_per_s"] = self.cfg.train.batch_size * len(frame) / float(frame["step_time_s"].sum())
        metrics["train/ema_beta"] = ema_beta(self.cfg.train.ema_decay, self.step - 1)  # the last update's decay
        metrics["train/cond_weight"] = condition_weight(self.G)  # transitional conditioning (1: fully conditional)
        self.tracker.log_metrics(metrics, step=self.step)
        shown = {f"train/{k}" for k in ("loss_g", "loss_d", "d_real", "d_fake", "img_per_s")}
        bar.set_postfix({k.split("/")[1]: f"{v:.3g}" for k, v in metrics.items() if k in shown}, refresh=False)

    # ------------------------------------------------------------------------------------------------ fit

    def fit(self) -> dict[str, Any]:
        """Train to ``cfg.train.steps`` (resuming if a checkpoint exists) and write the outputs; return a summary."""
        tc = self.cfg.train
        main = self.ctx.is_main
        resumed = self._load_checkpoint(self.out_dir / CHECKPOINT_FILE)  # first: a refused resume writes nothing
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            options = json.dumps(dataclasses.asdict(self.cfg), indent=2, sort_keys=True)
            atomic_write(self.out_dir / OPTIONS_FILE, lambda p: p.write_text(options))
            self.tracker.log_params({k: v for k, v in self.cfg.flat().items() if k.startswith("train.")})
        if resumed:
            if main:
                self._read_losses()
                print(f"[train] resuming from {self.resumed_from} at step {self.step}", file=sys.stderr)
        else:
            self._good = self._state()  # rollback target until the first checkpoint outside a collapse streak
            if main:
                self._clear_snapshots()
                self._clear_checkpoints()
        start_step = self.step
        started = time.perf_counter()
        window: list[dict[str, float]] = []
        bar = tqdm(
            total=tc.steps,
            initial=min(self.step, tc.steps),
            disable=not main,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            mininterval=1.0,
            file=sys.stderr,
        )
        prefetch = tc.prefetch if self.device.type == "cuda" or PREFETCH_ON_CPU else 0
        self._prefetcher = BatchPrefetcher(self._draw, prefetch, tc.steps) if prefetch > 0 else None
        try:
            while self.step < tc.steps:
                t0 = time.perf_counter()
                try:
                    values = self._run_step(self.step)
                except _Diverged as event:
                    self._rollback(event)
                    window = []
                    bar.n = self.step
                    bar.refresh()
                    continue
                self.step += 1
                record = {"step": self.step, **values, "step_time_s": time.perf_counter() - t0}
                if main:
                    self.records.append(record)
                    window.append(record)
                bar.update(1)
                if self.step % tc.log_every == 0:
                    self._log_window(window, bar)
                    window = []
                if main and self.step in self.snapshot_at:  # before the checkpoint: a resume never skips one
                    self._save_snapshot()
                if self.step % tc.checkpoint_every == 0 and self.step < tc.steps:
                    self._save_checkpoint()
                if main and self.step % tc.sample_every == 0 and self.step < tc.steps:
                    self._log_grid()
        finally:
            bar.close()
            if self._prefetcher is not None:
                self._prefetcher.close()
            self._prefetcher = None
        self._log_window(window, bar)
        if self.step > start_step or not resumed:
            self._save_checkpoint()
        prints = self._replica_fingerprints()
        if len(set(prints)) > 1:
            raise TrainingError(f"DDP replicas diverged: parameter fingerprints differ across ranks {prints}")
        summary: dict[str, Any] = {}
        if main:
            grid = self._log_grid()
            paths = self._write_outputs(grid)
            summary = self._summary(start_step, time.perf_counter() - started, paths, prints)
            atomic_write(self.out_dir / SUMMARY_FILE, lambda p: p.write_text(json.dumps(summary, indent=2)))
            self.tracker.log_artifact(self.out_dir / LOSSES_FILE, "train")
            self.tracker.log_dict(summary, "train/summary.json")
        return summary

    def _replica_fingerprints(self) -> list[str]:
        mine = fingerprint(self.G, self.D, self.G_ema)
        if self.ctx.world_size == 1:
            return [mine]
        gathered: list[Any] = [None] * self.ctx.world_size
        dist.all_gather_object(gathered, mine)
        return [str(x) for x in gathered]

    def _summary(self, start_step: int, wall_s: float, paths: dict[str, str], prints: list[str]) -> dict[str, Any]:
        frame = pd.DataFrame(self.records, columns=["step", *LOSS_KEYS, "step_time_s"])
        ran = frame[frame["step"] > start_step]
        tail = frame.tail(max(1, min(len(frame), self.cfg.train.log_every)))
        final = {k: (float(tail[k].mean()) if tail[k].notna().any() else None) for k in LOSS_KEYS}
        step_time = float(ran["step_time_s"].mean()) if len(ran) else None
        return {
            "steps": self.step,
            "start_step": start_step,
            "steps_run": self.step - start_step,
            "resumed": start_step > 0,
            "final_losses": final,
            "img_per_s": self.cfg.train.batch_size / step_time if step_time else None,
            "step_time_ms": 1000 * step_time if step_time else None,
            "wall_s": wall_s,
            "rollbacks": self.rollbacks,
            "world_size": self.ctx.world_size,
            "device": str(self.device),
            "classes": list(self.classes),
            "replica_fingerprints": prints,
            "snapshot_steps": [step for step, _ in list_snapshots(self.out_dir)],
            "paths": paths,
        }
