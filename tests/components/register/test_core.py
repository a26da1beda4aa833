import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.config import GateMetric, resolve
from components.errors import RegistryError
from components.register.core import CHALLENGER, CHAMPION, apply_decision, gate_decision, register

FID = [GateMetric("fid", "min", 0.0)]
RARE = GateMetric("dice_gain_ci_low.m", "at_least", -0.05)  # top-up not worse by more than 0.05


@pytest.mark.parametrize(
    ("challenger", "champion", "rules", "promote", "reason"),
    [
        ({"fid": 10.0}, None, FID, True, "no champion"),
        ({"fid": 10.0}, {"fid": 12.0}, FID, True, "fid: 10 meets < 12"),
        ({"fid": 13.0}, {"fid": 12.0}, FID, False, "fid: 13 misses < 12"),
        ({"fid": 11.5}, {"fid": 12.0}, [GateMetric("fid", "min", 1.0)], False, "misses < 11"),
        (
            {"fid": 10.0, "dice_real_synth": 0.5},
            {"fid": 12.0, "dice_real_synth": 0.6},
            [*FID, GateMetric("dice_real_synth", "max", 0.0)],
            False,
            "dice_real_synth: 0.5 misses > 0.6",
        ),
        ({"fid": 12.0}, {"fid": 12.0}, FID, False, "fid: 12 misses < 12"),
        ({"kid": 1.0}, {"fid": 12.0}, FID, False, "challenger has no metric 'fid'"),
        # at_least: the challenger alone, with or without a champion; undefined fails
        (
            {"fid": 10.0, "dice_gain_ci_low.m": -0.01},
            None,
            [*FID, RARE],
            True,
            "dice_gain_ci_low.m: -0.01 meets >= -0.05",
        ),
        ({"fid": 10.0, "dice_gain_ci_low.m": -0.2}, None, [*FID, RARE], False, "no champion, but a rule fails"),
        ({"fid": 10.0, "dice_gain_ci_low.m": -0.2}, {"fid": 12.0}, [*FID, RARE], False, "-0.2 misses >= -0.05"),
        ({"fid": 10.0, "dice_gain_ci_low.m": 0.0}, {"fid": 12.0}, [*FID, RARE], True, "fid: 10 meets < 12"),
        ({"fid": 10.0, "dice_gain_ci_low.m": None}, {"fid": 12.0}, [*FID, RARE], False, "undefined for the challenger"),
        ({"fid": 10.0}, None, [RARE], False, "dice_gain_ci_low.m: undefined"),
        ({"fid": 10.0}, {"kid": 1.0}, FID, True, "champion has no value"),
    ],
)
def test_gate_decision(challenger, champion, rules, promote, reason):
    ok, why = gate_decision(challenger, champion, rules)
    assert ok is promote
    assert reason in why


def _eval_dir(tmp_path, name, fid):
    d = tmp_path / name
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps({"fid": fid, "kid": fid / 100}))
    (d / "report.json").write_text(json.dumps({"run_key": name, "metrics": {"fid": fid}}))
    return d


