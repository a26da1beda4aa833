"""Typed pipeline configuration: nested dataclasses, named presets and ``key=value`` overrides.

The resolved configuration travels through the pipeline as JSON (one string parameter per component), is saved
next to every run's outputs and logged to MLflow, so a run can always be reproduced from its record.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
import typing
from dataclasses import asdict, dataclass, field
from typing import Any

from components.errors import ConfigError

TOPUP_SPACES = ("medical", "inception")  # topup.feature_space: the filter's feature space (never the GAN's)
SELECT_SNAPSHOT = ("best_fid", "last")  # eval.select_snapshot: lowest val FID among the snapshots, or the final model
GATE_MODES = ("min", "max", "at_least", "at_most", "improves")  # registry.gate[].mode: see GateMetric
PAIRED_METRICS = ("fid",)  # metrics the evaluate stage compares with the champion's, paired (mode "improves")
ABSOLUTE_MODES = ("at_least", "at_most")  # judge the challenger alone; the only modes of registry.floor
# eval.seg_arms: what the Dice evidence's segmenter trains on (components/metrics/dice.py)
SEG_ARMS = ("real", "weighted-sampler", "class-weighted-loss", "real+synthetic", "synthetic")
SEVERITIES = ("warning", "critical")  # validate.patients_per_class_severity: report it, or stop the pipeline


@dataclass
class DataConfig:
    """What the images are and how they are normalised."""

    image_size: int = 64
    classes: list[str] = field(default_factory=lambda: ["normal", "benign", "malignant"])
    lesion_classes: list[str] = field(default_factory=lambda: ["benign", "malignant"])
    # Window in modality units (e.g. HU). None: take WindowCenter/Width from the header, then robust percentiles.
    window_center: float | None = None
    window_width: float | None = None


@dataclass
class IngestConfig:
    """DICOM decoding limits and quarantine policy."""

    max_quarantine_fraction: float = 0.2
    # Refuse to decode a file whose declared Rows*Columns*Frames*BitsAllocated/8 exceeds this many bytes.
    max_decoded_bytes: int = 256 * 1024 * 1024
    workers: int = 2
    # Name of the environment variable holding the patient-ID salt; without it a per-project salt file is used.
    salt_env: str = "MEDGAN_PATIENT_SALT"
    # Non-square images: "pad" with black to a centred square (keeps the whole field of view) or "crop" the
    # centred square of the shorter side (keeps the scale of the longer side).
    square: str = "pad"
    # Multi-frame files: "frames" makes each frame a sample (manifest column ``frame``), "reject" quarantines them.
    multiframe: str = "frames"
    # Colour (RGB, YBR, PALETTE COLOR) images: "convert" to luminance (ITU-R BT.601), "reject" quarantines them.
    rgb: str = "convert"
    # Masks with more than one non-zero value (label maps, e.g. 1 = lesion, 2 = organ): "reject" quarantines them
    # (reason mask_label_map), "binarise" treats every non-zero pixel as lesion.
    label_maps: str = "reject"


@dataclass
class ValidateConfig:
    """Thresholds of the great-expectations suite."""

    min_images_per_class: int = 5
    min_patients: int = 3
    image_min: float = -1.0
    image_max: float = 1.0
    max_mask_fraction: float = 0.5
    # A class whose share of the data drops below this fraction is reported as a warning, not a failure.
    warn_min_class_fraction: float = 0.02
    # Class-distribution drift against the champion model's data: a class whose share of the images moved by more
    # than this (absolute difference of fractions) is reported as a warning. Skipped when there is no champion.
    max_class_drift: float = 0.1
    # After the patient-level split (rebalance stage): a class with fewer patients than this in any of train/val/test
    # is reported, naming the class, the split and the count; every rare-class metric of that split would rest on
    # them. "warning" logs it and shows it in the report; "critical" stops the pipeline before training.
    min_patients_per_class: int = 2
    patients_per_class_severity: str = "warning"

    def __post_init__(self) -> None:
        """Reject a bad value when the config is built, not after ingest and validation."""
        if self.min_patients_per_class < 0:
            raise ConfigError(f"validate.min_patients_per_class must be 0 or more, got {self.min_patients_per_class}")
        if self.patients_per_class_severity not in SEVERITIES:
            raise ConfigError(
                f"validate.patients_per_class_severity must be one of {', '.join(SEVERITIES)}, "
                f"got {self.patients_per_class_severity!r}"
            )


@dataclass
class SplitConfig:
    """Patient-level split and class rebalancing."""

    val_fraction: float = 0.15
    test_fraction: float = 0.2
    # none | weighted-sampler | class-weighted-loss | gan-topup. The GAN trains on real data: uniformly (none), drawn
    # with the class weights (weighted-sampler, gan-topup) or uniformly with each sample's D and G loss weighted by its
    # class weight (class-weighted-loss: the same expected gradient as the weighted sampler, noisier). gan-topup then
    # writes the synthetic top-up (see TopupConfig), which joins the train split only and is the synthetic side of
    # evaluate's Dice comparison.
    strategy: str = "gan-topup"
    # Sample weight of a class = count ** -power (1.0: uniform over classes, 0.0: as in the data).
    sampler_power: float = 0.75


@dataclass
class TopupConfig:
    """Minority top-up (``split.strategy=gan-topup``): synthetic pairs of the rare classes as a train-only dataset.

    After training, the selected generator draws candidates of every class whose train count is below the target,
    a per-class quality filter keeps the plausible ones (components/topup/core.py), and the set is written as an
    archive, logged to MLflow and pushed to a DVC remote.
    """

    # Each class's train count is topped up to this fraction of the largest class's train count (0: no top-up).
    target_ratio: float = 0.5
    # Candidates drawn per needed sample: the filter rejects some; a class that still falls short is reported. On the
    # quickstart's 1000-step generator the filter keeps ~15 % of benign and ~5 % of malignant candidates (most are
    # outliers in the medical space), hence 20: 1200 candidates, ~3 s on a 2-core CPU.
    max_draw_factor: int = 20
    # Feature space of the outlier and near-copy filters: "medical" (trained on the real train split, never seen by
    # the GAN) or "inception".
    feature_space: str = "medical"
    # Realism score (Kynkaenniemi et al. 2019) against the class's real train features: >= 1 means inside the k-NN
    # ball of some real sample of the class (k = eval.manifold_k); lower values are outliers.
    min_realism: float = 1.0
    # Cosine similarity (features centred on the class's real mean) to the nearest real train sample of the class above
    # which a candidate is rejected as a near copy.
    max_copy_similarity: float = 0.97
    # Lesion classes: the mask must be non-empty with an area within [min / f, max * f] of the class's real lesion
    # areas, and its contrast (inside - outside) of the real class's sign and at least this fraction of its median.
    mask_area_factor: float = 2.0
    min_contrast_fraction: float = 0.25
    # DVC remote URL the top-up is pushed to; "": the default remote of the DVC project the run starts in
    # ($MEDGAN_PROJECT_DIR, else the working directory). Without one the set is not versioned, and the report says so.
    dvc_remote: str = ""

    def __post_init__(self) -> None:
        """Reject a bad value when the config is built, not after training."""
        checks = (
            ("target_ratio", 0 <= self.target_ratio <= 1, "in [0, 1]"),
            ("max_draw_factor", self.max_draw_factor >= 1, "at least 1"),
            ("feature_space", self.feature_space in TOPUP_SPACES, f"one of {', '.join(TOPUP_SPACES)}"),
            ("mask_area_factor", self.mask_area_factor >= 1, "at least 1"),
            ("min_contrast_fraction", self.min_contrast_fraction >= 0, "0 or more"),
            ("min_realism", self.min_realism >= 0, "0 or more"),
            ("max_copy_similarity", self.max_copy_similarity > 0, "above 0"),
        )
        for key, ok, want in checks:
            if not ok:
                raise ConfigError(f"topup.{key} must be {want}, got {getattr(self, key)!r}")


@dataclass
class TrainConfig:
    """Class-conditional GAN and its stabilisers.

    Resuming a checkpoint whose settings differ is refused for every key that changes the training trajectory: all
    keys except those in ``components.train.trainer.RESUME_SAFE_TRAIN_KEYS`` (add a new key there if it may change).
    """

    steps: int = 1000
    batch_size: int = 32
    z_dim: int = 64
    g_channels: int = 32
    d_channels: int = 32
    # Architectures (components/gan/models.py): g_arch "film" (sub-pixel upsampling, FiLM class modulation) or
    # "style" (mapping network, modulated convs, per-pixel noise, skip outputs, a full-resolution block); d_arch "sn"
    # (spectrally normalised convs) or "residual" (residual blocks, R1 only). bench/RESULTS.md has their numbers.
    g_arch: str = "film"
    d_arch: str = "sn"
    mapping_layers: int = 2  # fully connected layers of the style generator's mapping network
    lr_g: float = 2e-4
    lr_d: float = 4e-4  # two time-scale update rule: D learns faster than G
    beta1: float = 0.0
    beta2: float = 0.99
    loss: str = "hinge"  # hinge | nonsaturating
    r1_gamma: float = 0.1
    r1_interval: int = 16  # lazy R1: regularise D every this many steps
    # Weight of the mode-seeking term (MSGAN) in Gmain, against within-class mode collapse; 0 = off. Quickstart, 3 seeds
    # at 0.002 (bench/RESULTS.md): the common classes' samples differ (worst class's diversity ratio 0.23 -> 0.78,
    # medical-space recall 0.08 -> 0.32), but the rare class degenerates into texture without masks (its ratio 4.6):
    # off by default until it can spare the rare class.
    mode_seeking: float = 0.0
    # Bound on the mode-seeking push (DSGAN, Yang et al. 2019, clamp the ratio at tau), per class: a pair's
    # image-distance / latent-distance ratio counts at most this many times the real class's typical ratio (mean L1
    # between two real train images of the class over E|z1 - z2|), so a class is spread up to the real variety and
    # not beyond it into noise. 0 = unbounded (MSGAN).
    mode_seeking_bound: float = 0.0
    # Distances of the mode-seeking term (and its bound) between average-pooled pairs, this many pixels per side pooled
    # into one (1 = full resolution). Pooling leaves only what changes the coarse structure (anatomy, lesion place):
    # pixel distance alone is also earned by high-frequency texture, which is what the rare class turned into.
    mode_seeking_pool: int = 1
    # The push on a class's pairs times (class share / largest class share) ** this, where a class's share is its part
    # of the weighted train draw: 0 pushes every class alike (MSGAN); 1 pushes a class with a tenth of the largest
    # class's slices a tenth as hard. A rare class gives D few real slices to hold its samples near the data with, so
    # an equal push spreads it beyond the data (bench/RESULTS.md, bounded mode seeking). Measured at 1 with bound 1 over
    # 3 seeds: the rare class leaves the data all the same (diversity ratio 1.41), so off by default.
    mode_seeking_share_power: float = 0.0
    # Transitional conditioning (Shahbazi et al. 2023, against the within-class collapse of class-conditional GANs on
    # little data): the class reaches G and D with weight 0 until step cond_transition_start (unconditional training),
    # then a weight rising linearly to 1 at step cond_transition_end (components/gan/networks.py
    # add_condition_weight). Both 0: conditional from the first step. Steps, not fractions of train.steps, so that
    # extending a run (train.steps may change on resume) does not move the schedule.
    cond_transition_start: int = 0
    cond_transition_end: int = 0
    # Minibatch-stddev group size in D (ProGAN/StyleGAN2; groups of one class), against mode collapse; 0 or 1 = off.
    # The per-process batch (batch_size / processes) must be a multiple of it. Quickstart, 3 seeds: FID 189 vs 208.
    mbstd_group: int = 4
    # A second minibatch-stddev map in D: where the masks of a group (one class) differ, against lesions planted in
    # one place for a whole class (components/gan/networks.py mask_stddev). Needs mbstd_group > 1.
    mbstd_mask: bool = False
    # Target decay of the generator's EMA. It is warmed up as min(ema_decay, (1 + step) / (10 + step)) so that a short
    # run's EMA is not dominated by the random initialisation: the 1000-step quickstart ends at 0.991 (half-life
    # ~77 steps, 0.999's is 693); ema_decay itself applies from step 8990 on. Logged as train/ema_beta.
    ema_decay: float = 0.999
    diffaugment: str = "translation,cutout"  # comma list of: color, translation, cutout; empty for none
    # One augmentation draw per minibatch-stddev group of D (the same shift and cutout for a group's pairs) instead of
    # one per pair: per-pair draws add their own spread to every group, which hides a collapsed class from D.
    # Quickstart, 3 seeds (bench/RESULTS.md): worst class's diversity ratio 0.29 -> 0.57, Inception FID +5 % (noise).
    # Checkpoints from before the key drew per pair (components/train/trainer.py BEFORE_KEY_EXISTED).
    diffaugment_per_group: bool = True
    # Entries of diffaugment still drawn for every pair when diffaugment_per_group is on, e.g. "cutout": a shift shared
    # by a group keeps a collapsed class visible to minibatch-stddev, and a cutout per pair gives D four times the
    # cutouts per batch. Empty: every augmentation drawn per group. "cutout", 3 seeds (bench/RESULTS.md): longer budget
    # Inception FID 112.9 -> 111.6 (the same), quickstart worst class 0.59 -> 0.47, so not the default. See
    # docs/training.md (augmentation drawn per group).
    diffaugment_per_pair: str = ""
    nproc: int = 1  # processes for torchrun --standalone (DDP)
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    channels_last: bool = True  # NHWC activations on CUDA (tensor-core friendly); CPU stays NCHW
    compile: bool = False  # torch.compile the G/D forwards; R1's double backward stays eager
    checkpoint_every: int = 200
    # Checkpoints kept besides checkpoint.pt (checkpoints/step-NNNNNN.pt, the newest included): resume falls back to
    # them when checkpoint.pt is unreadable, and a rollback target saved outside a D-collapse streak comes from them.
    keep_checkpoints: int = 3
    log_every: int = 25
    sample_every: int = 200
    # EMA-generator snapshots kept at this many evenly spaced steps (the last at train.steps) for the evaluate
    # stage's FID-over-training curve; 0 keeps none.
    fid_snapshots: int = 5
    # Divergence guards: each one rolls back to the last good checkpoint with halved learning rates (as a
    # non-finite loss does); after max_rollbacks rollbacks the run fails. 0 disables a bound.
    max_rollbacks: int = 3
    guard_grad_norm: float = 10000.0  # exploding gradients: G or D gradient norm above this (quickstart max ~100)
    guard_margin: float = 20.0  # D collapse: mean D(real) - D(fake) logit margin above this (quickstart max ~2) ...
    guard_d_accuracy: float = 0.999  # ... or D classifies reals and fakes (both) at least this accurately ...
    guard_patience: int = 200  # ... for this many consecutive steps
    prefetch: int = 2  # batches a background thread prepares ahead on CUDA (pinned memory); 0: draw in-step
    # Where the training runs: local (in-process / torchrun --standalone), trainjob (Kubeflow Trainer v2) or
    # pytorchjob (Training Operator v1); the Kubernetes launchers run nodes x gpus_per_node worker processes.
    launcher: str = "local"
    nodes: int = 1
    gpus_per_node: int = 1
    namespace: str = "kubeflow"
    # Pod service account of the training job: k8s/base creates "medgan-training" without an API token (the pods
    # need no API access); empty: the namespace default account.
    service_account: str = "medgan-training"
    image_pull_policy: str = "IfNotPresent"
    # PersistentVolumeClaim mounted at data_mount_path in every training pod (and in the pipeline's train task,
    # which stages the archive and split there and copies the model back); the archive, split and model folders
    # handed to a Kubernetes launcher must lie under that path. Default: the claim of k8s/base/pipelines/pvc.yaml; empty
    # mounts nothing (only for images that carry the data themselves, never in the pipeline).
    data_volume_claim: str = "medgan-data"
    data_mount_path: str = "/workspace/data"
    job_timeout_s: int = 86400

    def per_process_batch(self, processes: int, source: str) -> int:
        """``batch_size / processes``; a ConfigError unless that divides evenly and is a multiple of ``mbstd_group``.

        ``source`` names the settings the process count comes from, for the message.
        """
        if self.batch_size % processes:
            raise ConfigError(
                f"train.batch_size={self.batch_size} must be divisible by the {processes} processes ({source})"
            )
        per = self.batch_size // processes
        if self.mbstd_group > 1 and per % self.mbstd_group:
            # D scores reals and fakes in one call, reals first: a group not dividing the half would mix the two.
            raise ConfigError(
                f"train.mbstd_group={self.mbstd_group} must divide the per-process batch ({per} = train.batch_size "
                f"{self.batch_size} / {processes} processes); choose a divisor or 0"
            )
        return per


@dataclass
class EvalConfig:
    """Metrics and the review report."""

    feature_extractor: str = "inception"
    # Further feature spaces every distribution metric is also reported in, under the key prefix "<name>_" (held-out
    # reference "holdout_<name>_<metric>"); the primary feature_extractor is not repeated. "medical": a small CNN
    # trained on the real train split only (components/metrics/medical.py), never seen by the GAN; ~6 s on a 2-core
    # CPU for the quickstart, then cached.
    extra_extractors: list[str] = field(default_factory=lambda: ["medical"])
    fid_samples: int = 128  # synthetic samples drawn for FID/KID (real side: the whole real training split)
    # Synthetic samples per train.fid_snapshots point of the FID curve: an evenly spaced subset of fid_samples'
    # latents and labels (class mix kept), the same for every snapshot; 0: all fid_samples. Fewer by default as each
    # costs an Inception pass (2-core CPU: ~0.2 s per image); FID is biased upward at small sample counts, so the
    # curve's points are compared with each other, not with the headline FID.
    fid_curve_samples: int = 64
    kid_subset_size: int = 64
    kid_subsets: int = 20
    # k of the k-nearest-neighbour balls of precision / recall / density / coverage (Naeem et al. 2020 use 5).
    manifold_k: int = 5
    bootstrap: int = 50
    # Score the registry's champion in this evaluation too (components/evaluate/champion.py): same real features,
    # extractor, labels and latents as the challenger, a paired bootstrap of the FID improvement
    # (fid_improvement[_ci_low|_ci_high]) that gate rules of mode "improves" read. Costs one generation and feature
    # pass per model (quickstart, 2-core CPU: ~40 s) when a champion exists.
    compare_champion: bool = True
    # The Dice evidence (components/metrics/dice.py): a small BasicUNet trained per arm and segmenter seed, scored on
    # the real test patients (Dice on slices with a lesion; false positives on lesion-free slices). Arms (SEG_ARMS):
    # "real" (the train split drawn uniformly: the reference of every gain), "weighted-sampler" (drawn with the
    # split's class weights, split.sampler_power), "class-weighted-loss" (uniform, each sample's Dice + BCE loss
    # weighted by its class weight), "real+synthetic" (plus the synthetic pairs: the top-up's gain, dice_gain) and
    # "synthetic" (synthetic pairs only). Each arm costs seg_seeds x seg_steps steps (quickstart, 2-core CPU: ~0.05 s a
    # step of 16), so the default runs the two arms of the top-up question; name more arms for all five.
    seg_arms: list[str] = field(default_factory=lambda: ["real", "real+synthetic"])
    seg_seeds: int = 2  # segmenter seeds per arm, pooled per test slice (the mean over seeds)
    seg_steps: int = 100  # optimiser steps per arm and seed, the same for every arm (one-cycle schedule)
    seg_batch_size: int = 16
    # Below this Dice of the "real" arm on a class, in any segmenter seed, the segmenter has not learned the class and
    # the arms would compare near-zero scores: the report warns, dice_baseline_ok is 0 and the gains of that class (and
    # of the mean over classes) are undefined (null), so no gate rule can pass on them.
    seg_min_baseline_dice: float = 0.2
    # Synthetic pairs per lesion class drawn from the generator for the synthetic arms, when no top-up is given.
    synth_per_class: int = 48
    nn_copy_threshold: float = 0.97  # cosine similarity above which a synthetic sample is flagged as a near copy
    # Which generator the headline metrics score and register registers: "best_fid" picks, among the train.fid_snapshots
    # snapshots before the final step and the final model, the lowest FID of the FID curve's samples against the val
    # split's real images (the headline FID uses the train split's; ties and undefined values prefer the later step);
    # "last" keeps the final model and skips the selection.
    select_snapshot: str = "best_fid"
    # With best_fid, a candidate whose worst class's diversity ratio (synthetic / real pixel spread over all the samples
    # the candidate generated for the curve) is below this is passed over while another candidate reaches it, so the
    # lowest FID cannot pick a collapsed snapshot. The default is the line below which the report warns of a collapsed
    # class (components/evaluate/verdict.py COLLAPSED); at 0.5 the rule chose between candidates at 0.47-0.52, i.e. by
    # noise, and paid +35 FID for it (quickstart seed 1, bench/RESULTS.md). None reaching it: the FID alone decides,
    # with a note. 0: the FID alone.
    select_min_diversity: float = 0.3

    def __post_init__(self) -> None:
        """Reject a bad value when the config is built, not after a whole training run."""
        if self.manifold_k < 1:
            raise ConfigError(f"eval.manifold_k must be at least 1, got {self.manifold_k}")
        if len(set(self.extra_extractors)) != len(self.extra_extractors) or not all(self.extra_extractors):
            raise ConfigError(f"eval.extra_extractors must name each space once, got {self.extra_extractors}")
        if not self.select_min_diversity >= 0:
            raise ConfigError(f"eval.select_min_diversity must be 0 or more, got {self.select_min_diversity}")
        if self.select_snapshot not in SELECT_SNAPSHOT:
            raise ConfigError(
                f"eval.select_snapshot must be one of {', '.join(SELECT_SNAPSHOT)}, got {self.select_snapshot!r}"
            )
        unknown = [a for a in self.seg_arms if a not in SEG_ARMS]
        if unknown or len(set(self.seg_arms)) != len(self.seg_arms) or "real" not in self.seg_arms:
            raise ConfigError(
                f"eval.seg_arms must name each arm once, among them real (the reference), from {', '.join(SEG_ARMS)}; "
                f"got {self.seg_arms}"
            )
        for key in ("seg_seeds", "seg_steps", "seg_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"eval.{key} must be at least 1, got {getattr(self, key)}")


@dataclass
class GateMetric:
    """One rule of the promotion gate.

    ``min`` / ``max``: the challenger's value must beat the champion's by more than ``margin`` (lower / higher is
    better). ``at_least`` / ``at_most``: the challenger's own value must be ``>= margin`` / ``<= margin``, whatever
    the champion scored, and also when there is no champion yet; made for floors and for paired gains and their
    interval bounds, e.g.
    ``{name: dice_gain_ci_low.malignant, mode: at_least, margin: -0.05}``: with the top-up the rare class's Dice is
    not worse than without by more than 0.05, at 95 % confidence. An undefined value (a Dice baseline below
    ``eval.seg_min_baseline_dice``, too few test patients for an interval) fails the rule. ``improves`` (the
    default rule, on ``fid``): the challenger's evaluation scored the current champion too, on the same data,
    extractor, labels and latents (``eval.compare_champion``), and the lower end of the paired bootstrap interval of
    the improvement (``fid_improvement_ci_low``, champion minus challenger) must exceed ``margin``: a difference within
    noise keeps the champion. Without a champion the rule has nothing to compare and ``registry.floor`` decides; a
    comparison made against a version that is no longer the champion fails it.
    """

    name: str = "fid"
    mode: str = "min"
    margin: float = 0.0

    def __post_init__(self) -> None:
        """Reject an unknown mode when the config is built (it would otherwise read as ``max``).

        Whether the evaluate stage writes ``name`` depends on the rest of the config: :class:`Config` checks it.
        """
        if self.mode not in GATE_MODES:
            raise ConfigError(f"registry.gate mode must be one of {', '.join(GATE_MODES)}, got {self.mode!r}")
        if not isinstance(self.margin, (int, float)) or self.margin != self.margin:
            raise ConfigError(f"registry gate rule {self.name!r}: margin must be a number, got {self.margin!r}")


@dataclass
class RegistryConfig:
    """MLflow model registry, the champion/challenger gate and the lock that serializes promotions."""

    model_name: str = "medgan-generator"
    gate: list[GateMetric] = field(default_factory=lambda: [GateMetric("fid", "improves", 0.0)])
    # Absolute rules (at_least / at_most) a challenger must clear to become champion, the first model included: with
    # no champion the relative rules have nothing to beat, and without a floor any first model would be promoted.
    # The default is in the primary feature space's units (Inception): the quickstart's 1000-step models score FID
    # 175-251 over the seeds and settings of bench/RESULTS.md, its 200-step snapshots 363-409 (FID curves), an
    # untrained generator more. Set your own when you change eval.feature_extractor; the tiny preset has none.
    floor: list[GateMetric] = field(default_factory=lambda: [GateMetric("fid", "at_most", 300.0)])
    # Database (postgresql://user@host:port/db) or lock file (file:///path.lock) whose lock serializes deciding and
    # moving champion (components/promotion_lock.py). "": the tracking URI itself when it is a database or local
    # store; an http(s) tracking server needs it (or $MEDGAN_REGISTRY_LOCK_URI, which wins and may hold a password),
    # else promotions fall back to an optimistic compare-and-set with a warning. Never a password here: the config
    # is logged to MLflow (use PGPASSWORD or ~/.pgpass).
    lock_uri: str = ""
    lock_timeout_s: float = 300.0  # waiting longer for the lock fails the gate step, with a "refused" audit record

    def __post_init__(self) -> None:
        """Reject a floor rule that is not absolute, a lock URI with a password, a non-positive timeout."""
        for rule in self.floor:
            if rule.mode not in ABSOLUTE_MODES:
                raise ConfigError(
                    f"registry.floor rule {rule.name!r} has mode {rule.mode!r}; a floor judges the challenger alone: "
                    f"use one of {', '.join(ABSOLUTE_MODES)} (relative rules belong in registry.gate)"
                )
        netloc = self.lock_uri.split("://", 1)[1].split("/", 1)[0] if "://" in self.lock_uri else ""
        if ":" in netloc.rpartition("@")[0]:
            raise ConfigError(
                "registry.lock_uri must not hold a password (the config is logged to MLflow); give it through "
                "PGPASSWORD or ~/.pgpass, or put the whole URI in $MEDGAN_REGISTRY_LOCK_URI"
            )
        if self.lock_timeout_s <= 0:
            raise ConfigError(f"registry.lock_timeout_s must be above 0, got {self.lock_timeout_s}")


@dataclass
class TrackingConfig:
    """Where runs are tracked. An empty URI means SQLite inside the project's run folder."""

    tracking_uri: str = ""
    experiment: str = "medgan"


