"""The Kubeflow pipeline: stage components wired into a DAG. No stage logic lives here.

Two builds of one DAG. The **local** pipeline (:data:`medgan_pipeline`, what ``medgan run`` executes with the kfp
local runner) reads the DICOM folder in place. The **cluster** pipeline (``medgan compile`` / ``submit`` /
``schedule``) adds what a Kubernetes cluster needs: a data step that pulls the run's DVC dataset onto the shared
volume, the run key from the Kubeflow run, an exit handler that closes a failed run's MLflow run and refuses its
half-made challenger, per-task CPU/memory requests and limits, GPUs on the train task, retries with backoff where
failures are transient, caching off for tasks with side effects, the MLflow credentials, the patient-ID salt and the
DVC remote's credentials from Secrets, a non-root security context and the label the tracking server's
NetworkPolicy admits (all from the config's ``kubernetes`` section, see :func:`cluster_platform`).

Both depend on one compile-time choice, ``train.launcher``: with ``trainjob`` / ``pytorchjob`` the train task mounts
the shared volume (``train.data_volume_claim`` at ``train.data_mount_path``, through kfp-kubernetes) and stages the
data there for the training job's pods. The local runner ignores kfp-kubernetes platform config.
"""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kfp import compiler, dsl, kubernetes
from kfp.dsl import graph_component

from components.config import Config
from components.evaluate.component import evaluate_op
from components.image import BASE_IMAGE
from components.ingest.component import ingest_op
from components.pull.component import pull_data_op
from components.rebalance.component import rebalance_op
from components.register.component import apply_gate_op, register_op
from components.track.component import close_run_op, open_run_op, run_context_op
from components.train.component import train_op
from components.train.kubernetes import MLFLOW_CLIENT_LABEL, MLFLOW_CREDENTIALS, STAGING_FOLDER, pipeline_volume
from components.validate.component import validate_op

PIPELINE_NAME = "medgan-ops"
DESCRIPTION = "DICOM -> validated dataset -> class-conditional GAN -> gated model."
DVC_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")  # keys of kubernetes.dvc_secret


@dataclass
class Stages:
    """The tasks of one run of the DAG, by stage (the two gate branches under ``promote`` / ``reject``)."""

    open_run: dsl.PipelineTask
    ingest: dsl.PipelineTask
    validate: dsl.PipelineTask
    rebalance: dsl.PipelineTask
    train: dsl.PipelineTask
    evaluate: dsl.PipelineTask
    register: dsl.PipelineTask
    promote: dsl.PipelineTask
    reject: dsl.PipelineTask


