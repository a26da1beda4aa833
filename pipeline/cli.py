"""``medgan`` command line: sample data, local runs, single stages, compile, the registry, Kubeflow runs.

Registry: promote, rollback, models, runs. Kubeflow Pipelines: submit one run, schedule a recurring one.

User mistakes (bad preset, missing data, failed validation, ...) print one clear message and exit with status 2;
only bugs show a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from components.config import PRESETS, Config, resolve
from components.errors import ConfigError, MedganError


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
    result = run_local(args.data, cfg, project_dir=args.project_dir, reuse=args.reuse)
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


def _registry(args: argparse.Namespace):  # noqa: ANN202 - (Config, tracking URI, MlflowClient)
    """The config, the tracking URI (--tracking-uri, else the config's, else the project's SQLite) and a client."""
    from mlflow.tracking import MlflowClient

    from components.tracking import default_tracking_uri

    cfg = _config(args)
    uri = args.tracking_uri or cfg.tracking.tracking_uri or default_tracking_uri(args.project_dir)
    return cfg, uri, MlflowClient(uri)


def cmd_promote(args: argparse.Namespace) -> None:
    """Make a version the champion by an operator's decision (the gate's lock, compare-and-set and audit)."""
    from components.promotion_lock import lock_target
    from components.register.promotion import operator_promote, rollback
    from components.registry import actor

    cfg, uri, client = _registry(args)
    name, reg = cfg.registry.model_name, cfg.registry
    target = lock_target(uri, name, reg.lock_uri)
    who, rules = actor(args.actor), (reg.gate, reg.floor, reg.lock_timeout_s)
    if args.command == "rollback":
        rec = rollback(client, name, args.reason, who, target, *rules)
    else:
        rec = operator_promote(client, name, args.version, args.reason, who, target, *rules)
    print(
        f"{name}: champion {rec['previous_champion']} -> {rec['new_champion']} ({rec['action']} by {rec['actor']}: "
        f"{rec['reason']}; {rec['gate_verdict']}; lock: {rec['lock']})"
    )


def cmd_models(args: argparse.Namespace) -> None:
    """List a model's versions with their key metrics, aliases and gate decisions."""
    from components.registry import all_versions, model_exists, version_metrics

    cfg, uri, client = _registry(args)
    name = cfg.registry.model_name
    if not model_exists(client, name):
        print(f"no registered model {name!r} at {uri}")
        return
    aliases: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    keys = list(dict.fromkeys([r.name for r in (*cfg.registry.gate, *cfg.registry.floor)] + ["fid", "kid"]))
    rows = []
    for mv in all_versions(client, name):
        metrics = version_metrics(mv)
        rows.append(
            {
                "version": str(mv.version),
                "aliases": ",".join(sorted(aliases.get(str(mv.version), []))) or "-",
                "decision": mv.tags.get("gate.decision", "undecided"),
                "decided": mv.tags.get("gate.at", "-"),
                "by": mv.tags.get("gate.actor", "-"),
                **{k: f"{metrics[k]:.4g}" if k in metrics else "-" for k in keys},
                "run": mv.tags.get("pipeline.run_key", "-"),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    cols = list(rows[0]) if rows else []
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    print(f"{name} at {uri}")
    for line in [{c: c for c in cols}, *rows]:
        print("  ".join(line[c].ljust(widths[c]) for c in cols).rstrip())


def cmd_runs(args: argparse.Namespace) -> None:
    """List RUNNING pipeline runs whose process is gone or silent; with --repair, close them as KILLED."""
    from components.registry import actor
    from components.runstate import close_run, find_orphans

    cfg, uri, client = _registry(args)
    orphans = find_orphans(client, cfg.tracking.experiment, args.stale_after_hours * 3600)
    if not orphans:
        print(f"no orphaned runs in experiment {cfg.tracking.experiment!r} at {uri}")
        return
    for o in orphans:
        print(f"orphan {o.run_key} (MLflow run {o.run_id}): {o.why}")
        if args.repair:
            records = close_run(client, o.run_id, "KILLED", o.why, actor(args.actor))
            settled = ", ".join(f"version {r['version']} {r['action']}" for r in records) or "no undecided version"
            print(f"  closed {o.run_key} as KILLED ({settled})")
    if not args.repair:
        print("close them (status KILLED, their undecided versions refused) with `medgan runs --repair`")


def _cluster_run(args: argparse.Namespace):  # noqa: ANN202 - (Config, run arguments, kfp.Client)
    """The config, the cluster pipeline's parameters and a KFP client, from the command line and the environment."""
    from pipeline.cluster import kfp_client, run_arguments

    cfg = _config(args)
    arguments = run_arguments(
        cfg,
        data_dir=args.data,
        dvc_remote=args.dvc_remote,
        dataset_repo=args.dataset_repo,
        dataset_rev=args.dataset_rev,
        dataset_path=args.dataset_path,
    )
    return cfg, arguments, kfp_client(args.host, args.namespace)


def cmd_submit(args: argparse.Namespace) -> None:
    """Start one run of the cluster pipeline on Kubeflow Pipelines."""
    from pipeline.cluster import submit

    cfg, arguments, client = _cluster_run(args)
    run = submit(
        cfg,
        arguments,
        client,
        experiment=args.experiment,
        run_name=args.run_name,
        namespace=args.namespace,
        service_account=args.service_account,
    )
    print(f"submitted run {run['run_id']} ({run['run_name']}) in experiment {args.experiment!r}")
    print(f"  MLflow run key kfp-{run['run_id']} at {cfg.tracking.tracking_uri}")


def cmd_schedule(args: argparse.Namespace) -> None:
    """Create, keep, replace, pause, resume or delete one recurring run of the cluster pipeline by name."""
    from pipeline.cluster import Schedule, kfp_client, schedule

    if not (args.cron or args.pause or args.delete):
        raise ConfigError("medgan schedule needs --cron (create or update), --pause or --delete")
    if args.pause or args.delete:
        cfg, arguments, client = _config(args), {}, kfp_client(args.host, args.namespace)
    else:
        cfg, arguments, client = _cluster_run(args)
        if not args.dataset_repo:
            print(
                "medgan: warning: no --dataset-repo: every scheduled run trains on the dataset version pinned now",
                file=sys.stderr,
            )
    sched = Schedule(args.name, args.cron, args.experiment, args.namespace, args.service_account)
    done = schedule(cfg, arguments, client, sched, pause=args.pause, delete=args.delete)
    where = f" ({done['recurring_run_id']})" if done.get("recurring_run_id") else ""
    cron = f", cron {done['cron']}" if "cron" in done else ""
    print(f"recurring run {done['name']!r}{where}: {done['action']}{cron}")


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
    p.add_argument(
        "--reuse",
        action="store_true",
        help="take ingest..evaluate from an earlier run of the same DVC data, config and code (kfp's local cache)",
    )
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

    def cluster_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--host", default="", help="Kubeflow Pipelines API (default: $KF_PIPELINES_ENDPOINT)")
        p.add_argument("--namespace", default="", help="KFP namespace (multi-user Kubeflow: your profile's)")
        p.add_argument("--experiment", default="medgan", help="KFP experiment")
        p.add_argument("--service-account", default="", help="Kubernetes service account of the run's pods")
        p.add_argument("--data", default="data", help="DVC-tracked data folder whose .dvc pointer pins the dataset")
        p.add_argument("--dvc-remote", default="", help="DVC remote URL the cluster pulls from (default: ours)")
        p.add_argument("--dataset-repo", default="", help="git URL: pull that repository's dataset at --dataset-rev")
        p.add_argument("--dataset-rev", default="", help="branch, tag or commit of --dataset-repo (default: HEAD)")
        p.add_argument("--dataset-path", default="data", help="the DVC-tracked folder in --dataset-repo")
        with_config(p)

    p = sub.add_parser("submit", help="run the pipeline on Kubeflow Pipelines (auth: $KF_PIPELINES_TOKEN/_COOKIE)")
    p.add_argument("--run-name", default="", help="display name of the run")
    cluster_args(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("schedule", help="create/update, pause or delete one recurring run by name (cron)")
    p.add_argument("--name", default="medgan-retraining", help="the recurring run's name (one per name)")
    p.add_argument("--cron", default="", help='e.g. "0 3 * * 1" (5 fields) or KFP\'s 6 (seconds first)')
    p.add_argument("--pause", action="store_true", help="disable the recurring run (resume: schedule it again)")
    p.add_argument("--delete", action="store_true", help="delete the recurring run")
    cluster_args(p)
    p.set_defaults(func=cmd_schedule)

    def registry_args(p: argparse.ArgumentParser, acts: bool = True) -> None:
        p.add_argument("--tracking-uri", default="", help="MLflow tracking URI (default: the project's runs/mlflow.db)")
        p.add_argument("--project-dir", default=".", help="where runs/ lives (for the default tracking URI)")
        if acts:
            p.add_argument("--actor", default="", help="who acts, for the audit record (default: $USER@host)")
        with_config(p)

    p = sub.add_parser("promote", help="make a model version the champion (operator decision, audited)")
    p.add_argument("--version", required=True, help="the registered version to promote")
    p.add_argument("--reason", required=True, help="why, for the audit record")
    registry_args(p)
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("rollback", help="move the champion back to the previous champion (from the audit trail)")
    p.add_argument("--reason", required=True, help="why, for the audit record")
    registry_args(p)
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("models", help="list the registered versions with metrics, aliases and gate decisions")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    registry_args(p, acts=False)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("runs", help="find pipeline runs left RUNNING by a dead process; --repair closes them")
    p.add_argument("--repair", action="store_true", help="close them as KILLED and settle their undecided versions")
    p.add_argument(
        "--stale-after-hours",
        type=float,
        default=12.0,
        help="a run of another host (or a Kubeflow run) without a heartbeat for this long is an orphan",
    )
    registry_args(p)
    p.set_defaults(func=cmd_runs)
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
