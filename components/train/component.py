"""kfp component: class-conditional GAN training (torchrun --standalone locally)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train_op(
    archive: Input[Dataset], split: Input[Dataset], config_json: str, tracking_json: str, model: Output[Model]
) -> str:
    """Train the GAN; the output model folder holds checkpoint.pt, generator.pt and sample grids."""
    import json

    from components.config import Config
    from components.stage import dump, reported
    from components.train.core import train

    with reported("train"):
        summary = train(archive.path, split.path, model.path, Config.from_json(config_json), json.loads(tracking_json))
        return dump(summary)
