"""Train on Kubernetes: a Kubeflow Trainer v2 ``TrainJob`` or a Training Operator v1 ``PyTorchJob``.

Both run ``torchrun -m components.train.worker ...`` (as ``python -m torch.distributed.run``) in the project image
on ``train.nodes`` nodes x ``train.gpus_per_node`` GPUs; the operator supplies the rendezvous (``PET_*`` /
``MASTER_ADDR`` environment), the worker is the same module the local launcher runs. The archive, split and model
folders are read and written on a shared volume (``train.data_volume_claim`` mounted at ``train.data_mount_path``
in every pod), so rank 0's outputs are where the caller expects them once the job has succeeded.

:func:`submit_and_wait` creates the job through ``kubernetes.client.CustomObjectsApi`` (passed in, or built from
the in-cluster / kubeconfig credentials), polls its status conditions and returns on success; a failed job raises
:class:`~components.errors.TrainingError` with the job's own message, and so does a job that does not finish within
``train.job_timeout_s`` (it is deleted then, so it stops holding GPUs).

In the compiled Kubeflow pipeline the train task's inputs and outputs are kfp artifacts, which the job's pods cannot
see: :func:`pipeline_volume` says how the train task is compiled (the claim it mounts, the folder it stages into) and
:func:`train_through_volume` is what that task does at run time: copy the archive and split onto the shared volume
under a per-run folder, run the job on those copies, copy the model folder back into the kfp output artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from components.config import Config
from components.errors import ConfigError, TrainingError
from components.image import BASE_IMAGE

TRAINJOB_GROUP, TRAINJOB_VERSION, TRAINJOB_PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
PYTORCHJOB_GROUP, PYTORCHJOB_VERSION, PYTORCHJOB_PLURAL = "kubeflow.org", "v1", "pytorchjobs"
TRAINING_RUNTIME = "torch-distributed"  # ClusterTrainingRuntime installed with Kubeflow Trainer
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# The operators derive pod/service names from the job name (e.g. "<name>-node-0-0"): keep room for the suffix.
MAX_JOB_NAME = 40
SUCCESS_CONDITIONS = ("Complete", "Succeeded")
FAILURE_CONDITIONS = ("Failed",)
DATA_VOLUME = "medgan-data"
SHM_VOLUME = "dshm"
RUNTIME_PATCH_MANAGER = "medgan-ops.io/train"  # owner of the TrainJob's runtime patch
MLFLOW_CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")  # keys of kubernetes.mlflow_secret
MLFLOW_CLIENT_LABEL = ("medgan-ops/mlflow-client", "true")  # pods the tracking server's NetworkPolicy admits
CONTAINER_SECURITY_CONTEXT = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
STAGING_FOLDER = "pipeline-runs"  # under train.data_mount_path: one sub-folder per pipeline run
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # a kfp run UUID; never a path


@dataclass(frozen=True)
class JobKind:
    """Where a custom resource lives in the API."""

    group: str
    version: str
    plural: str
    kind: str


TRAINJOB = JobKind(TRAINJOB_GROUP, TRAINJOB_VERSION, TRAINJOB_PLURAL, "TrainJob")
PYTORCHJOB = JobKind(PYTORCHJOB_GROUP, PYTORCHJOB_VERSION, PYTORCHJOB_PLURAL, "PyTorchJob")
KINDS = {"trainjob": TRAINJOB, "pytorchjob": PYTORCHJOB}


def job_name(cfg: Config, archive_dir: str, out_dir: str, prefix: str = "medgan-train") -> str:
    """A DNS-1123 name, stable for the same config and folders (a resubmission finds the same job)."""
    digest = hashlib.sha256(f"{cfg.to_json()}\0{archive_dir}\0{out_dir}".encode()).hexdigest()[:10]
    return f"{prefix}-{digest}"[:MAX_JOB_NAME]


def check_kubernetes_config(cfg: Config, *paths: str) -> None:
    """Reject settings a cluster would reject later (or that cannot work), naming the key."""
    tc = cfg.train
    if tc.launcher not in KINDS:
        raise ConfigError(f"train.launcher={tc.launcher!r} is not a Kubernetes launcher ({', '.join(KINDS)})")
    if not DNS1123_LABEL.match(tc.namespace) or len(tc.namespace) > 63:
        raise ConfigError(f"train.namespace must be a DNS-1123 label, got {tc.namespace!r}")
    if tc.service_account and not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", tc.service_account):
        raise ConfigError(f"train.service_account must be a DNS-1123 name, got {tc.service_account!r}")
    if tc.image_pull_policy not in PULL_POLICIES:
        raise ConfigError(f"train.image_pull_policy must be one of {', '.join(PULL_POLICIES)}")
    for key in ("nodes", "gpus_per_node", "job_timeout_s"):
        if getattr(tc, key) < 1:
            raise ConfigError(f"train.{key} must be at least 1, got {getattr(tc, key)}")
    if tc.device == "cpu":
        raise ConfigError("train.device=cpu cannot run on the GPU nodes a Kubernetes launcher asks for")
    tc.per_process_batch(tc.nodes * tc.gpus_per_node, "train.nodes x train.gpus_per_node")
    if tc.data_volume_claim:
        if not DNS1123_LABEL.match(tc.data_volume_claim):
            raise ConfigError(f"train.data_volume_claim must be a DNS-1123 name, got {tc.data_volume_claim!r}")
        mount = PurePosixPath(tc.data_mount_path)
        if not mount.is_absolute():
            raise ConfigError(f"train.data_mount_path must be absolute, got {tc.data_mount_path!r}")
        for path in paths:
            if not PurePosixPath(path).is_relative_to(mount):
                raise ConfigError(
                    f"{path} is not under train.data_mount_path={mount}: the training pods see only the volume "
                    f"{tc.data_volume_claim!r} mounted there"
                )


def worker_args(
    archive_dir: str, split_dir: str, out_dir: str, cfg: Config, tracking: dict[str, str] | None
) -> list[str]:
    """The arguments of :mod:`components.train.worker` (the config travels inline: pods share no temp folder)."""
    return [
        "--archive",
        str(archive_dir),
        "--split",
        str(split_dir),
        "--out",
        str(out_dir),
        "--config-json",
        cfg.to_json(),
        "--tracking-json",
        json.dumps(tracking),
    ]


def _command(cfg: Config) -> list[str]:
    # torchrun takes --nnodes/--nproc-per-node/--node-rank/--master-* from the PET_* variables the operators set.
    return ["python", "-m", "torch.distributed.run", "-m", "components.train.worker"]


def _env(cfg: Config, tracking: dict[str, str] | None) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "MEDGAN_LAUNCHER", "value": "kubernetes"},
    ]
    if tracking:
        env += [
            {"name": "MLFLOW_TRACKING_URI", "value": tracking["tracking_uri"]},
            {"name": "MLFLOW_EXPERIMENT_NAME", "value": tracking["experiment"]},
            {"name": "MEDGAN_RUN_KEY", "value": tracking["run_key"]},
        ]
        secret = cfg.kubernetes.mlflow_secret
        if secret:  # rank 0 logs to a tracking server that runs MLflow's basic-auth app (k8s/README.md)
            env += [
                {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": name}}}
                for name in MLFLOW_CREDENTIALS
            ]
    return env


def _volumes(cfg: Config) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The pods' volumes and the container's mounts: the shared data claim and a memory-backed /dev/shm."""
    tc, kc = cfg.train, cfg.kubernetes
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if tc.data_volume_claim:
        volumes.append({"name": DATA_VOLUME, "persistentVolumeClaim": {"claimName": tc.data_volume_claim}})
        mounts.append({"name": DATA_VOLUME, "mountPath": tc.data_mount_path})
    if kc.shm_size:  # the container runtime's default /dev/shm (64 MiB) is too small for DataLoader workers
        volumes.append({"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": kc.shm_size}})
        mounts.append({"name": SHM_VOLUME, "mountPath": "/dev/shm"})
    return volumes, mounts


