"""The paired gate rule (mode improves): decides on the improvement's interval, never on two unpaired FIDs."""

import pytest

from components.config import GateMetric, resolve
from components.errors import ConfigError
from components.register.gate import gate_decision

RULE = [GateMetric("fid", "improves", 0.0)]


def paired(gain: float, low: float, high: float, version: float = 3.0) -> dict[str, float]:
    return {
        "fid": 50.0,
        "champion_version": version,
        "fid_improvement": gain,
        "fid_improvement_ci_low": low,
        "fid_improvement_ci_high": high,
    }


def test_a_clearly_better_challenger_is_promoted_and_one_within_noise_keeps_the_champion():
    champion = {"fid": 60.0}
    ok, why = gate_decision(paired(8.0, 3.0, 13.0), champion, RULE, champion_version="3")
    assert ok and "clears > 0" in why and "+8" in why
    # a lower FID point estimate than the champion's registered one, but the paired interval straddles 0
    ok, why = gate_decision(paired(0.1, -6.0, 6.0), {"fid": 99.0}, RULE, champion_version="3")
    assert not ok and "within noise, the champion stays" in why
    ok, why = gate_decision(paired(-9.0, -14.0, -4.0), champion, RULE, champion_version="3")
    assert not ok and "the champion is better" in why
    ok, _ = gate_decision(paired(4.0, 1.0, 7.0), champion, [GateMetric("fid", "improves", 2.0)], champion_version="3")
    assert not ok  # the margin applies to the interval's lower end


def test_a_comparison_with_another_or_no_champion_cannot_promote_and_the_first_model_needs_only_the_floor():
    ok, why = gate_decision(paired(8.0, 3.0, 13.0, version=2), {"fid": 60.0}, RULE, champion_version="3")
    assert not ok and "compared with champion v2, but the champion is now v3" in why
    ok, why = gate_decision({"fid": 50.0}, {"fid": 60.0}, RULE, champion_version="3")
    assert not ok and "did not score a champion" in why
    ok, why = gate_decision(paired(8.0, float("nan"), float("nan")), {"fid": 60.0}, RULE, champion_version="3")
    assert not ok and "no interval" in why
    floor = [GateMetric("fid", "at_most", 300.0)]
    assert gate_decision({"fid": 250.0}, None, RULE, floor)[0]
    assert not gate_decision({"fid": 350.0}, None, RULE, floor)[0]


def test_the_default_gate_is_paired_and_a_paired_rule_needs_a_paired_metric():
    assert [(r.name, r.mode) for r in resolve("quickstart").registry.gate] == [("fid", "improves")]
    with pytest.raises(ConfigError, match="paired comparison with the champion"):
        resolve("quickstart", ['registry.gate=[{"name": "kid", "mode": "improves"}]'])
    with pytest.raises(ConfigError, match="eval.compare_champion=false"):
        resolve("quickstart", ["eval.compare_champion=false"])


def space_tags(fingerprint: str = "abc", reference: str = "r1", n_fake: str = "128", space: str = "inception"):
    pre = f"extractor.{space}."
    return {
        pre + "role": "primary",
        pre + "fingerprint": fingerprint,
        pre + "reference_sha256": reference,
        pre + "n_fake": n_fake,
        "extractor.medical.role": "extra",
        "extractor.medical.fingerprint": "zzz",
    }


def test_registered_values_measured_differently_cannot_decide_a_relative_rule():
    from components.register.gate import comparability

    assert comparability(space_tags(), space_tags()) is None
    assert comparability(space_tags(), {}) is None  # a champion registered before identities were recorded
    assert "reference_sha256 r2 vs the champion's r1" in comparability(space_tags(reference="r2"), space_tags())
    assert "n_fake 64" in comparability(space_tags(n_fake="64"), space_tags())
    assert "feature space pixels vs the champion's inception" in comparability(space_tags(space="pixels"), space_tags())
    why = comparability(space_tags(space="pixels"), space_tags())
    rules = [GateMetric("fid", "min", 0.0)]
    ok, reason = gate_decision({"fid": 9.0}, {"fid": 218.0}, rules, champion_version="1", not_comparable=why)
    assert not ok and "not comparable" in reason and "use mode improves" in reason  # FID 9 in pixels "beats" 218
    assert gate_decision({"fid": 9.0}, {"fid": 218.0}, rules, champion_version="1")[0]
