"""The Kubeflow pipeline: stage components wired into a DAG. No stage logic lives here.

The DAG depends on one compile-time choice, ``train.launcher``: with ``trainjob`` / ``pytorchjob`` the train task
mounts the shared volume (``train.data_volume_claim`` at ``train.data_mount_path``, through kfp-kubernetes) and
stages the data there for the training job's pods. The local runner ignores that platform config.
"""

import os

from kfp import compiler, dsl, kubernetes
from kfp.dsl import graph_component

from components.config import Config
from components.evaluate.component import evaluate_op
from components.ingest.component import ingest_op
from components.rebalance.component import rebalance_op
from components.register.component import apply_gate_op, register_op
from components.track.component import open_run_op
from components.train.component import train_op
from components.train.kubernetes import pipeline_volume
from components.validate.component import validate_op

PIPELINE_NAME = "medgan-ops"


def build_pipeline(cfg: Config | None = None) -> graph_component.GraphComponent:
    """The pipeline for ``cfg``'s train launcher (``None``: the local launcher, as :data:`medgan_pipeline`).

    Runs still pass their whole config as ``config_json``; a run whose launcher or volume differs from the
    compiled one fails in the train task with a message saying so.
    """
    volume = pipeline_volume(cfg)
    staging = (
        {"volume_claim": volume.claim, "staging_dir": volume.staging_dir, "run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER}
        if volume
        else {}
    )

    @dsl.pipeline(name=PIPELINE_NAME, description="DICOM -> validated dataset -> class-conditional GAN -> gated model.")
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
            apply_gate_op(**gate_inputs).set_display_name("promote to champion")
        with dsl.Else(name="champion-stays"):
            apply_gate_op(**gate_inputs).set_display_name("record rejection")

    return medgan_pipeline


medgan_pipeline = build_pipeline()


def compile_pipeline(package_path: str | os.PathLike[str], cfg: Config | None = None) -> None:
    """Write the KFP pipeline package for ``cfg`` (``None``: the local launcher) to ``package_path``."""
    compiler.Compiler().compile(build_pipeline(cfg), str(package_path))