def _resources(cfg: Config) -> dict[str, dict[str, str]]:
    """Requests and limits of one training pod: its GPUs beside CPU and memory (``""`` leaves one unset)."""
    tc, kc = cfg.train, cfg.kubernetes
    gpus = {kc.accelerator: str(tc.gpus_per_node)}  # an extended resource: request == limit
    requests = {k: v for k, v in (("cpu", kc.pod_cpu), ("memory", kc.pod_memory)) if v}
    limits = {k: v for k, v in (("cpu", kc.pod_cpu_limit), ("memory", kc.pod_memory_limit)) if v}
    return {"requests": {**requests, **gpus}, "limits": {**limits, **gpus}}


def pod_security_context(cfg: Config) -> dict[str, Any]:
    """The pod-level security context of the training pods: the image's non-root user, RuntimeDefault seccomp."""
    uid = cfg.kubernetes.run_as_user
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_fields(cfg: Config, volumes: list[dict[str, Any]]) -> dict[str, Any]:
    """Identity, placement, security and volumes of a training pod (the container aside)."""
    kc = cfg.kubernetes
    fields: dict[str, Any] = {}
    if cfg.train.service_account:
        fields["serviceAccountName"] = cfg.train.service_account
    if kc.node_selector():
        fields["nodeSelector"] = kc.node_selector()
    if kc.tolerations():
        fields["tolerations"] = kc.tolerations()
    fields["securityContext"] = pod_security_context(cfg)
    if volumes:
        fields["volumes"] = volumes
    return fields


