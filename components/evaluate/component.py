"""kfp component: FID/KID, Dice and memorization audit; the review report."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate_op(
    archive: Input[Dataset],
    split: Input[Dataset],
    model: Input[Model],
    validation: str,
    config_json: str,
    tracking_json: str,
    cache_dir: str,
    evaluation: Output[Dataset],
    topup: Output[Dataset],
) -> str:
    """Evaluate the trained generator; return metrics.json's content."""
    import json

    from components.config import Config
    from components.evaluate.core import evaluate
    from components.stage import dump, reported

    with reported("evaluate"):
        metrics = evaluate(
            archive.path,
            split.path,
            model.path,
            evaluation.path,
            Config.from_json(config_json),
            json.loads(tracking_json),
            cache_dir=cache_dir or None,
            validation=json.loads(validation),
            topup_dir=topup.path,
        )
        return dump(metrics)
