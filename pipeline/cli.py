"""``medgan`` command line: sample data, local runs, single stages, compile.

User mistakes (bad preset, missing data, failed validation, ...) print one clear message and exit with status 2;
only bugs show a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from components.config import PRESETS, Config, resolve
from components.errors import MedganError


def _config(args: argparse.Namespace) -> Config:
    return resolve(args.preset, args.set)


def cmd_phantom(args: argparse.Namespace) -> None:
    """Write the synthetic DICOM sample dataset."""
    from components.phantom import write_phantom

    out = write_phantom(
        args.out, seed=args.seed, n_patients=args.patients, slices_per_patient=args.slices, size=args.size
    )
    print(f"wrote phantom DICOM dataset to {out} (labels: {Path(out) / 'labels.csv'})")


def cmd_run(args: argparse.Namespace) -> None:
    """Run the whole pipeline locally."""
    from components.train.trainer import check_train_config
    from pipeline.local import run_local

    cfg = _config(args)
    check_train_config(cfg)  # a bad train setting fails now, not after ingest, validation and the split
    print(f"medgan: running preset {cfg.preset!r} on {args.data} (kfp local runner, CPU/GPU auto)", flush=True)
    result = run_local(args.data, cfg, project_dir=args.project_dir)
    gate = result.decision
    print("\n" + "=" * 72)
    print(f"run {result.run_key} finished")
    if gate:
        print(
            f"  model      {gate.get('model_name')} version {gate.get('challenger_version')} -> "
            f"{gate.get('action')} ({gate.get('reason')})"
        )
    print(f"  report     {result.report}")
    print(f"  run folder {result.run_dir}")
    print(f"  MLflow UI  mlflow ui --backend-store-uri {result.tracking_uri}   (then open http://127.0.0.1:5000)")
    print("=" * 72)


def cmd_compile(args: argparse.Namespace) -> None:
    """Compile the pipeline to a KFP YAML package for the config's train launcher."""
    from pipeline.dag import compile_pipeline

    cfg = _config(args)
    compile_pipeline(args.out, cfg)
    print(f"wrote {args.out} (train.launcher={cfg.train.launcher})")


def cmd_config(args: argparse.Namespace) -> None:
    """Print the resolved configuration."""
    print(json.dumps(json.loads(_config(args).to_json()), indent=2))


def cmd_sample(args: argparse.Namespace) -> None:
    """Write synthetic DICOM samples of one class from a registered model or a generator file."""
    from components.export import export_samples

    result = export_samples(args.model, args.cls, args.n, args.out, seed=args.seed, tracking_uri=args.tracking_uri)
    print(
        f"wrote {result['n']} synthetic {result['class']} samples of {result['model']['title']} to {result['out']} "
        f"(labels: {result['labels']}, manifest: {result['manifest']})"
    )


def cmd_stage(args: argparse.Namespace) -> None:
    """Run one stage's core on local folders (no kfp, no MLflow unless --tracking-uri is given)."""
    from components.tracking import NullTracker, RunTracker

    cfg = _config(args)
    tracking = None
    tracker = NullTracker()
    if args.tracking_uri:
        tracking = {"tracking_uri": args.tracking_uri, "experiment": cfg.tracking.experiment, "run_key": args.run_key}
        tracker = RunTracker(**tracking)
    if args.stage == "ingest":
        from components import dataversion
        from components.ingest.core import ingest

        result = ingest(args.data, args.out, cfg, dataset_version=dataversion.describe(args.data))
    elif args.stage == "validate":
        from components.validate.core import validate

        result = validate(args.archive, args.out, cfg, tracker)
    elif args.stage == "rebalance":
        from components.rebalance.core import rebalance

        result = rebalance(args.archive, args.out, cfg, tracker)
    elif args.stage == "train":
        from components.train.core import train

        result = train(args.archive, args.split, args.out, cfg, tracking)
    else:
        from components.evaluate.core import evaluate

        topup = args.topup or str(Path(args.out) / "topup")
        result = evaluate(args.archive, args.split, args.model, args.out, cfg, tracking, topup_dir=topup)
    print(json.dumps(result, indent=2, default=str))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``medgan`` command."""
    parser = argparse.ArgumentParser(prog="medgan", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--preset", default="quickstart", help=f"named preset ({', '.join(PRESETS)})")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config value, e.g. --set train.steps=100 (repeatable)",
        )

    p = sub.add_parser("phantom", help="write a synthetic DICOM dataset (CT-like phantoms, 3 classes, masks)")
    p.add_argument("--out", default="data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patients", type=int, default=24)
    p.add_argument("--slices", type=int, default=12)
    p.add_argument("--size", type=int, default=128)
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("run", help="run the whole pipeline locally (kfp local runner)")
    p.add_argument("--data", default="data", help="folder of DICOM files + labels.csv")
    p.add_argument("--project-dir", default=".", help="where runs/ (MLflow db, outputs) lives")
    with_config(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "compile",
        help="compile the pipeline to KFP YAML (--set train.launcher=trainjob|pytorchjob: train on Kubernetes)",
    )
    p.add_argument("--out", default="medgan_pipeline.yaml")
    with_config(p)
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("config", help="print the resolved configuration of a preset")
    with_config(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("sample", help="write synthetic DICOM samples (+ masks, previews, manifest) of one class")
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or a generator.pt path")
    p.add_argument("--class", dest="cls", required=True, help="class name, e.g. malignant")
    p.add_argument("-n", type=int, required=True, help="number of samples")
    p.add_argument("--out", required=True, help="new (or empty) output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tracking-uri", default="", help="MLflow registry (default: MLFLOW_TRACKING_URI, runs/mlflow.db)")
    p.set_defaults(func=cmd_sample)

    needs = {
        "ingest": ("data",),
        "validate": ("archive",),
        "rebalance": ("archive",),
        "train": ("archive", "split"),
        "evaluate": ("archive", "split", "model"),
    }
    for stage, inputs in needs.items():
        p = sub.add_parser(stage, help=f"run the {stage} stage alone on local folders")
        for name in inputs:
            p.add_argument(f"--{name}", required=True)
        p.add_argument("--out", required=True)
        if stage == "evaluate":
            p.add_argument("--topup", default="", help="where the gan-topup set is written (default: OUT/topup)")
        p.add_argument("--tracking-uri", default="", help="log to this MLflow tracking URI")
        p.add_argument("--run-key", default="manual", help="MLflow run to log into (by its run key)")
        with_config(p)
        p.set_defaults(func=cmd_stage, stage=stage)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``medgan`` console script."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except MedganError as exc:
        print(f"medgan: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medgan: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
