import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.config import GateMetric, resolve
from components.errors import ConfigError
from components.register.core import apply_decision, register, requirements
from components.register.gate import gate_decision
from components.registry import CHALLENGER, CHAMPION, FINAL, audit_trail, version_trail

FID = [GateMetric("fid", "min", 0.0)]
RARE = GateMetric("dice_gain_ci_low.m", "at_least", -0.05)  # top-up not worse by more than 0.05
FLOOR = [GateMetric("fid", "at_most", 300.0)]  # the quickstart's default floor


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
        ({"kid": 1.0}, {"fid": 12.0}, FID, False, "fid: undefined for the challenger"),
        ({"fid": float("nan")}, {"fid": 12.0}, FID, False, "fid: undefined for the challenger"),
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


@pytest.mark.parametrize(
    ("challenger", "champion", "promote", "reason"),
    [
        # the quickstart's first model (Inception FID ~175-251 at 1000 CPU steps) clears the floor ...
        (
            {"fid": 210.0},
            None,
            True,
            "no champion to beat: the first model becomes champion; floor fid: 210 meets <= 300",
        ),
        # ... a useless first model does not become champion by default
        ({"fid": 420.0}, None, False, "no champion, but a rule fails; floor fid: 420 misses <= 300"),
        ({"kid": 0.1}, None, False, "floor fid: undefined for the challenger"),
        # the floor holds for every challenger: beating a poor champion is not enough
        ({"fid": 350.0}, {"fid": 400.0}, False, "fid: 350 meets < 400"),
        ({"fid": 250.0}, {"fid": 260.0}, True, "floor fid: 250 meets <= 300; fid: 250 meets < 260"),
    ],
)
def test_the_floor_keeps_a_useless_model_from_becoming_champion(challenger, champion, promote, reason):
    ok, why = gate_decision(challenger, champion, FID, FLOOR)
    assert ok is promote
    assert reason in why


def test_at_most_rules_judge_the_challenger_alone():
    rule = [GateMetric("nn_copy_fraction", "at_most", 0.05)]
    assert gate_decision({"nn_copy_fraction": 0.01}, {"nn_copy_fraction": 0.0}, rule)[0] is True
    assert gate_decision({"nn_copy_fraction": 0.2}, None, rule) == (
        False,
        "no champion, but a rule fails; nn_copy_fraction: 0.2 misses <= 0.05",
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (['registry.gate=[{"name": "fid", "mode": "minimum"}]'], "mode must be one of min, max, at_least, at_most"),
        (['registry.gate=[{"name": "fdi", "mode": "min"}]'], "writes no metric 'fdi'; did you mean fid?"),
        (['registry.gate=[{"name": "fid.cat", "mode": "min"}]'], "class 'cat' is not one of data.classes"),
        (['registry.gate=[{"name": "kid_ci_hi", "mode": "min"}]'], "writes no metric 'kid_ci_hi'"),
        (['registry.gate=[{"name": "n_synthetic_ci_low", "mode": "min"}]'], "n_synthetic has no confidence interval"),
        (['registry.gate=[{"name": "mask_label_mismatch.benign", "mode": "min"}]'], "has no per-class value"),
        (['registry.gate=[{"name": "dice_gain_synth", "mode": "max"}]'], "only when eval.seg_arms"),
        (['registry.gate=[{"name": "inception_fid", "mode": "min"}]'], "writes no metric 'inception_fid'"),
        (['registry.floor=[{"name": "fid", "mode": "min"}]'], "a floor judges the challenger alone"),
        (['registry.floor=[{"name": "fid", "mode": "at_most", "margin": "high"}]'], "must be a number"),
        (["registry.lock_uri=postgresql://mlflow:secret@db:5432/mlflow"], "must not hold a password"),
        (["registry.lock_timeout_s=0"], "lock_timeout_s must be above 0"),
    ],
)
def test_gate_rules_are_checked_when_the_config_is_loaded(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve("quickstart", overrides)


@pytest.mark.parametrize(
    "name",
    [
        "fid",
        "fid_ci_high",
        "fid.malignant",
        "medical_recall_ci_low.benign",
        "holdout_medical_fid",
        "dice_gain_ci_low.malignant",
        "seg_fp_rate_real_synth_ci_high",
        "class_accuracy.normal",
        "nn_copy_fraction.malignant",
        "min_class_diversity_ratio",
        "topup_kept.benign",
        "fid_improvement_ci_low",
    ],
)
def test_every_kind_of_metric_the_evaluate_stage_writes_can_be_a_rule(name):
    cfg = resolve("quickstart", [f'registry.gate=[{{"name": "{name}", "mode": "at_least", "margin": 0}}]'])
    assert cfg.registry.gate[0].name == name


def test_the_logged_model_requirements_install_from_pypi():
    pins = dict(r.split("==") for r in requirements())
    assert set(pins) == {"torch", "numpy", "pandas", "mlflow"}
    assert all("+" not in v and v[0].isdigit() for v in pins.values()), pins


def _eval_dir(tmp_path, name, fid):
    d = tmp_path / name
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps({"fid": fid, "kid": fid / 100}))
    (d / "report.json").write_text(json.dumps({"run_key": name, "metrics": {"fid": fid}}))
    return d