def _labels(cfg: Config) -> dict[str, str]:
    return {"app.kubernetes.io/name": "medgan-ops", "app.kubernetes.io/component": "train", "medgan/preset": cfg.preset}


def _pod_labels(cfg: Config) -> dict[str, str]:
    # The tracking server's NetworkPolicy (k8s/base/tracking/networkpolicy.yaml) admits pods with this label only.
    return {**_labels(cfg), MLFLOW_CLIENT_LABEL[0]: MLFLOW_CLIENT_LABEL[1]}


def build_trainjob(
    archive_dir: str,
    split_dir: str,
    out_dir: str,
    cfg: Config,
    tracking: dict[str, str] | None = None,
    *,
    name: str | None = None,
    image: str = BASE_IMAGE,
) -> dict[str, Any]:
    """A Kubeflow Trainer ``TrainJob`` (v2.2 and later: ``runtimePatches``) on the ``torch-distributed`` runtime.

    Resources and environment go in ``spec.trainer``; placement, identity, security, volumes and pod labels in a
    runtime patch of the runtime's ``node`` job (the fields Trainer lets a TrainJob patch).
    """
    tc = cfg.train
    check_kubernetes_config(cfg, archive_dir, split_dir, out_dir)
    volumes, mounts = _volumes(cfg)
    container: dict[str, Any] = {"name": "node", "securityContext": CONTAINER_SECURITY_CONTEXT}
    if mounts:
        container["volumeMounts"] = mounts
    pod = {"metadata": {"labels": _pod_labels(cfg)}, "spec": {**_pod_fields(cfg, volumes), "containers": [container]}}
    node_job = {"name": "node", "template": {"spec": {"template": pod}}}
    return {
        "apiVersion": f"{TRAINJOB_GROUP}/{TRAINJOB_VERSION}",
        "kind": "TrainJob",
        "metadata": {
            "name": name or job_name(cfg, archive_dir, out_dir),
            "namespace": tc.namespace,
            "labels": _labels(cfg),
        },
        "spec": {
            "runtimeRef": {"name": TRAINING_RUNTIME, "kind": "ClusterTrainingRuntime", "apiGroup": TRAINJOB_GROUP},
            "trainer": {
                "image": image,
                "command": _command(cfg),
                "args": worker_args(archive_dir, split_dir, out_dir, cfg, tracking),
                "env": _env(cfg, tracking),
                "numNodes": tc.nodes,
                "numProcPerNode": tc.gpus_per_node,
                "resourcesPerNode": _resources(cfg),
            },
            "runtimePatches": [
                {
                    "manager": RUNTIME_PATCH_MANAGER,
                    "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [node_job]}}},
                }
            ],
        },
    }


