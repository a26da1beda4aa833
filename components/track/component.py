"""kfp component: open the MLflow run of this pipeline run."""

from kfp import dsl

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def open_run_op(config_json: str, tracking_json: str, dataset_version_json: str) -> str:
    """Create the MLflow run, log the resolved config and dataset lineage; return the MLflow run id."""
    import json

    from components.config import Config
    from components.stage import reported
    from components.track.core import open_run

    with reported("open-run"):
        return open_run(Config.from_json(config_json), json.loads(tracking_json), json.loads(dataset_version_json))


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def run_context_op(tracking_json: str, run_id: str) -> str:
    """The tracking parameters of this Kubeflow run: its run key is ``kfp-<run id>`` unless one was submitted."""
    import json

    from components.track.core import cluster_tracking

    return json.dumps(cluster_tracking(json.loads(tracking_json), run_id), sort_keys=True)


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def close_run_op(tracking_json: str, run_id: str, staging_dir: str, status: dsl.PipelineTaskFinalStatus) -> str:
    """Exit handler: end a failed run's MLflow run FAILED and refuse its half-made challenger.

    The pulled DICOM copy leaves the shared volume whatever happened (the archive holds what later steps need).
    """
    import json
    import shutil
    import sys

    from components.pull.core import DATA_FOLDER
    from components.stage import dump, reported
    from components.track.core import cluster_tracking, finish_run
    from components.train.kubernetes import staged_run

    with reported("exit-handler"):
        if staging_dir:  # the pulled copy and its lineage record; a failed training job's checkpoints stay
            root = staged_run(staging_dir, run_id).root
            shutil.rmtree(root / DATA_FOLDER, ignore_errors=True)
            (root / f"{DATA_FOLDER}.lineage.yaml").unlink(missing_ok=True)
            if root.is_dir() and not any(root.iterdir()):
                root.rmdir()
        tracking = cluster_tracking(json.loads(tracking_json), run_id)
        done = finish_run(tracking, status.state, status.error_message or "")
        print(f"[exit-handler] {status.pipeline_task_name}: {status.state}; {done}", file=sys.stderr, flush=True)
        return dump(done)
