"""Every metric a real pipeline run's evaluate stage wrote can be named by a gate rule (the grammar has not rotted)."""

import json

from components.config import SEG_ARMS, resolve
from components.metric_names import arm_key, check_metric_name


def test_every_key_of_a_real_evaluation_is_a_known_metric(tiny_project):
    project, run = tiny_project
    cfg = resolve("tiny")
    (metrics_file,) = (project / "runs" / "kfp").glob("*/evaluate-op/evaluation/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    keys = [k for k, v in metrics.items() if isinstance(v, (int, float)) or v is None]
    assert len(keys) > 100
    unknown = {
        k: why
        for k in keys
        if (why := check_metric_name(k, cfg.data.classes, cfg.eval.extra_extractors, cfg.eval.seg_arms))
    }
    assert not unknown, unknown


def test_arm_keys_match_the_evaluate_stage():
    from components.evaluate.core import arm_key as evaluate_arm_key

    assert [arm_key(a) for a in SEG_ARMS] == [evaluate_arm_key(a) for a in SEG_ARMS]