def build_pytorchjob(
    archive_dir: str,
    split_dir: str,
    out_dir: str,
    cfg: Config,
    tracking: dict[str, str] | None = None,
    *,
    name: str | None = None,
    image: str = BASE_IMAGE,
) -> dict[str, Any]:
    """A Training Operator v1 ``PyTorchJob``: one Master plus ``nodes - 1`` Workers, ``gpus_per_node`` each."""
    tc = cfg.train
    check_kubernetes_config(cfg, archive_dir, split_dir, out_dir)
    volumes, mounts = _volumes(cfg)
    container: dict[str, Any] = {
        "name": "pytorch",  # the operator finds the training container by this name
        "image": image,
        "imagePullPolicy": tc.image_pull_policy,
        "command": _command(cfg),
        "args": worker_args(archive_dir, split_dir, out_dir, cfg, tracking),
        "env": _env(cfg, tracking),
        "resources": _resources(cfg),
        "securityContext": CONTAINER_SECURITY_CONTEXT,
    }
    if mounts:
        container["volumeMounts"] = mounts
    pod_spec: dict[str, Any] = {
        **_pod_fields(cfg, volumes),
        "automountServiceAccountToken": False,  # the training pods need no API access
        "containers": [container],
    }
    template = {"metadata": {"labels": _pod_labels(cfg)}, "spec": pod_spec}

    def replica(count: int) -> dict[str, Any]:
        return {"replicas": count, "restartPolicy": "OnFailure", "template": json.loads(json.dumps(template))}

    replicas = {"Master": replica(1)}
    if tc.nodes > 1:
        replicas["Worker"] = replica(tc.nodes - 1)
    return {
        "apiVersion": f"{PYTORCHJOB_GROUP}/{PYTORCHJOB_VERSION}",
        "kind": "PyTorchJob",
        "metadata": {
            "name": name or job_name(cfg, archive_dir, out_dir),
            "namespace": tc.namespace,
            "labels": _labels(cfg),
        },
        "spec": {
            "nprocPerNode": str(tc.gpus_per_node),
            "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": tc.max_rollbacks},
            "pytorchReplicaSpecs": replicas,
        },
    }


def build_job(
    archive_dir: str, split_dir: str, out_dir: str, cfg: Config, tracking: dict[str, str] | None = None, **kw: Any
) -> dict[str, Any]:
    """The job ``train.launcher`` asks for."""
    build = build_trainjob if cfg.train.launcher == "trainjob" else build_pytorchjob
    if cfg.train.launcher not in KINDS:
        raise ConfigError(f"train.launcher={cfg.train.launcher!r} is not a Kubernetes launcher ({', '.join(KINDS)})")
    return build(archive_dir, split_dir, out_dir, cfg, tracking, **kw)


def _kind_of(job: dict[str, Any]) -> JobKind:
    for kind in KINDS.values():
        if job.get("kind") == kind.kind and job.get("apiVersion") == f"{kind.group}/{kind.version}":
            return kind
    raise ConfigError(f"not a TrainJob or PyTorchJob: {job.get('apiVersion')}/{job.get('kind')}")


def job_state(job: dict[str, Any]) -> tuple[str, str]:
    """``("succeeded" | "failed" | "running", message)`` from a job's ``status.conditions``."""
    conditions = (job.get("status") or {}).get("conditions") or []
    active = [c for c in conditions if str(c.get("status")) == "True"]
    for c in active:
        if c.get("type") in FAILURE_CONDITIONS:
            return "failed", f"{c.get('reason') or 'Failed'}: {c.get('message') or 'no message'}"
    for c in active:
        if c.get("type") in SUCCESS_CONDITIONS:
            return "succeeded", c.get("message") or c.get("reason") or c["type"]
    latest = active[-1] if active else None
    return "running", (f"{latest.get('type')}: {latest.get('message') or latest.get('reason') or ''}" if latest else "")


