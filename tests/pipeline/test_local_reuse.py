"""`medgan run --reuse`: a rerun of unchanged data, config and code takes the pure stages from kfp's local cache."""

import shutil
import time

from mlflow.tracking import MlflowClient

from components.config import resolve
from pipeline.local import run_local

POINTER = "outs:\n- md5: 4f1c2e0a9b8d7c6e5f4a3b2c1d0e9f8a.dir\n  size: 1\n  nfiles: 1\n  hash: md5\n  path: data\n"


def _metrics(client, cfg, run_key):
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    (run,) = client.search_runs([exp.experiment_id], f"tags.`medgan.run_key` = '{run_key}'")
    return run.data.metrics


def test_a_rerun_with_reuse_skips_the_pure_stages_and_still_registers_and_gates(phantom_dir, tmp_path, capsys):
    project = tmp_path / "project"
    shutil.copytree(phantom_dir, project / "data")
    (project / "data.dvc").write_text(POINTER)  # what `dvc add data` leaves: the dataset's hash pins the cache key
    cfg = resolve("tiny")
    start = time.monotonic()
    first = run_local(project / "data", cfg, project_dir=project, reuse=True)
    first_s = time.monotonic() - start
    start = time.monotonic()
    second = run_local(project / "data", cfg, project_dir=project, reuse=True)
    second_s = time.monotonic() - start
    print(f"reuse: first run {first_s:.1f} s, rerun {second_s:.1f} s ({100 * second_s / first_s:.0f} %)")

    cached = sorted(p.name for p in (project / "runs/kfp-cache").glob("*.json"))
    assert len(cached) == 5, cached  # ingest, validate, rebalance, train, evaluate
    client = MlflowClient(first.tracking_uri)
    assert "train/loss_g" in _metrics(client, cfg, first.run_key)
    # the rerun is a run of its own (MLflow run, registered version, gate decision); its reused stages did not run
    assert second.run_key != first.run_key and "train/loss_g" not in _metrics(client, cfg, second.run_key)
    assert str(second.decision["challenger_version"]) == "2" and second.report.is_file()
    assert second_s < first_s  # another config, data or code is another key (tests/pipeline/test_cluster_pipeline.py)
