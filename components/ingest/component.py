"""kfp component: DICOM folder + labels.csv -> dataset archive."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def ingest_op(
    data_dir: str,
    config_json: str,
    tracking_json: str,
    dataset_version_json: str,
    archive: Output[Dataset],
) -> str:
    """Ingest the DICOM files listed in labels.csv into one archive; return the ingest summary as JSON."""
    import json

    from components.ingest.core import ingest
    from components.stage import dump, load_inputs, reported

    with reported("ingest"):
        cfg, _, tracker = load_inputs(config_json, tracking_json)
        summary = ingest(data_dir, archive.path, cfg, dataset_version=json.loads(dataset_version_json))
        tracker.log_metrics({f"ingest/{k}": v for k, v in summary.items() if isinstance(v, (int, float))})
        tracker.log_dict(summary, "ingest/summary.json")
        tracker.log_artifact(f"{archive.path}/quarantine.csv", "ingest")
        archive.metadata.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
        return dump(summary)