def test_register_gate_and_promote_against_a_real_tracking_server(mlflow_server, model_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    # the registered FIDs of the metrics.json files written here decide (min rule): no paired comparison behind them
    tiny_cfg = resolve("tiny", ['registry.gate=[{"name": "fid", "mode": "min"}]'])
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
    run_1 = client.get_model_version(name, first["challenger_version"]).run_id
    assert client.get_run(run_1).info.status == "RUNNING"  # registering does not end the pipeline's run
    # a retried register (same pipeline run) finds its version instead of registering another
    retried = register(model_dir, ev, tiny_cfg, tracking, lineage)
    assert retried["challenger_version"] == first["challenger_version"] and retried["reused_version"]
    assert not first["reused_version"]
    assert len(client.search_model_versions(f"name = '{name}' and tags.`pipeline.run_key` = 'run-1'")) == 1
    result = apply_decision(first, ev, tmp_path / "out-1", tracking)
    assert result["audit"]["action"] == "promoted"
    assert client.get_run(run_1).info.status == "FINISHED"  # the gate step, the last, ends it
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
    # a retried run-2 gate step, now that run-3 is challenger, returns run-2's decision and decides nothing new
    again = apply_decision(worse, ev2, tmp_path / "out-2b", tracking2)
    assert again["audit"]["action"] == "rejected" and again["audit"]["version"] == worse["challenger_version"]
    apply_decision(better, ev3, tmp_path / "out-3", tracking3)
    assert client.get_model_version_by_alias(name, CHAMPION).version == better["challenger_version"]

    # the audit record of each decision is an artifact of its MLflow run
    run_id = client.get_model_version(name, better["challenger_version"]).run_id
    audit_path = client.download_artifacts(run_id, "gate/audit.json", str(tmp_path))
    audit = json.loads(open(audit_path).read())
    assert audit["previous_champion"] == first["challenger_version"]
    assert audit["champion_metrics"]["fid"] == 20.0 and audit["challenger_metrics"]["fid"] == 15.0
    assert audit["pipeline_run_key"] == "run-3" and audit["actor"] and audit["rules"] and "lock" in audit
    assert [a.path for a in client.list_artifacts(run_id, "gate/audit")] == [
        f"gate/audit/{audit['stamp']}-promoted.json"
    ]
    # one decision record per version, on the model and on the version
    trail = audit_trail(client, name)
    assert [(r["version"], r["action"]) for r in trail if r["action"] in FINAL] == [
        (first["challenger_version"], "promoted"),
        (worse["challenger_version"], "rejected"),
        (better["challenger_version"], "promoted"),
    ]
    assert [r["action"] for r in version_trail(client.get_model_version(name, worse["challenger_version"]))] == [
        "rejected"
    ]


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
