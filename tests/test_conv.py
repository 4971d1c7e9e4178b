"""Convolution strategies: im2col against lax, and every strategy training an ensemble to the same numbers
(float64) as the others and as a loop over members."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lljax import conv, models, sharding, train
from lljax.errors import LLJaxError


@pytest.mark.parametrize("shape,stride", [((2, 11, 3), 1), ((2, 11, 3), 2), ((2, 9, 8, 3), 1), ((2, 9, 8, 3), 2)])
def test_im2col_convolution_equals_lax(shape, stride):
    nd = len(shape) - 2
    x = jax.random.normal(jax.random.key(0), shape)
    kernel = jax.random.normal(jax.random.key(1), (3,) * nd + (3, 4))
    spatial = "HW"[-nd:] if nd < 3 else "DHW"
    expected = jax.lax.conv_general_dilated(x, kernel, (stride,) * nd, ((1, 1),) * nd,
                                            dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"))
    for got in (conv.im2col(x, kernel, (stride,) * nd, ((1, 1),) * nd),
                conv.lax_conv(x, kernel, (stride,) * nd, ((1, 1),) * nd)):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_rule_names_and_errors():
    assert conv.rule("cpu") == "im2col" and conv.rule("gpu") == "grouped" and conv.rule("tpu") == "grouped"
    assert conv.concrete("auto", "cpu") == "im2col" and conv.concrete("map", "cpu") == "map"
    with pytest.raises(LLJaxError, match="unknown convolution strategy 'fast'; choose one of auto, grouped"):
        conv.check("fast")
    with pytest.raises(LLJaxError, match="unknown convolution strategy"):
        models.ModelSpec("cnn", 4, conv="fast")


def test_map_passes_are_slices_of_the_chunk():
    assert conv.passes("grouped", 8) is None and conv.passes("im2col", 8) is None
    assert conv.passes("map", 8) == 8  # one member per slice
    assert conv.passes("map", 8, map_chunk=4) == 2
    assert conv.passes("map", 6, map_chunk=4) == 2  # the largest divisor of 6 not above 4: 3
    assert conv.passes("map", 2, map_chunk=5) == 1
    with pytest.raises(LLJaxError, match="map chunk must be a positive integer"):
        conv.passes("map", 4, map_chunk=0)
    placement = sharding.Placement(sharding.member_mesh(jax.devices()[:1]))
    params = {"w": jnp.zeros((8, 3))}
    assert placement.passes_for(8, params, "map", 2) == 4 and placement.passes_for(8, params, "map") == 8


def _wide(tree):
    return jax.tree.map(lambda a: a.astype(jnp.float64) if getattr(a, "dtype", None) == jnp.float32 else a, tree)


def _train(model, strategy, input_shape, members=3, epochs=2, width=3, only=None):
    """(trained state, member) of an ensemble of `model` trained in float64 with `strategy`; `only`: member
    `only` of it trained alone."""
    n, batch = 24, 8
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(n, *input_shape)))
    y = jnp.asarray(rng.integers(0, 3, n).astype(np.int32))
    spec = train.TrainSpec(models.ModelSpec(model, width, 3, conv=strategy), batch, epochs, n)
    ones = jnp.ones(members)
    hyper = train.Hyper(jnp.linspace(0.01, 0.05, members), 5e-4 * ones, 0.9 * ones, ones, 0 * ones)
    keys = jax.random.split(jax.random.key(3), members)
    if only is not None:
        keys, hyper = jax.tree.map(lambda a: a[only:only + 1], (keys, hyper))
    state, member = train.init_ensemble(spec, keys, hyper, y, tuple(input_shape))
    state, x = _wide(state), _wide(x)
    passes = conv.passes(strategy, len(keys), 1) or 1
    ensemble = train.train_ensemble(spec, state, member, x, 0, epochs, passes)
    return ensemble, member


@pytest.mark.slow
@pytest.mark.parametrize("model,input_shape", [("cnn", (12,)), ("cnn", (6, 6, 2)), ("resnet18", (6, 6, 2))])
def test_every_strategy_trains_to_the_same_numbers(model, input_shape):
    with jax.enable_x64(True):
        results = {s: _train(model, s, input_shape)[0] for s in conv.CONCRETE}
        reference = results["im2col"]
        for strategy, result in results.items():
            for a, b in zip(jax.tree.leaves(result), jax.tree.leaves(reference)):
                np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-10,
                                           atol=1e-11, err_msg=f"{model} {strategy}")


def test_map_strategy_equals_a_loop_over_members():
    with jax.enable_x64(True):
        ensemble, _ = _train("cnn", "map", (12,))
        for i in range(3):
            one = jax.tree.map(lambda a: a[0], _train("cnn", "grouped", (12,), only=i)[0])
            mine = jax.tree.map(lambda a: a[i], ensemble)
            for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(one)):
                np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-10,
                                           atol=1e-11)


def test_the_strategy_reaches_the_convolution_kernel():
    x = jnp.ones((2, 8, 8, 3))
    texts = {}
    for strategy in ("grouped", "im2col"):
        spec = models.ModelSpec("cnn", 4, conv=strategy)
        params, stats = models.init(spec, jax.random.key(0), (8, 8, 3))
        texts[strategy] = jax.jit(lambda p: models.apply(spec, p, stats, x)[0]).lower(params).as_text()
    assert "convolution" in texts["grouped"] and "convolution" not in texts["im2col"]
    # a factory that takes no conv argument (the mlp) ignores the strategy
    assert models.build(dataclasses.replace(models.ModelSpec("mlp", 4), conv="im2col")) == models.mlp(4, 10)
