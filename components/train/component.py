"""kfp component: class-conditional GAN training (torchrun --standalone locally, or a Kubernetes training job)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train_op(
    archive: Input[Dataset],
    split: Input[Dataset],
    config_json: str,
    tracking_json: str,
    model: Output[Model],
    volume_claim: str = "",
    staging_dir: str = "",
    run_id: str = "",
) -> str:
    """Train the GAN; the output model folder holds checkpoint.pt, generator.pt and sample grids.

    ``volume_claim`` (mounted at ``train.data_mount_path``), ``staging_dir`` and ``run_id`` are set only in a
    pipeline compiled for a Kubernetes launcher: the job then reads and writes copies on that volume
    (:func:`components.train.kubernetes.train_through_volume`).
    """
    import json

    from components.config import Config
    from components.stage import dump, reported

    with reported("train"):
        cfg, tracking = Config.from_json(config_json), json.loads(tracking_json)
        if volume_claim:
            from components.train.kubernetes import train_through_volume

            summary = train_through_volume(
                archive.path,
                split.path,
                model.path,
                cfg,
                tracking,
                volume_claim=volume_claim,
                staging_dir=staging_dir,
                run_id=run_id,
            )
        else:
            from components.errors import ConfigError
            from components.train.core import train

            if cfg.train.launcher != "local":  # the job's pods could not see the kfp artifacts
                raise ConfigError(
                    f"train.launcher={cfg.train.launcher} needs the pipeline compiled with that config (its train "
                    f"task then mounts train.data_volume_claim and stages the data there); this one was compiled "
                    f"for train.launcher=local"
                )

            summary = train(archive.path, split.path, model.path, cfg, tracking)
        return dump(summary)
