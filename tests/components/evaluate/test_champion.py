import numpy as np
import pytest
import torch

from components.config import resolve
from components.evaluate.champion import champion_comparison
from components.gan.models import build_generator, generator_kwargs
from components.gan.sampling import generate
from components.metrics.features import extract_features, get_extractor
from components.metrics.fid import fid_from_features


def tiny_generator(seed: int):
    torch.manual_seed(seed)
    return build_generator(generator_kwargs(resolve("tiny").train, 3, 32)).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def setting():
    extractor = get_extractor("pixels", "cpu")
    real = np.random.default_rng(0).uniform(-1, 1, (40, 32, 32)).astype(np.float32)
    labels = np.repeat(np.arange(3), 8)
    return extractor, extract_features(extractor, real, progress=False), labels


def test_the_champion_is_scored_like_the_challenger_with_a_paired_interval(setting):
    extractor, real_feats, labels = setting
    champion, challenger = tiny_generator(1), tiny_generator(2)
    metrics, section = champion_comparison(
        (champion, {"version": "3", "step": 10, "sha256": "x"}), challenger, real_feats, labels, extractor, 7, 30
    )
    feats = extract_features(extractor, generate(champion, labels, seed=7)[0], progress=False)
    assert metrics["champion_fid"] == pytest.approx(fid_from_features(real_feats, feats))
    assert metrics["fid_improvement"] == pytest.approx(section["champion_fid"] - section["challenger_fid"])
    assert metrics["fid_improvement_ci_low"] <= metrics["fid_improvement"] <= metrics["fid_improvement_ci_high"]
    assert metrics["champion_version"] == 3.0 and section["n_synthetic"] == len(labels)
    assert section["extractor"]["name"] == "pixels" and section["verdict"] in (
        "challenger better",
        "champion better",
        "within noise",
    )


def test_a_model_against_itself_is_within_noise_and_no_champion_compares_nothing(setting):
    extractor, real_feats, labels = setting
    g = tiny_generator(1)
    metrics, section = champion_comparison((g, {"version": "1"}), g, real_feats, labels, extractor, 7, 30)
    assert metrics["fid_improvement"] == 0 and section["verdict"] == "within noise"
    metrics, section = champion_comparison((None, "no champion yet"), g, real_feats, labels, extractor, 7, 30)
    assert metrics == {} and section == {"compared": False, "reason": "no champion yet"}


def test_the_report_says_how_the_champion_was_compared(setting):
    from components.evaluate.report import render_report

    extractor, real_feats, labels = setting
    _, section = champion_comparison(
        (tiny_generator(1), {"version": "4"}), tiny_generator(2), real_feats, labels, extractor, 7, 30
    )
    html = render_report({"champion": section})
    assert "champion v4" in html and "paired bootstrap" in html and section["verdict"] in html
    assert "Not compared: no champion yet" in render_report(
        {"champion": {"compared": False, "reason": "no champion yet"}}
    )
