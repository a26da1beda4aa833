"""kfp component: the cluster pipeline's data step (``dvc pull`` of the run's dataset onto the shared volume)."""

from typing import NamedTuple

from kfp import dsl

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def pull_data_op(
    dataset_version_json: str,
    dvc_remote: str,
    dataset_repo: str,
    dataset_rev: str,
    dataset_path: str,
    staging_dir: str,
    run_id: str,
) -> NamedTuple("PulledData", data_dir=str, dataset_version_json=str):
    """Pull the dataset into ``<staging_dir>/<run_id>/dicom``; return that folder and the lineage to record."""
    import json
    from collections import namedtuple

    from components.pull.core import DATA_FOLDER, pull_dataset
    from components.stage import dump, reported
    from components.train.kubernetes import staged_run

    with reported("pull-data"):
        dest = staged_run(staging_dir, run_id).root / DATA_FOLDER
        lineage = pull_dataset(
            json.loads(dataset_version_json or "{}"),
            dest,
            remote=dvc_remote,
            repo=dataset_repo,
            rev=dataset_rev,
            path=dataset_path or "data",
        )
        return namedtuple("PulledData", ["data_dir", "dataset_version_json"])(str(dest), dump(lineage))