def _stages(cfg: Config | None, data_dir, config_json, tracking_json, dataset_version_json, cache_dir) -> Stages:
    """Create the stage tasks, open-run to gate, in the current pipeline context."""
    volume = pipeline_volume(cfg)
    staging = (
        {"volume_claim": volume.claim, "staging_dir": volume.staging_dir, "run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER}
        if volume
        else {}
    )
    opened = open_run_op(
        config_json=config_json, tracking_json=tracking_json, dataset_version_json=dataset_version_json
    ).set_display_name("open MLflow run")
    ingest = ingest_op(
        data_dir=data_dir,
        config_json=config_json,
        tracking_json=tracking_json,
        dataset_version_json=dataset_version_json,
    )
    ingest.set_display_name("ingest DICOM").after(opened)  # every later stage logs into the run opened here
    validate = validate_op(archive=ingest.outputs["archive"], config_json=config_json, tracking_json=tracking_json)
    validate.set_display_name("validate data (great-expectations)")
    rebalance = rebalance_op(
        archive=ingest.outputs["archive"],
        validation=validate.outputs["Output"],
        config_json=config_json,
        tracking_json=tracking_json,
    ).set_display_name("patient-level split + rebalance")
    train = train_op(
        archive=ingest.outputs["archive"],
        split=rebalance.outputs["split"],
        config_json=config_json,
        tracking_json=tracking_json,
        **staging,
    ).set_display_name("train GAN")
    if volume:  # the job's pods and this task exchange the data on that volume
        kubernetes.mount_pvc(train, pvc_name=volume.claim, mount_path=volume.mount_path)
    evaluate = evaluate_op(
        archive=ingest.outputs["archive"],
        split=rebalance.outputs["split"],
        model=train.outputs["model"],
        validation=validate.outputs["Output"],
        config_json=config_json,
        tracking_json=tracking_json,
        cache_dir=cache_dir,
    ).set_display_name("evaluate")
    register = register_op(
        model=train.outputs["model"],
        evaluation=evaluate.outputs["evaluation"],
        archive=ingest.outputs["archive"],
        config_json=config_json,
        tracking_json=tracking_json,
    ).set_display_name("register challenger")
    # Both branches run the same step: it acts on the decision record; the branch makes the gate visible in the UI.
    gate_inputs = {
        "decision_json": register.outputs["decision_json"],
        "evaluation": evaluate.outputs["evaluation"],
        "tracking_json": tracking_json,
    }
    with dsl.If(register.outputs["decision"] == "promote", name="challenger-wins"):
        promote = apply_gate_op(**gate_inputs).set_display_name("promote to champion")
    with dsl.Else(name="champion-stays"):
        reject = apply_gate_op(**gate_inputs).set_display_name("record rejection")
    return Stages(opened, ingest, validate, rebalance, train, evaluate, register, promote, reject)


def build_pipeline(cfg: Config | None = None, cache: str = "") -> graph_component.GraphComponent:
    """The local pipeline for ``cfg``'s train launcher (``None``: the local launcher, as :data:`medgan_pipeline`).

    Runs still pass their whole config as ``config_json``; a run whose launcher or volume differs from the
    compiled one fails in the train task with a message saying so. ``cache``: the pure stages' cache key
    (:func:`cache_key`) for a run that reuses an earlier one's results (``medgan run --reuse``); "" sets no caching
    options (the local runner then caches nothing).
    """

    @dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION)
    def medgan_pipeline(
        data_dir: str,
        config_json: str,
        tracking_json: str,
        dataset_version_json: str = "{}",
        cache_dir: str = "",
    ):
        """Train, evaluate and register a class-conditional GAN from a DICOM folder.

        Steps:
          1. open-run: create the MLflow run; log the resolved config and the dataset's DVC lineage.
          2. ingest: DICOM + labels.csv -> one dataset archive (normalised arrays, manifest, quarantine).
          3. validate: great-expectations suite + Data Docs; critical failures stop the run here.
          4. rebalance: patient-level stratified split and class sampling weights.
          5. train: class-conditional GAN (image + lesion mask), DDP via torchrun, or a Kubeflow TrainJob /
             PyTorchJob fed through the shared volume.
          6. evaluate: FID/KID with CIs, Dice real vs real+synthetic, memorization audit, review report.
          7. register: MLflow model version as `challenger` (the run's existing one on a retry), and a proposed
             gate decision against `champion`.
          8. gate: under the model's promotion lock, decide against the champion found there (compare-and-set on
             `champion`, re-taken if it moved), promote or record the rejection, audit either way, finalise the
             report and end the MLflow run FINISHED.
        """
        stages = _stages(cfg, data_dir, config_json, tracking_json, dataset_version_json, cache_dir)
        if cache:
            cache_stages(stages, cache)

    return medgan_pipeline


medgan_pipeline = build_pipeline()


def cache_key(cfg: Config, dataset_version: dict | None, code: str = BASE_IMAGE) -> str:
    """The cache key of the pure stages of a run of ``cfg`` on a pinned dataset ("" when it is not pinned).

    What determines their outputs: the resolved config (seeds included), the dataset's DVC hash and the code, named
    by ``code``: the image on a cluster (tags must be immutable: a new build gets a new tag), a digest of the source
    for local runs (:func:`source_digest`).
    """
    md5 = str((dataset_version or {}).get("md5") or "")
    if not md5:
        return ""
    state = json.dumps({"config": cfg.to_json(), "dataset": md5, "code": code}, sort_keys=True)
    return "medgan-" + hashlib.sha256(state.encode()).hexdigest()[:32]


