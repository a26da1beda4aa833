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