def default_api() -> Any:
    """A ``CustomObjectsApi`` from in-cluster credentials, else from the local kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()


def submit_and_wait(
    job: dict[str, Any],
    api: Any | None = None,
    *,
    timeout_s: float = 86400,
    poll_s: float = 15.0,
    log: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    delete_on_timeout: bool = True,
) -> dict[str, Any]:
    """Create ``job``, wait for it to finish, return its last state.

    A job of the same name may exist already (the same config and folders: a retried pipeline step). One that is
    running or has succeeded is adopted and waited for; one that failed is deleted (its pods first) and submitted
    again, so a retry trains again, resuming from the checkpoints the failed job left in its output folder.
    """
    kind = _kind_of(job)
    api = api if api is not None else default_api()
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    name, namespace = job["metadata"]["name"], job["metadata"]["namespace"]
    where = (kind.group, kind.version, namespace, kind.plural)
    ref = f"{kind.kind} {namespace}/{name}"
    if _create(api, where, job, ref) == "submitted":
        say(f"[train] submitted {ref}")
    else:
        state, message = job_state(_get(api, where, name, ref))
        if state != "failed":
            say(f"[train] {ref} exists already ({state}); waiting for it")
        else:
            say(f"[train] {ref} exists and failed ({message}): deleting it and submitting it again")
            _delete_and_wait(api, where, name, ref, clock, sleep, poll_s)
            if _create(api, where, job, ref) != "submitted":
                raise TrainingError(f"could not submit {ref} again: a job of that name was created meanwhile")
            say(f"[train] submitted {ref} again; training resumes from its last checkpoint")
    deadline = clock() + timeout_s
    last = None
    while True:
        current = _get(api, where, name, ref)
        state, message = job_state(current)
        if (state, message) != last:
            say(f"[train] {ref}: {state}{f' ({message})' if message else ''}")
            last = (state, message)
        if state == "succeeded":
            return current
        if state == "failed":
            raise TrainingError(f"{ref} failed: {message}")
        if clock() >= deadline:
            if delete_on_timeout:
                try:
                    api.delete_namespaced_custom_object(*where, name)
                except Exception as exc:  # the timeout is the error to report; say the clean-up failed too
                    say(f"[train] could not delete {ref}: {exc}")
            raise TrainingError(
                f"{ref} did not finish within train.job_timeout_s={timeout_s:g} s"
                + (" and was deleted" if delete_on_timeout else "")
                + f"; last state: {state}{f' ({message})' if message else ''}"
            )
        sleep(poll_s)


# How long a failed job's deletion (its pods first) may take before a retry gives up.
DELETE_TIMEOUT_S = 600.0


def _create(api: Any, where: tuple[str, str, str, str], job: dict[str, Any], ref: str) -> str:
    """``"submitted"``, or ``"exists"`` when a job of that name exists (409 Conflict); TrainingError otherwise."""
    try:
        api.create_namespaced_custom_object(*where, job)
    except Exception as exc:
        if getattr(exc, "status", None) == 409:
            return "exists"
        raise TrainingError(f"could not create {ref}: {getattr(exc, 'reason', None) or exc}") from exc
    return "submitted"


def _get(api: Any, where: tuple[str, str, str, str], name: str, ref: str) -> dict[str, Any]:
    try:
        return api.get_namespaced_custom_object(*where, name)
    except Exception as exc:
        raise TrainingError(f"could not read the status of {ref}: {getattr(exc, 'reason', None) or exc}") from exc


def _delete_and_wait(
    api: Any,
    where: tuple[str, str, str, str],
    name: str,
    ref: str,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    poll_s: float,
) -> None:
    """Delete a job with its pods (foreground) and wait until it is gone: no old pod writes to the new job's folder."""
    try:
        api.delete_namespaced_custom_object(*where, name, propagation_policy="Foreground")
    except Exception as exc:
        if getattr(exc, "status", None) != 404:
            raise TrainingError(f"could not delete the failed {ref}: {getattr(exc, 'reason', None) or exc}") from exc
    deadline = clock() + DELETE_TIMEOUT_S
    while True:
        try:
            api.get_namespaced_custom_object(*where, name)
        except Exception as exc:
            if getattr(exc, "status", None) == 404:
                return
            raise TrainingError(f"could not read the status of {ref}: {getattr(exc, 'reason', None) or exc}") from exc
        if clock() >= deadline:
            raise TrainingError(
                f"the failed {ref} was not gone {DELETE_TIMEOUT_S:g} s after its deletion; delete it by hand "
                f"(kubectl delete {where[3]} -n {where[2]} {name}) and retry"
            )
        sleep(poll_s)


