"""kfp components: register the challenger, then promote or reject it (the gate is a dsl.If in the DAG)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def register_op(
    model: Input[Model], evaluation: Input[Dataset], archive: Input[Dataset], config_json: str, tracking_json: str
) -> NamedTuple("GateOutputs", decision=str, decision_json=str):
    """Register a new model version as challenger; return the gate decision ('promote'/'reject') and its record."""
    import json
    from typing import NamedTuple

    from components.archive import open_archive
    from components.config import Config
    from components.register.core import register
    from components.stage import dump, reported

    with reported("register"):
        meta = open_archive(archive.path).meta
        lineage = {**meta.get("dataset_version", {}), "dataset_hash": meta["dataset_hash"]}
        decision = register(
            model.path, evaluation.path, Config.from_json(config_json), json.loads(tracking_json), lineage
        )
        outputs = NamedTuple("GateOutputs", decision=str, decision_json=str)  # noqa: UP014 - matches the signature
        return outputs(decision["decision"], dump(decision))


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def apply_gate_op(decision_json: str, evaluation: Input[Dataset], tracking_json: str, report: Output[HTML]) -> str:
    """Promote (move the champion alias) or record the rejection; write the final report; return the audit."""
    import json

    from components.register.core import apply_decision
    from components.stage import dump, reported

    with reported("gate"):
        return dump(apply_decision(json.loads(decision_json), evaluation.path, report.path, json.loads(tracking_json)))
