"""Running the pipeline on Kubeflow Pipelines: one run (``medgan submit``) or one recurring run (``medgan schedule``).

Both compile the cluster pipeline for the resolved config (:func:`pipeline.dag.build_cluster_pipeline`) and talk to
the KFP v2beta1 REST API through ``kfp.Client``. The endpoint and credentials come from the environment, never from
the config (which is logged to MLflow):

- ``KF_PIPELINES_ENDPOINT``: the KFP API (``--host`` wins), e.g. ``http://ml-pipeline.kubeflow:8888`` in the cluster or
  ``http://localhost:8888`` through ``kubectl port-forward -n kubeflow svc/ml-pipeline 8888``;
- ``KF_PIPELINES_TOKEN``: a bearer token (``kubectl create token <service account>``); or
  ``KF_PIPELINES_COOKIE``: the session cookie of a multi-user Kubeflow behind Dex / oauth2-proxy, e.g.
  ``oauth2_proxy=...``; neither for an open standalone KFP.

A run's data: by default the DVC pointer beside ``--data`` (``data.dvc``, as ``make data`` writes it) pins the
dataset, and the project's default DVC remote (or ``--dvc-remote``) is where the cluster's data step pulls it from;
``--dataset-repo URL [--dataset-rev REV]`` instead makes every run pull the repository's current version (what a
recurring run wants). The tracking server is ``tracking.tracking_uri`` (an http(s) URL the pods reach).

``schedule`` keeps exactly one recurring run per ``--name`` in the experiment: created when missing, left alone when
nothing changed (its description carries a digest of the pipeline, parameters and schedule), replaced when anything
did (KFP has no update call), paused with ``--pause``, resumed by scheduling it again, removed with ``--delete``.
It always runs with max concurrency 1 and no catch-up.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components import dataversion
from components.config import Config
from components.errors import ConfigError, MedganError

TOKEN_ENV = "KF_PIPELINES_TOKEN"
COOKIE_ENV = "KF_PIPELINES_COOKIE"
ENDPOINT_ENV = "KF_PIPELINES_ENDPOINT"  # read by kfp.Client itself
DIGEST = re.compile(r"medgan-schedule-digest=([0-9a-f]{64})")
CRON_FIELDS = 6  # KFP's cron (robfig/cron): seconds minutes hours day-of-month month day-of-week


class KfpError(MedganError):
    """The Kubeflow Pipelines API refused a request or could not be reached."""


def kfp_client(host: str = "", namespace: str = "") -> Any:
    """A ``kfp.Client`` for ``host`` (default ``$KF_PIPELINES_ENDPOINT``) with the credentials of the environment."""
    import warnings

    import kfp

    host = host or os.environ.get(ENDPOINT_ENV, "")
    if not host:
        raise ConfigError(f"no Kubeflow Pipelines endpoint: pass --host or set {ENDPOINT_ENV}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP v2.0.0-beta.2 and later"
        try:
            return kfp.Client(
                host=host,
                namespace=namespace or "kubeflow",
                existing_token=os.environ.get(TOKEN_ENV) or None,
                cookies=os.environ.get(COOKIE_ENV) or None,
            )
        except Exception as exc:  # noqa: BLE001 - kfp raises bare exceptions for connection problems
            raise KfpError(f"could not reach Kubeflow Pipelines at {host}: {exc}") from exc


def default_dvc_remote(data_dir: str | os.PathLike[str]) -> str:
    """The URL of the default DVC remote of the project that tracks ``data_dir`` ("" when it has none)."""
    pointer = dataversion.find_dvc_file(data_dir)
    if pointer is None:
        return ""

    def dvc(*args: str) -> str:
        command = [sys.executable, "-m", "dvc", *args]
        return subprocess.run(command, cwd=pointer.parent, capture_output=True, text=True, timeout=60).stdout.strip()

    default = dvc("remote", "default")
    return dvc("config", f"remote.{default}.url") if default else ""


def run_arguments(
    cfg: Config,
    *,
    data_dir: str = "data",
    dvc_remote: str = "",
    dataset_repo: str = "",
    dataset_rev: str = "",
    dataset_path: str = "data",
) -> dict[str, str]:
    """The cluster pipeline's parameters for a run of ``cfg`` on the dataset named as the module doc says."""
    uri = cfg.tracking.tracking_uri
    if not re.match(r"^https?://", uri):
        raise ConfigError(
            f"tracking.tracking_uri={uri!r}: a cluster run logs to a tracking server its pods reach, e.g. "
            "--set tracking.tracking_uri=http://mlflow.medgan.svc:5000 (k8s/overlays)"
        )
    tracking = {"tracking_uri": uri, "experiment": cfg.tracking.experiment, "run_key": ""}
    args = {
        "config_json": cfg.to_json(),
        "tracking_json": json.dumps(tracking, sort_keys=True),
        "dataset_version_json": "{}",
        "dvc_remote": dvc_remote,
        "dataset_repo": dataset_repo,
        "dataset_rev": dataset_rev,
        "dataset_path": dataset_path,
    }
    if dataset_repo:
        return args
    lineage = dataversion.describe(data_dir)
    if not lineage.get("tracked"):
        raise ConfigError(
            f"{data_dir} is not tracked by DVC (no {Path(data_dir).name}.dvc beside it): `dvc add` and `dvc push` it, "
            "or name a repository with --dataset-repo"
        )
    remote = dvc_remote or default_dvc_remote(data_dir)
    if "://" not in remote:
        raise ConfigError(
            f"the DVC remote {remote or '(none)'!r} is not reachable from a cluster; push the data to an S3-compatible "
            "remote (`dvc remote add -d storage s3://bucket/path && dvc push`) or pass --dvc-remote URL"
        )
    return {**args, "dataset_version_json": json.dumps(lineage, sort_keys=True), "dvc_remote": remote}