def train_on_kubernetes(
    archive_dir: str,
    split_dir: str,
    out_dir: str,
    cfg: Config,
    tracking: dict[str, str] | None = None,
    api: Any | None = None,
    **wait: Any,
) -> dict[str, Any]:
    """Submit the job ``train.launcher`` names and wait for it (see :func:`submit_and_wait`)."""
    job = build_job(str(archive_dir), str(split_dir), str(out_dir), cfg, tracking)
    return submit_and_wait(job, api, timeout_s=cfg.train.job_timeout_s, **wait)


# ------------------------------------------------------------------------------- the pipeline's train task


@dataclass(frozen=True)
class PipelineVolume:
    """How the compiled pipeline's train task reaches the training pods: the claim it mounts, and where."""

    claim: str
    mount_path: str
    staging_dir: str  # this run's folders go to <staging_dir>/<run id>/{archive,split,model}


def pipeline_volume(cfg: Config | None) -> PipelineVolume | None:
    """The shared volume of the train task for ``cfg`` (``None``: the local launcher, nothing to mount).

    Checked at compile time, so a pipeline that could not work on a cluster is never compiled.
    """
    if cfg is None or cfg.train.launcher not in KINDS:
        return None
    tc = cfg.train
    if not tc.data_volume_claim:
        raise ConfigError(
            f"train.launcher={tc.launcher} in a pipeline needs train.data_volume_claim (a ReadWriteMany claim such "
            f"as {DATA_VOLUME!r} of k8s/base/pipelines/pvc.yaml): the train task and the training pods exchange "
            "data there"
        )
    staging = str(PurePosixPath(tc.data_mount_path) / STAGING_FOLDER)
    check_kubernetes_config(cfg, staging)
    return PipelineVolume(tc.data_volume_claim, tc.data_mount_path, staging)


@dataclass(frozen=True)
class StagedRun:
    """One pipeline run's folders on the shared volume, at the paths the training pods see them."""

    root: Path

    @property
    def archive(self) -> Path:
        """The copy of the dataset archive."""
        return self.root / "archive"

    @property
    def split(self) -> Path:
        """The copy of the split (and class weights)."""
        return self.root / "split"

    @property
    def model(self) -> Path:
        """Where rank 0 writes the model folder."""
        return self.root / "model"


def staged_run(staging_dir: str | os.PathLike[str], run_id: str) -> StagedRun:
    """The per-run folder ``<staging_dir>/<run_id>``; ``run_id`` must be one safe path component."""
    if not RUN_ID.match(run_id or ""):
        raise ConfigError(f"pipeline run id {run_id!r} cannot name a folder on the shared volume")
    return StagedRun(Path(staging_dir) / run_id)


def stage_in(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> bool:
    """Copy the folder (or file) ``src`` to ``dest`` on the shared volume; return whether it copied.

    The copy goes to a hidden sibling and is renamed into place, so ``dest`` exists only complete. A ``dest`` left
    by an earlier attempt of the same run is reused: kfp input artifacts never change within a run, and a retried
    task may find the job still reading it.
    """
    src, dest = Path(src), Path(dest)
    if dest.exists():
        return False
    if not src.exists():
        raise TrainingError(f"input artifact {src} does not exist; nothing to stage to {dest}")
    partial = dest.with_name(f".{dest.name}.partial")
    _remove(partial)  # an attempt that died while copying
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, partial, symlinks=False)
    else:
        shutil.copy2(src, partial)
    os.replace(partial, dest)
    return True