def source_digest() -> str:
    """A digest of the project's Python source (components/, pipeline/): the code of a local run."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted([*root.glob("components/**/*.py"), *root.glob("pipeline/**/*.py")]):
        digest.update(f"{path.relative_to(root)}\0".encode() + path.read_bytes() + b"\0")
    return "source:" + digest.hexdigest()


def cache_stages(stages: Stages, key: str) -> None:
    """Caching per task: never for side effects (the MLflow run, the registry); the pure stages under ``key``.

    A cached stage does not run, so it logs nothing to the new MLflow run (the run that computed it holds those
    logs). ``key`` "" leaves KFP's own key (every input, the tracking parameters and so the run key included).
    """
    for task in (stages.open_run, stages.register, stages.promote, stages.reject):
        task.set_caching_options(enable_caching=False)
    pure = {"ingest": stages.ingest, "validate": stages.validate, "rebalance": stages.rebalance}
    for name, task in {**pure, "train": stages.train, "evaluate": stages.evaluate}.items():
        task.set_caching_options(enable_caching=True, cache_key=f"{key}-{name}" if key else None)


def build_cluster_pipeline(
    cfg: Config | None = None, dataset_version: dict | None = None
) -> graph_component.GraphComponent:
    """The pipeline to run on Kubeflow Pipelines for ``cfg`` (``None``: the default config).

    Its data come from DVC (``dataset_version_json`` + ``dvc_remote``, or ``dataset_repo`` at ``dataset_rev``), its
    run key from the Kubeflow run (unless ``tracking_json`` names one). Checked when compiled: a config that could
    not work on a cluster (no shared volume, bad quantities) is never compiled. With the pinned ``dataset_version``
    the run will use (``medgan submit`` knows it), the pure stages get a cache key of config, dataset and image
    (:func:`cache_key`), so a rerun of unchanged data and config takes them from KFP's cache.
    """
    cfg = cfg or Config()
    claim, mount = cfg.train.data_volume_claim, cfg.train.data_mount_path
    if not claim:
        from components.errors import ConfigError

        raise ConfigError(
            "a cluster pipeline needs train.data_volume_claim: the data step pulls the dataset onto that shared "
            "volume for ingest (k8s/base/pipelines/pvc.yaml creates medgan-data)"
        )
    staging = str(PurePosixPath(mount) / STAGING_FOLDER)
    run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER

    @dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION)
    def medgan_cluster_pipeline(
        config_json: str,
        tracking_json: str,
        dataset_version_json: str = "{}",
        dvc_remote: str = "",
        dataset_repo: str = "",
        dataset_rev: str = "",
        dataset_path: str = "data",
        cache_dir: str = "",
    ):
        """Train, evaluate and register a class-conditional GAN from a DVC-versioned DICOM dataset, on a cluster.

        Steps (1-8 as in the local pipeline, under an exit handler):
          0. run context: the MLflow run key of this Kubeflow run; pull data: `dvc pull` of the dataset the run
             names onto the shared volume, with its lineage (what open-run and ingest record).
          1-8. open-run, ingest, validate, rebalance, train, evaluate, register, gate.
          exit: close-run: whatever happened, remove the pulled copy; if anything failed, end the MLflow run FAILED
             and refuse a challenger registered without a gate decision.
        """
        closing = close_run_op(tracking_json=tracking_json, run_id=run_id, staging_dir=staging)
        closing.set_display_name("close run (exit handler)")
        with dsl.ExitHandler(closing, name="run-with-exit-handler"):
            context = run_context_op(tracking_json=tracking_json, run_id=run_id).set_display_name("run context")
            pulled = pull_data_op(
                dataset_version_json=dataset_version_json,
                dvc_remote=dvc_remote,
                dataset_repo=dataset_repo,
                dataset_rev=dataset_rev,
                dataset_path=dataset_path,
                staging_dir=staging,
                run_id=run_id,
            ).set_display_name("pull data (DVC)")
            stages = _stages(
                cfg,
                pulled.outputs["data_dir"],
                config_json,
                context.output,
                pulled.outputs["dataset_version_json"],
                cache_dir,
            )
        cluster_platform(
            cfg, stages, context=context, pulled=pulled, closing=closing, key=cache_key(cfg, dataset_version)
        )

    return medgan_cluster_pipeline


def _resources(task: dsl.PipelineTask, cpu: str, memory: str, cpu_limit: str, memory_limit: str) -> None:
    if cpu:
        task.set_cpu_request(cpu)
    if memory:
        task.set_memory_request(memory)
    if cpu_limit:
        task.set_cpu_limit(cpu_limit)
    if memory_limit:
        task.set_memory_limit(memory_limit)


def _gpus(task: dsl.PipelineTask, cfg: Config, count: int) -> None:
    kc = cfg.kubernetes
    task.set_accelerator_type(kc.accelerator).set_accelerator_limit(count)
    for key, value in kc.node_selector().items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for tol in kc.tolerations():
        kubernetes.add_toleration(
            task, key=tol["key"], operator=tol["operator"], value=tol.get("value"), effect=tol["effect"]
        )


def cluster_platform(
    cfg: Config,
    stages: Stages,
    *,
    context: dsl.PipelineTask,
    pulled: dsl.PipelineTask,
    closing: dsl.PipelineTask,
    key: str = "",
) -> None:
    """Resources, accelerators, retries, caching, Secrets, mounts, labels and security of every cluster task.

    ``key``: the cache key of the pure stages (:func:`cache_key`); "" leaves KFP's own (every input, so hits come
    only within a run: the tracking parameters carry the run key).
    """
    kc, tc = cfg.kubernetes, cfg.train
    claim, mount = tc.data_volume_claim, tc.data_mount_path
    mlflow_tasks = [stages.open_run, stages.ingest, stages.validate, stages.rebalance, stages.train, stages.evaluate]
    mlflow_tasks += [stages.register, stages.promote, stages.reject, closing]
    every = [context, pulled, *mlflow_tasks]
    heavy = [stages.evaluate] + ([stages.train] if tc.launcher == "local" else [])
    for task in every:
        if task in heavy:
            _resources(task, kc.heavy_cpu, kc.heavy_memory, kc.heavy_cpu_limit, kc.heavy_memory_limit)
        else:
            _resources(task, kc.task_cpu, kc.task_memory, kc.task_cpu_limit, kc.task_memory_limit)
        kubernetes.set_security_context(
            task, run_as_user=kc.run_as_user, run_as_group=kc.run_as_user, run_as_non_root=True
        )
    for task in mlflow_tasks:
        kubernetes.add_pod_label(task, label_key=MLFLOW_CLIENT_LABEL[0], label_value=MLFLOW_CLIENT_LABEL[1])
        if kc.mlflow_secret:
            kubernetes.use_secret_as_env(
                task, secret_name=kc.mlflow_secret, secret_key_to_env={k: k for k in MLFLOW_CREDENTIALS}
            )
    if kc.salt_secret:
        salt = cfg.ingest.salt_env
        kubernetes.use_secret_as_env(stages.ingest, secret_name=kc.salt_secret, secret_key_to_env={salt: salt})
    if kc.dvc_secret:  # optional: a remote reached through the node's identity needs no keys
        for task in (pulled, stages.evaluate):
            kubernetes.use_secret_as_env(
                task, secret_name=kc.dvc_secret, secret_key_to_env={k: k for k in DVC_CREDENTIALS}, optional=True
            )
    # The pulled data and the training job's folders live on the shared volume (the train task mounts it itself
    # with a Kubernetes launcher, see _stages).
    for task in (pulled, stages.ingest, closing):
        kubernetes.mount_pvc(task, pvc_name=claim, mount_path=mount)
    if tc.launcher == "local" and tc.device == "cuda":  # the train task runs torchrun on its own GPUs
        _gpus(stages.train, cfg, tc.nproc)
        if kc.shm_size:
            kubernetes.empty_dir_mount(
                stages.train, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=kc.shm_size
            )
    if kc.evaluate_gpus:
        _gpus(stages.evaluate, cfg, kc.evaluate_gpus)
    # Retries where failures are transient (network, preemption, a node lost mid-training: train resumes from its
    # checkpoints); not for the registry's writes, whose retry could act twice.
    if kc.retries:
        for task in (context, pulled, stages.open_run, stages.train, stages.evaluate, closing):
            task.set_retry(
                kc.retries,
                backoff_duration=kc.retry_backoff,
                backoff_factor=2.0,
                backoff_max_duration=kc.retry_backoff_max,
            )
    # Side effects are never replayed from the cache: besides the stages', the data step (its folder is the run's)
    # and the exit handler.
    for task in (context, pulled, closing):
        task.set_caching_options(enable_caching=False)
    cache_stages(stages, key)


def compile_pipeline(
    package_path: str | os.PathLike[str], cfg: Config | None = None, dataset_version: dict | None = None
) -> None:
    """Write the cluster pipeline package for ``cfg`` (``None``: the default config) to ``package_path``."""
    compiler.Compiler().compile(build_cluster_pipeline(cfg, dataset_version), str(package_path))