def _package(cfg: Config, folder: str, arguments: dict[str, str]) -> Path:
    """The compiled cluster pipeline; a pinned dataset gives its pure stages a cross-run cache key."""
    from pipeline.dag import compile_pipeline

    path = Path(folder) / "medgan_pipeline.yaml"
    compile_pipeline(path, cfg, json.loads(arguments.get("dataset_version_json") or "{}"))
    return path


def _api_error(what: str, exc: Exception) -> KfpError:
    status = getattr(exc, "status", None)
    body = getattr(exc, "body", None) or exc
    return KfpError(f"{what} failed{f' (HTTP {status})' if status else ''}: {str(body)[:500]}")


def submit(
    cfg: Config,
    arguments: dict[str, str],
    client: Any,
    *,
    experiment: str = "medgan",
    run_name: str = "",
    namespace: str = "",
    service_account: str = "",
) -> dict[str, str]:
    """Compile and start one run; return its id, name and experiment."""
    with tempfile.TemporaryDirectory() as tmp:
        package = _package(cfg, tmp, arguments)
        try:
            exp = client.create_experiment(name=experiment, namespace=namespace or None)
            run = client.run_pipeline(
                experiment_id=exp.experiment_id,
                job_name=run_name or f"medgan {cfg.preset}",
                pipeline_package_path=str(package),
                params=arguments,
                service_account=service_account or None,
            )
        except MedganError:
            raise
        except Exception as exc:  # noqa: BLE001 - kfp_server_api.ApiException and connection errors
            raise _api_error("starting the run", exc) from exc
    return {"run_id": run.run_id, "run_name": run.display_name, "experiment_id": exp.experiment_id}


@dataclass(frozen=True)
class Schedule:
    """What ``medgan schedule`` keeps in place under one name."""

    name: str
    cron: str
    experiment: str = "medgan"
    namespace: str = ""
    service_account: str = ""