def stage_out(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Copy the job's model folder ``src`` into the kfp output artifact folder ``dest``."""
    src, dest = Path(src), Path(dest)
    if not src.is_dir():
        raise TrainingError(f"the training job left no model folder at {src} on the shared volume")
    shutil.copytree(src, dest, dirs_exist_ok=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _relocate(summary: dict[str, Any], old: Path, new: Path) -> dict[str, Any]:
    """The summary with its output paths pointing into the kfp artifact instead of the staged folder."""
    paths = {
        k: str(new / Path(v).relative_to(old)) if Path(v).is_relative_to(old) else v
        for k, v in summary.get("paths", {}).items()
    }
    return {**summary, "paths": paths} if "paths" in summary else summary


def train_through_volume(
    archive_dir: str | os.PathLike[str],
    split_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    cfg: Config,
    tracking: dict[str, str] | None,
    *,
    volume_claim: str,
    staging_dir: str,
    run_id: str,
    train: Callable[..., dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The pipeline's train task with a Kubernetes launcher: stage in, run the job, stage out; return the summary.

    ``volume_claim`` and ``staging_dir`` are what the task was compiled with (:func:`pipeline_volume`); the run's
    config must agree, else the job would look for the data on another volume. ``train`` (default
    :func:`components.train.core.train`) submits the job and waits for it. The run's folder is removed once the
    model is copied out; after a failure it stays, with the job's checkpoints, for inspection and for a retry of the
    task (which replaces the failed job and resumes from those checkpoints, see :func:`submit_and_wait`).
    """
    from components.train.core import train as train_default
    from components.train.trainer import SUMMARY_FILE

    tc = cfg.train
    if tc.launcher not in KINDS:
        raise ConfigError(
            f"this pipeline was compiled for a Kubernetes launcher (volume {volume_claim!r}) but the run's config "
            f"has train.launcher={tc.launcher!r}; compile the pipeline with the config you run it with"
        )
    if tc.data_volume_claim != volume_claim:
        raise ConfigError(
            f"the train task mounts the claim {volume_claim!r} (compiled in) but the run's config has "
            f"train.data_volume_claim={tc.data_volume_claim!r}; compile the pipeline with the config you run it with"
        )
    run = staged_run(staging_dir, run_id)
    check_kubernetes_config(cfg, str(run.archive), str(run.split), str(run.model))
    if not Path(tc.data_mount_path).is_dir():
        raise ConfigError(
            f"train.data_mount_path={tc.data_mount_path} does not exist in the train task: the claim "
            f"{volume_claim!r} is not mounted there (compile the pipeline with the config you run it with)"
        )
    for src, dest in ((archive_dir, run.archive), (split_dir, run.split)):
        copied = stage_in(src, dest)
        print(f"[train] {'staged' if copied else 'reusing staged'} {dest}", file=sys.stderr, flush=True)
    summary = (train or train_default)(str(run.archive), str(run.split), str(run.model), cfg, tracking)
    out = Path(out_dir)
    stage_out(run.model, out)
    summary = _relocate(summary, run.model, out)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    try:
        shutil.rmtree(run.root)
    except OSError as exc:  # the model is safe in the artifact; a busy network file system must not fail the run
        print(f"[train] could not remove {run.root} from the shared volume: {exc}", file=sys.stderr, flush=True)
    return summary


EXAMPLE_IMAGE = "ghcr.io/medgan-ops/medgan-ops:0.1.0"
EXAMPLE_TRACKING = {"tracking_uri": "http://mlflow.medgan.svc:5000", "experiment": "medgan", "run_key": "example"}


def example_job(launcher: str = "trainjob", image: str = EXAMPLE_IMAGE) -> dict[str, Any]:
    """The job k8s/examples/ holds: the default config on the ``medgan-data`` volume, 1 node x 1 GPU."""
    from components.config import resolve

    cfg = resolve("quickstart", [f"train.launcher={launcher}", "train.data_volume_claim=medgan-data"])
    root = PurePosixPath(cfg.train.data_mount_path)
    return build_job(
        str(root / "archive"),
        str(root / "split"),
        str(root / "model"),
        cfg,
        EXAMPLE_TRACKING,
        name=f"medgan-train-example-{launcher}",
        image=image,
    )


def main(argv: list[str] | None = None) -> int:
    """Print the example job as YAML: ``python -m components.train.kubernetes [trainjob|pytorchjob]``."""
    import yaml

    args = sys.argv[1:] if argv is None else argv
    header = "# Generated by `python -m components.train.kubernetes` from the default config; do not edit by hand.\n"
    sys.stdout.write(header + yaml.safe_dump(example_job(*(args[:1] or ["trainjob"])), sort_keys=False, width=120))
    return 0


if __name__ == "__main__":
    sys.exit(main())
