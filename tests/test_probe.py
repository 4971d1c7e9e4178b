"""The timed probe behind --conv auto: the rule where probing is off, a measured choice cached on disk."""
import json

import jax
import numpy as np
import pytest

from lljax import conv, models, probe, sharding, train


@pytest.fixture
def group(tmp_path, monkeypatch):
    monkeypatch.setenv("LLJAX_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 12)).astype(np.float32), rng.integers(0, 3, 64).astype(np.int32)
    spec = train.TrainSpec(models.ModelSpec("cnn", 4, 3), 16, 1, 64)
    return spec, x, y, sharding.Placement(sharding.member_mesh(jax.devices()[:1]))


def test_the_rule_decides_where_probing_is_off(group):
    spec, x, y, placement = group
    assert probe.choose(spec, 2, x, y, placement, "accelerator") == conv.rule("cpu") == "im2col"
    assert probe.choose(spec, 2, x, y, placement, "off") == "im2col"
    assert not probe.cache_path().exists()


def test_a_probe_measures_every_candidate_and_is_cached(group, monkeypatch):
    spec, x, y, placement = group
    seconds = probe.measure(spec, 2, x, y, placement, steps=2)
    assert set(seconds) == set(conv.CONCRETE) and all(s > 0 for s in seconds.values())
    mlp = train.TrainSpec(models.ModelSpec("mlp", 4), 16, 1, 64)
    assert probe.candidates(mlp) == ("grouped", "map")  # im2col is models.Conv's kernel: nothing to choose
    fixed = {"grouped": 3.0, "map": 1.0, "im2col": 2.0}
    calls = []
    monkeypatch.setattr(probe, "measure", lambda *a, **k: calls.append(a) or fixed)
    assert probe.choose(spec, 2, x, y, placement, "on") == "map"
    stored = json.loads(probe.cache_path().read_text())
    assert [v["best"] for v in stored.values()] == ["map"] and list(stored.values())[0]["seconds_per_step"] == fixed
    assert probe.choose(spec, 2, x, y, placement, "on") == "map" and len(calls) == 1  # a second run: no probe
    probe.choose(spec, 4, x, y, placement, "on")  # another shape: probed
    assert len(calls) == 2 and len(json.loads(probe.cache_path().read_text())) == 2
