"""kfp component: patient-level split and sampling weights."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def rebalance_op(
    archive: Input[Dataset], validation: str, config_json: str, tracking_json: str, split: Output[Dataset]
) -> str:
    """Split patients into train/val/test and weight classes; return the distribution summary as JSON."""
    from components.rebalance.core import rebalance
    from components.stage import dump, load_inputs, reported

    with reported("rebalance"):
        cfg, _, tracker = load_inputs(config_json, tracking_json)
        return dump(rebalance(archive.path, split.path, cfg, tracker))
