"""kfp component: great-expectations validation of the dataset archive."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def validate_op(archive: Input[Dataset], config_json: str, tracking_json: str, data_docs: Output[HTML]) -> str:
    """Run the suite; fail the pipeline on critical expectations; return the summary as JSON."""
    from components.stage import dump, load_inputs, reported
    from components.validate.core import validate

    with reported("validate"):
        cfg, _, tracker = load_inputs(config_json, tracking_json)
        summary = validate(archive.path, data_docs.path, cfg, tracker)
        return dump({k: v for k, v in summary.items() if k != "data_docs"})
