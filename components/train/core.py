"""Train stage core: run the :class:`~components.train.trainer.Trainer` in-process, or under torchrun for DDP.

With ``cfg.train.nproc > 1`` the stage launches ``torchrun --standalone --nproc_per_node=N`` (as
``python -m torch.distributed.run``, so the launcher of this interpreter is used whatever is on ``PATH``) on
:mod:`components.train.worker`; rank 0 writes the outputs and ``train_summary.json``, which becomes the return
value. With ``cfg.train.launcher`` ``trainjob`` or ``pytorchjob`` the same worker module runs in a Kubeflow Trainer
``TrainJob`` / Training Operator ``PyTorchJob`` (:mod:`components.train.kubernetes`), and this step waits for it.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from components import errors
from components.config import Config
from components.errors import TrainingError
from components.tracking import NullTracker, RunTracker, Tracker
from components.train.trainer import SUMMARY_FILE, Trainer, check_train_config, distributed

OUTPUT_TAIL_LINES = 40


def make_tracker(tracking: dict[str, str] | None, rank: int) -> Tracker:
    """Rank 0 logs to the pipeline run's MLflow run (when tracking is configured); every other rank logs nothing."""
    if rank != 0 or not tracking:
        return NullTracker()
    return RunTracker.of(tracking)


def train_rank(
    archive_dir: str | os.PathLike[str],
    split_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    cfg: Config,
    tracking: dict[str, str] | None,
) -> dict[str, Any]:
    """What one process does: join the torchrun job (if any), train, and always leave the process group."""
    with distributed(cfg.train.device) as ctx:
        tracker = make_tracker(tracking, ctx.rank)
        try:
            return Trainer(archive_dir, split_dir, out_dir, cfg, tracker, ctx).fit()
        finally:
            tracker.close()


def train(
    archive_dir: str | os.PathLike[str],
    split_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    cfg: Config,
    tracking: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Train the GAN on the train split and write the model folder; return the training summary.

    ``tracking`` is ``{"tracking_uri", "experiment", "run_key"}`` of the pipeline run, or ``None`` to log nothing.
    The summary holds ``steps``, ``final_losses``, ``img_per_s``, ``step_time_ms``, ``rollbacks`` and ``paths``.
    """
    check_train_config(cfg)  # fail here, not in N workers
    if cfg.train.launcher != "local":
        return _train_on_kubernetes(archive_dir, split_dir, out_dir, cfg, tracking)
    cfg.train.per_process_batch(cfg.train.nproc, "train.nproc")  # likewise
    if cfg.train.nproc == 1:
        return train_rank(archive_dir, split_dir, out_dir, cfg, tracking)
    return _launch_torchrun(archive_dir, split_dir, out_dir, cfg, tracking)


def _train_on_kubernetes(
    archive_dir: str | os.PathLike[str],
    split_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    cfg: Config,
    tracking: dict[str, str] | None,
) -> dict[str, Any]:
    """Submit a TrainJob / PyTorchJob, wait for it, and read rank 0's summary from the shared volume."""
    from components.train.kubernetes import train_on_kubernetes

    out = Path(out_dir)
    summary_path = out / SUMMARY_FILE
    summary_path.unlink(missing_ok=True)  # a stale summary must not pass for this run's result
    job = train_on_kubernetes(str(archive_dir), str(split_dir), str(out), cfg, tracking)
    if not summary_path.is_file():
        raise TrainingError(
            f"{job['kind']} {job['metadata']['name']} succeeded but {summary_path} is not visible here; "
            f"mount train.data_volume_claim at train.data_mount_path in this step too"
        )
    return json.loads(summary_path.read_text())


def _launch_torchrun(
    archive_dir: str | os.PathLike[str],
    split_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    cfg: Config,
    tracking: dict[str, str] | None,
) -> dict[str, Any]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY_FILE).unlink(missing_ok=True)  # a stale summary must not pass for this run's result
    with tempfile.TemporaryDirectory(prefix="medgan-train-") as tmp:
        config_file = Path(tmp) / "config.json"
        config_file.write_text(cfg.to_json())
        error_file = Path(tmp) / "error.json"
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={cfg.train.nproc}",
            "-m",
            "components.train.worker",
            "--archive",
            str(archive_dir),
            "--split",
            str(split_dir),
            "--out",
            str(out),
            "--config-json-file",
            str(config_file),
            "--tracking-json",
            json.dumps(tracking),
            "--error-file",
            str(error_file),
        ]
        env = dict(os.environ)
        # The workers must import this very checkout, also when it is not installed.
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        tail: collections.deque[str] = collections.deque(maxlen=OUTPUT_TAIL_LINES)
        with subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, errors="replace", bufsize=1
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:  # stream the workers' output through, keep the tail for the error message
                sys.stderr.write(line)
                tail.append(line.rstrip("\n").split("\r")[-1])
            rc = proc.wait()
        if rc != 0:
            if error_file.is_file():
                err = json.loads(error_file.read_text())
                cls = getattr(errors, err.get("type", ""), None)
                if isinstance(cls, type) and issubclass(cls, errors.MedganError):
                    raise cls(err["message"])
            raise TrainingError(
                f"torchrun training with {cfg.train.nproc} processes failed (exit status {rc}); "
                f"last output:\n" + "\n".join(tail)
            )
    summary_path = out / SUMMARY_FILE
    if not summary_path.is_file():
        raise TrainingError(f"torchrun finished but rank 0 wrote no {summary_path}")
    return json.loads(summary_path.read_text())
