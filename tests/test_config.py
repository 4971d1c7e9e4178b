"""lljax.config: sections, flat keys, JSON round trip, validation, presets."""
import json

import pytest

from lljax import config, metrics
from lljax.config import Config
from lljax.errors import LLJaxError


def test_flat_keys_sections_and_json_round_trip():
    c = Config.from_dict(dict(widths=[4, 8], hessian_samples=300, curve_lr=0.1, phase_cka=0.5,
                              cka={"samples": 64}))
    assert c.widths == (4, 8) and c.options("hessian").samples == 300 and c.options("curves").lr == 0.1
    assert c.phase.cka == 0.5 and c.options("cka").samples == 64 and c.options("l2") is None
    as_json = json.loads(c.to_json())
    assert as_json["hessian"]["samples"] == 300 and as_json["phase"]["cka"] == 0.5
    assert as_json["metrics"] == ["loss", "hessian", "curves", "cka", "l2"]
    again = Config.from_dict(as_json)
    assert again.same_run(c) and again.to_json() == c.to_json()
    assert c.replace(curve_lr=0.2).differences(c) == ["curves"]
    assert Config().same_run(Config.from_dict({"metrics": list(metrics.default_names())}))


@pytest.mark.parametrize("values,match", [
    (dict(hessian_bogus=3), "unknown configuration field 'hessian_bogus'"),
    (dict(hessian={"bogus": 1}), "unknown hessian option"),
    (dict(nonsense=1), "unknown configuration field 'nonsense'"),
    (dict(phase_mc_band=1.5), r"mc_band must be in \[0, 1\)"),
])
def test_unknown_or_bad_keys_are_one_line_errors(values, match):
    with pytest.raises(LLJaxError, match=match):
        Config.from_dict(values)


@pytest.mark.parametrize("values,match", [
    (dict(metrics=("loss", "bogus")), "unknown metric 'bogus'"),
    (dict(hessian_top_k=5, hessian_lanczos_steps=4), "top_k=5 needs at least as many Lanczos steps"),
    (dict(curve_lr=0.0), "curve lr must be above 0"),
    (dict(hessian_trace_method="magic"), "unknown hessian trace method 'magic'"),
    (dict(eval_batch_size=0), "eval batch size must be a positive integer"),
    (dict(epochs=2.5), "epochs must be an integer"),
    (dict(dataset="imagenet"), "unknown dataset 'imagenet'"),
])
def test_validation_names_the_first_problem(values, match):
    with pytest.raises(LLJaxError, match=match):
        config.validate(Config.from_dict(values))


def test_presets_are_valid():
    for name, values in config.PRESETS.items():
        config.validate(Config.from_dict(values))
    assert Config.from_dict(config.PRESETS["quick"]).options("curves").epochs == 60