K8S_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


@dataclass
class KubernetesConfig:
    """How the compiled pipeline's task pods and the training job's pods run on a cluster (local runs ignore it).

    Secrets are named, never held: their templates are in k8s/secrets/, in the namespace the pipeline runs in.
    Resource quantities are Kubernetes quantities ("4", "500m", "16Gi"); "" leaves a request or limit unset.
    """

    # Secret with MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, given to every task and training pod that
    # talks to the tracking server.
    mlflow_secret: str = "medgan-mlflow-client"
    # Secret with MEDGAN_PATIENT_SALT (ingest.salt_env) for the ingest task: the same salt on every run, so a patient
    # keeps one pseudonym across runs.
    salt_secret: str = "medgan-patient-salt"
    # Secret with the DVC remote's credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and, for S3-compatible
    # stores, AWS_ENDPOINT_URL) for the data step (dvc pull) and the top-up push.
    dvc_secret: str = "medgan-dvc-remote"
    # Requests and limits of every task pod, and of the heavy ones (evaluate; train with train.launcher=local).
    task_cpu: str = "1"
    task_memory: str = "4Gi"
    task_cpu_limit: str = "4"
    task_memory_limit: str = "16Gi"
    heavy_cpu: str = "4"
    heavy_memory: str = "16Gi"
    heavy_cpu_limit: str = "8"
    heavy_memory_limit: str = "48Gi"
    # GPUs: the accelerator resource of the train task (train.launcher=local on a GPU preset: train.nproc of them)
    # and of the training job's pods (train.gpus_per_node each); evaluate_gpus for the evaluate task (0: CPU).
    accelerator: str = "nvidia.com/gpu"
    evaluate_gpus: int = 0
    # Where GPU pods may go: node labels "key=value" (the default is set by NVIDIA's GPU feature discovery) and the
    # taints they tolerate, "key[=value]:Effect" (key alone: any value).
    gpu_node_selector: list[str] = field(default_factory=lambda: ["nvidia.com/gpu.present=true"])
    gpu_tolerations: list[str] = field(default_factory=lambda: ["nvidia.com/gpu:NoSchedule"])
    # Training job pods (per node, beside the GPUs) and the memory-backed /dev/shm of the data loader's workers.
    pod_cpu: str = "8"
    pod_memory: str = "32Gi"
    pod_cpu_limit: str = ""
    pod_memory_limit: str = "64Gi"
    shm_size: str = "8Gi"
    # Every pod runs as this non-root user (the image's), without privilege escalation.
    run_as_user: int = 10001
    # Retries of the tasks that meet transient failures (network, preemption): data step, open-run, train,
    # evaluate, exit handler; the backoff doubles from retry_backoff up to retry_backoff_max.
    retries: int = 2
    retry_backoff: str = "60s"
    retry_backoff_max: str = "30m"

    def __post_init__(self) -> None:
        """Reject a value the cluster would reject later, naming the key."""
        for key in (
            "task_cpu",
            "task_memory",
            "task_cpu_limit",
            "task_memory_limit",
            "heavy_cpu",
            "heavy_memory",
            "heavy_cpu_limit",
            "heavy_memory_limit",
            "pod_cpu",
            "pod_memory",
            "pod_cpu_limit",
            "pod_memory_limit",
            "shm_size",
        ):
            value = getattr(self, key)
            if value and not K8S_QUANTITY.match(value):
                raise ConfigError(f"kubernetes.{key} must be a Kubernetes quantity (4, 500m, 16Gi), got {value!r}")
        for key in ("evaluate_gpus", "retries", "run_as_user"):
            if getattr(self, key) < 0:
                raise ConfigError(f"kubernetes.{key} must be 0 or more, got {getattr(self, key)}")
        if self.run_as_user == 0:
            raise ConfigError("kubernetes.run_as_user must not be 0: pods run as a non-root user")
        for key in ("retry_backoff", "retry_backoff_max"):
            if not re.match(r"^[0-9]+(s|m|h)$", getattr(self, key)):
                raise ConfigError(f"kubernetes.{key} must be a duration (60s, 5m, 1h), got {getattr(self, key)!r}")
        self.node_selector()
        self.tolerations()

    def node_selector(self) -> dict[str, str]:
        """``gpu_node_selector`` as a Kubernetes nodeSelector."""
        out = {}
        for item in self.gpu_node_selector:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"kubernetes.gpu_node_selector entries are key=value, got {item!r}")
            out[key] = value
        return out

    def tolerations(self) -> list[dict[str, str]]:
        """``gpu_tolerations`` as Kubernetes tolerations (``operator: Exists`` when no value is given)."""
        out = []
        for item in self.gpu_tolerations:
            spec, _, effect = item.rpartition(":")
            key, sep, value = spec.partition("=")
            if not key or effect not in TOLERATION_EFFECTS:
                raise ConfigError(
                    f"kubernetes.gpu_tolerations entries are key[=value]:Effect with Effect one of "
                    f"{', '.join(TOLERATION_EFFECTS)}, got {item!r}"
                )
            tol = {"key": key, "operator": "Equal", "value": value} if sep else {"key": key, "operator": "Exists"}
            out.append({**tol, "effect": effect})
        return out


