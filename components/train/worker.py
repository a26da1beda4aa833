"""torchrun entry point: ``torchrun --standalone --nproc_per_node=N -m components.train.worker --archive ...``.

The Kubernetes launchers (:mod:`components.train.kubernetes`) run the same module under the operator's torchrun.

Every rank runs :func:`components.train.core.train_rank`. A user error (bad data, divergence beyond the rollback
budget) is printed as one line, recorded by rank 0 in ``--error-file`` (so the launcher re-raises the same error
type) and ends the process with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from components.config import Config
from components.errors import MedganError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line interface of the worker."""
    parser = argparse.ArgumentParser(description="medgan GAN training worker (one torchrun rank)")
    parser.add_argument("--archive", required=True, help="dataset archive folder (ingest output)")
    parser.add_argument("--split", required=True, help="split folder holding split.parquet (rebalance output)")
    parser.add_argument("--out", required=True, help="model output folder (checkpoint.pt, generator.pt, ...)")
    config = parser.add_mutually_exclusive_group(required=True)
    config.add_argument("--config-json-file", help="file holding the resolved config as JSON")
    config.add_argument("--config-json", help="the resolved config as JSON (Kubernetes jobs: pods share no files)")
    parser.add_argument(
        "--tracking-json",
        default="null",
        help='JSON {"tracking_uri", "experiment", "run_key"} of the MLflow run, or null',
    )
    parser.add_argument("--error-file", default="", help="where rank 0 records a user error as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one rank; return the process exit status."""
    from components.train.core import train_rank

    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    try:
        text = Path(args.config_json_file).read_text() if args.config_json_file else args.config_json
        cfg = Config.from_json(text)
        train_rank(args.archive, args.split, args.out, cfg, json.loads(args.tracking_json))
    except MedganError as exc:
        print(f"MEDGAN-ERROR [train rank {rank}] {exc}", file=sys.stderr, flush=True)
        if rank == 0 and args.error_file:
            Path(args.error_file).write_text(json.dumps({"type": type(exc).__name__, "message": str(exc)}))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
