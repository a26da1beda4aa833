import pytest

from components.config import PRESETS, Config, resolve
from components.errors import ConfigError


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_resolves_and_round_trips(preset):
    cfg = resolve(preset)
    assert cfg.preset == preset
    assert Config.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize(
    ("override", "path", "expected"),
    [
        ("train.steps=17", ("train", "steps"), 17),
        ("train.lr_g=1e-3", ("train", "lr_g"), 1e-3),
        ("train.lr_g=1", ("train", "lr_g"), 1.0),
        ("data.classes=a,b", ("data", "classes"), ["a", "b"]),
        ('data.classes=["x","y"]', ("data", "classes"), ["x", "y"]),
        ("data.window_center=null", ("data", "window_center"), None),
        ("data.window_center=40", ("data", "window_center"), 40.0),
        ("train.loss=nonsaturating", ("train", "loss"), "nonsaturating"),
        ("eval.extra_extractors=", ("eval", "extra_extractors"), []),
        ("eval.extra_extractors=medical,pixels", ("eval", "extra_extractors"), ["medical", "pixels"]),
    ],
)
def test_overrides_are_typed(override, path, expected):
    cfg = resolve("quickstart", [override])
    assert getattr(getattr(cfg, path[0]), path[1]) == expected


@pytest.mark.parametrize(
    ("preset", "overrides", "message"),
    [
        ("quikstart", [], "unknown preset 'quikstart'"),
        ("quickstart", ["train.stepz=3"], "did you mean steps"),
        ("quickstart", ["nope.steps=3"], "unknown config key 'nope.steps'"),
        ("quickstart", ["train.steps=abc"], "must be an integer"),
        ("quickstart", ["train.steps"], "not of the form key=value"),
        ("quickstart", ["train=3"], "must be a mapping"),
        ("quickstart", ["eval.select_snapshot=best"], "eval.select_snapshot must be one of best_fid, last, got 'best'"),
        ("quickstart", ["eval.extra_extractors=medical,medical"], "eval.extra_extractors must name each space once"),
        (
            "quickstart",
            ["validate.patients_per_class_severity=fail"],
            "validate.patients_per_class_severity must be one of warning, critical, got 'fail'",
        ),
        ("quickstart", ["validate.min_patients_per_class=-1"], "validate.min_patients_per_class must be 0 or more"),
    ],
)
def test_bad_config_is_a_clear_error(preset, overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve(preset, overrides)


def test_flat_params_cover_every_leaf():
    flat = resolve("quickstart").flat()
    assert flat["train.steps"] == 1000
    assert flat["registry.gate"][0]["name"] == "fid"


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_reports_the_medical_feature_space_beside_the_primary(preset):
    ev = resolve(preset).eval
    assert ev.extra_extractors == ["medical"] and ev.feature_extractor != "medical"