def test_register_gate_and_promote_against_a_real_tracking_server(mlflow_server, model_dir, tiny_cfg, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    name = tiny_cfg.registry.model_name
    lineage = {"md5": "abc.dir", "rev": "deadbeef", "dataset_hash": "f00"}

    def cycle(key, fid):
        tracking = {"tracking_uri": mlflow_server, "experiment": "registry-test", "run_key": key}
        ev = _eval_dir(tmp_path, key, fid)
        decision = register(model_dir, ev, tiny_cfg, tracking, lineage)
        return decision, ev, tracking

    first, ev, tracking = cycle("run-1", 20.0)
    assert first["decision"] == "promote" and "no champion" in first["reason"]
    result = apply_decision(first, ev, tmp_path / "out-1", tracking)
    assert result["audit"]["action"] == "promoted"
    assert "promoted" in (tmp_path / "out-1" / "report.html").read_text()
    assert client.get_model_version_by_alias(name, CHAMPION).version == first["challenger_version"]

    worse, ev2, tracking2 = cycle("run-2", 25.0)
    assert worse["decision"] == "reject" and "misses" in worse["reason"]
    assert client.get_model_version_by_alias(name, CHALLENGER).version == worse["challenger_version"]
    apply_decision(worse, ev2, tmp_path / "out-2", tracking2)
    assert client.get_model_version_by_alias(name, CHAMPION).version == first["challenger_version"]
    rejected = client.get_model_version(name, worse["challenger_version"])
    assert rejected.tags["gate.decision"] == "rejected"
    assert rejected.tags["dataset.dvc_md5"] == "abc.dir" and rejected.tags["metrics.fid"] == "25.0"
    assert rejected.tags["git_commit"]

    better, ev3, tracking3 = cycle("run-3", 15.0)
    assert better["decision"] == "promote" and better["champion_version"] == first["challenger_version"]
    # acting on the stale run-2 decision now that run-3 is challenger must be refused
    with pytest.raises(RegistryError, match="stale"):
        apply_decision(worse, ev2, tmp_path / "out-2b", tracking2)
    apply_decision(better, ev3, tmp_path / "out-3", tracking3)
    assert client.get_model_version_by_alias(name, CHAMPION).version == better["challenger_version"]

    # the audit record of each decision is an artifact of its MLflow run
    run_id = client.get_model_version(name, better["challenger_version"]).run_id
    audit_path = client.download_artifacts(run_id, "gate/audit.json", str(tmp_path))
    audit = json.loads(open(audit_path).read())
    assert audit["previous_champion"] == first["challenger_version"]
    assert audit["champion_metrics"]["fid"] == 20.0 and audit["challenger_metrics"]["fid"] == 15.0


def test_registered_model_samples_labelled_pairs(mlflow_server, model_dir, tmp_path):
    import mlflow

    tracking = {"tracking_uri": mlflow_server, "experiment": "registry-test", "run_key": "run-pyfunc"}
    cfg = resolve("tiny", ["registry.model_name=pyfunc-test"])
    decision = register(model_dir, _eval_dir(tmp_path, "pyfunc", 1.0), cfg, tracking, {})
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model(f"models:/pyfunc-test/{decision['challenger_version']}")
    out = model.predict(pd.DataFrame({"class": ["malignant", "normal"], "n": [3, 2], "seed": [7, 7]}))
    size = cfg.data.image_size
    assert out.shape == (5, 2, size, size)
    assert out[:, 0].min() >= -1 and out[:, 0].max() <= 1
    assert set(np.unique(out[:, 1])) <= {0.0, 1.0}
    with pytest.raises(Exception, match="unknown class 'cat'"):
        model.predict(pd.DataFrame({"class": ["cat"], "n": [1]}))


def test_register_logs_the_snapshot_evaluate_selected(mlflow_server, model_dir, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    from components.gan.sampling import snapshot_path

    tracking = {"tracking_uri": mlflow_server, "experiment": "registry-test", "run_key": "run-selected"}
    cfg = resolve("tiny", ["registry.model_name=selected-test"])
    ev = _eval_dir(tmp_path, "selected", 1.0)
    metrics = {**json.loads((ev / "metrics.json").read_text()), "selected_step": 3.0, "final_step": 6.0}
    (ev / "metrics.json").write_text(json.dumps(metrics))
    chosen = snapshot_path(model_dir, 3).read_bytes()
    assert chosen != (model_dir / "generator.pt").read_bytes()
    (ev / "generator.pt").write_bytes(chosen)

    decision = register(model_dir, ev, cfg, tracking, {})
    version = MlflowClient(mlflow_server).get_model_version("selected-test", decision["challenger_version"])
    assert version.tags["model.selected_step"] == "3" and version.tags["metrics.selected_step"] == "3.0"
    mlflow.set_tracking_uri(mlflow_server)
    logged = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/selected-test/{version.version}", dst_path=str(tmp_path / "download")
    )
    assert (Path(logged) / "artifacts" / "generator.pt").read_bytes() == chosen

    # without a generator.pt from evaluate, the training's final model is registered, as before selection existed
    plain = _eval_dir(tmp_path, "plain", 1.0)
    decision = register(model_dir, plain, cfg, {**tracking, "run_key": "run-plain"}, {})
    logged = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/selected-test/{decision['challenger_version']}", dst_path=str(tmp_path / "download2")
    )
    assert (Path(logged) / "artifacts" / "generator.pt").read_bytes() == (model_dir / "generator.pt").read_bytes()
    version = MlflowClient(mlflow_server).get_model_version("selected-test", decision["challenger_version"])
    assert version.tags["model.selected_step"] == "final"