@dataclass
class Config:
    """The whole resolved configuration of one pipeline run."""

    preset: str = "quickstart"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    topup: TopupConfig = field(default_factory=TopupConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)

    def __post_init__(self) -> None:
        """Reject a gate or floor rule naming a metric the evaluate stage never writes under this config."""
        from components.metric_names import check_metric_name

        for section in ("gate", "floor"):
            for i, rule in enumerate(getattr(self.registry, section)):
                why = check_metric_name(
                    rule.name, list(self.data.classes), list(self.eval.extra_extractors), list(self.eval.seg_arms)
                )
                if why:
                    raise ConfigError(f"registry.{section}[{i}] names no metric of the evaluate stage: {why}")
                if rule.mode == "improves" and rule.name not in PAIRED_METRICS:
                    raise ConfigError(
                        f"registry.{section}[{i}]: mode improves needs a paired comparison with the champion, which "
                        f"evaluate makes for {', '.join(PAIRED_METRICS)} only, not {rule.name!r}"
                    )
                if rule.mode == "improves" and not self.eval.compare_champion:
                    raise ConfigError(
                        f"registry.{section}[{i}]: mode improves reads the champion comparison that "
                        "eval.compare_champion=false turns off"
                    )

    def to_json(self) -> str:
        """Serialise to JSON (the form passed between pipeline components)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Config:
        """Rebuild a config from :meth:`to_json` output."""
        return _build(cls, json.loads(text), "")

    def flat(self) -> dict[str, Any]:
        """Dotted ``key: value`` pairs, as logged to MLflow params."""
        return flatten(asdict(self))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings (a config as plain data) as dotted ``key: value`` pairs; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


# Presets override the dataclass defaults; each is a nested dict of the fields it changes.
PRESETS: dict[str, dict[str, Any]] = {
    "quickstart": {},
    # The quickstart's model and data with a longer CPU budget: 10x the steps, about 30 min of training on 2 cores
    # (bench/quality.py --preset quickstart-long), more samples behind the metrics and every Dice arm at 3 seeds.
    "quickstart-long": {
        "train": {"steps": 10000, "checkpoint_every": 1000, "log_every": 50, "sample_every": 1000},
        "eval": {"fid_samples": 256, "fid_curve_samples": 128, "seg_arms": list(SEG_ARMS), "seg_seeds": 3},
    },
    # Seconds-long runs for tests and --dry-run style smoke checks.
    "tiny": {
        "data": {"image_size": 32},
        "ingest": {"workers": 1},
        "validate": {"min_images_per_class": 2, "min_patients": 2},
        "train": {
            "steps": 6,
            "batch_size": 8,
            "z_dim": 16,
            "g_channels": 8,
            "d_channels": 8,
            "checkpoint_every": 3,
            "log_every": 2,
            "sample_every": 3,
            "r1_interval": 2,
        },
        "eval": {
            "feature_extractor": "pixels",
            "fid_samples": 16,
            "kid_subset_size": 8,
            "kid_subsets": 4,
            "bootstrap": 5,
            "seg_steps": 2,
            "synth_per_class": 4,
        },
        # No floor: the 6-step model is useless by design (pixel-space FID ~100 on the test phantom) and must still
        # take the promote branch, so that the smoke runs exercise the whole gate.
        "registry": {"floor": []},
    },
    "ct-128": {
        "data": {"image_size": 128, "window_center": 40.0, "window_width": 400.0},
        "train": {
            "steps": 20000,
            "batch_size": 64,
            "g_channels": 64,
            "d_channels": 64,
            "z_dim": 128,
            "checkpoint_every": 1000,
            "log_every": 100,
            "sample_every": 1000,
            "device": "cuda",
        },
        "eval": {
            "fid_samples": 2000,
            "fid_curve_samples": 0,
            "kid_subset_size": 500,
            "kid_subsets": 50,
            "bootstrap": 200,
            "seg_arms": list(SEG_ARMS),
            "seg_seeds": 3,
            "seg_steps": 2000,
            "synth_per_class": 500,
        },
    },
    "ct-256": {
        "data": {"image_size": 256, "window_center": 40.0, "window_width": 400.0},
        "train": {
            "steps": 50000,
            "batch_size": 32,
            "g_channels": 64,
            "d_channels": 64,
            "z_dim": 128,
            "checkpoint_every": 2000,
            "log_every": 100,
            "sample_every": 2000,
            "device": "cuda",
        },
        "eval": {
            "fid_samples": 5000,
            "fid_curve_samples": 0,
            "kid_subset_size": 1000,
            "kid_subsets": 50,
            "bootstrap": 200,
            "seg_arms": list(SEG_ARMS),
            "seg_seeds": 3,
            "seg_steps": 3000,
            "synth_per_class": 1000,
        },
    },
}


def resolve(preset: str = "quickstart", overrides: list[str] | None = None) -> Config:
    """Build the config of ``preset`` with ``key=value`` overrides (e.g. ``train.steps=100``) applied."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(sorted(PRESETS))}")
    cfg = _merge(asdict(Config()), PRESETS[preset], "")
    cfg["preset"] = preset
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.steps=100)")
        _set_dotted(cfg, key.strip(), _parse_value(raw.strip()))
    return _build(Config, cfg, "")


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _unknown_key(key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys: {', '.join(known)}"
    return ConfigError(f"unknown config key {key!r}{hint}")


def _merge(base: dict[str, Any], update: dict[str, Any], prefix: str) -> dict[str, Any]:
    for key, value in update.items():
        if key not in base:
            raise _unknown_key(prefix + key, list(base))
        if isinstance(base[key], dict) and isinstance(value, dict):
            _merge(base[key], value, f"{prefix}{key}.")
        else:
            base[key] = value
    return base


def _set_dotted(cfg: dict[str, Any], key: str, value: Any) -> None:
    node = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            raise _unknown_key(key, list(node) if isinstance(node, dict) else [])
        if i == len(parts) - 1:
            node[part] = value
        else:
            node = node[part]


def _build(cls: type, data: Any, path: str) -> Any:
    """Instantiate dataclass ``cls`` from plain data, checking every field's type."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section {path or 'root'!r} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise _unknown_key(path + key, sorted(known))
    kwargs = {name: _coerce(hints[name], data[name], path + name) for name in known if name in data}
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, path)
    if origin is list:
        if not isinstance(value, list):
            if isinstance(value, str) and args and args[0] is str:
                value = [v.strip() for v in value.split(",") if v.strip()]
            else:
                raise ConfigError(f"config key {path!r} must be a list, got {value!r}")
        return [_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {path!r} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key {path!r} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config key {path!r} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        return str(value)
    return value