def kfp_cron(cron: str) -> str:
    """A cron expression in KFP's 6-field form (a standard 5-field one gets second 0)."""
    fields = cron.split()
    if len(fields) == CRON_FIELDS - 1:
        fields = ["0", *fields]
    if len(fields) != CRON_FIELDS:
        raise ConfigError(f"--cron {cron!r}: give 5 fields (minute hour day month weekday) or KFP's 6 (seconds first)")
    return " ".join(fields)


def _digest(spec: dict[str, Any], arguments: dict[str, str], sched: Schedule, cron: str) -> str:
    state = {
        "pipeline": spec,
        "parameters": arguments,
        "cron": cron,
        "max_concurrency": 1,
        "no_catchup": True,
        "service_account": sched.service_account,
    }
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()


def find_recurring_run(client: Any, experiment_id: str, name: str) -> Any | None:
    """The recurring run called ``name`` in the experiment (None when there is none; an error when several)."""
    flt = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})
    found, token = [], ""
    while True:
        page = client.list_recurring_runs(experiment_id=experiment_id, page_size=100, page_token=token, filter=flt)
        found += [r for r in page.recurring_runs or [] if r.display_name == name]
        token = page.next_page_token or ""
        if not token:
            break
    if len(found) > 1:
        ids = ", ".join(r.recurring_run_id for r in found)
        raise KfpError(f"{len(found)} recurring runs are called {name!r} ({ids}); delete all but one in the KFP UI")
    return found[0] if found else None


def schedule(
    cfg: Config,
    arguments: dict[str, str],
    client: Any,
    sched: Schedule,
    *,
    pause: bool = False,
    delete: bool = False,
) -> dict[str, str]:
    """Create, keep, replace, pause, resume or delete the recurring run ``sched.name``; say which and its id."""
    try:
        exp = client.create_experiment(name=sched.experiment, namespace=sched.namespace or None)
        existing = find_recurring_run(client, exp.experiment_id, sched.name)
        if delete:
            if existing is None:
                return {"action": "absent", "name": sched.name}
            client.delete_recurring_run(existing.recurring_run_id)
            return {"action": "deleted", "name": sched.name, "recurring_run_id": existing.recurring_run_id}
        if pause:
            if existing is None:
                raise KfpError(f"no recurring run called {sched.name!r} in experiment {sched.experiment!r} to pause")
            if existing.status != "DISABLED":
                client.disable_recurring_run(existing.recurring_run_id)
            return {"action": "paused", "name": sched.name, "recurring_run_id": existing.recurring_run_id}
        cron = kfp_cron(sched.cron)
        with tempfile.TemporaryDirectory() as tmp:
            package = _package(cfg, tmp, arguments)
            spec = [d for d in yaml.safe_load_all(package.read_text()) if d]
            digest = _digest({"documents": spec}, arguments, sched, cron)
            if existing is not None:
                match = DIGEST.search(existing.description or "")
                if match and match.group(1) == digest:
                    if existing.status == "DISABLED":
                        client.enable_recurring_run(existing.recurring_run_id)
                        return {"action": "resumed", "name": sched.name, "recurring_run_id": existing.recurring_run_id}
                    return {"action": "unchanged", "name": sched.name, "recurring_run_id": existing.recurring_run_id}
                client.delete_recurring_run(existing.recurring_run_id)
            created = client.create_recurring_run(
                experiment_id=exp.experiment_id,
                job_name=sched.name,
                description=f"medgan-ops retraining, kept by `medgan schedule`; medgan-schedule-digest={digest}",
                cron_expression=cron,
                max_concurrency=1,
                no_catchup=True,
                params=arguments,
                pipeline_package_path=str(package),
                enabled=True,
                service_account=sched.service_account or None,
            )
        action = "updated" if existing is not None else "created"
        return {"action": action, "name": sched.name, "recurring_run_id": created.recurring_run_id, "cron": cron}
    except MedganError:
        raise
    except Exception as exc:  # noqa: BLE001 - kfp_server_api.ApiException and connection errors
        raise _api_error(f"scheduling {sched.name!r}", exc) from exc
