"""Precision policies: the precision each policy puts on the training program's matmuls and convolutions,
bf16 training with float32 master weights, optimiser state and BatchNorm statistics, and metrics in float32."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lljax import models, precision, train
from lljax.errors import LLJaxError


def _problem(policy, model="resnet18", epochs=3, members=2):
    n, batch = 64, 16
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(n, 6, 6, 2)).astype(np.float32))
    y = jnp.asarray((np.asarray(x[:, 0, 0, 0]) > 0).astype(np.int32))
    spec = train.TrainSpec(models.ModelSpec(model, 4, 2, conv="grouped"), batch, epochs, n, "constant",
                           precision=policy)
    ones = jnp.ones(members, jnp.float32)
    hyper = train.Hyper(0.05 * ones, 0 * ones, 0.9 * ones, ones, 0 * ones)
    state, member = train.init_ensemble(spec, jax.random.split(jax.random.key(0), members), hyper, y, (6, 6, 2))
    return spec, state, member, x


def _precisions(text: str) -> set[str]:
    """The operand precisions of every dot_general and convolution of a lowered (StableHLO) program."""
    lines = [line for line in text.splitlines() if "stablehlo.dot_general" in line or "stablehlo.convolution" in line]
    assert lines, "no matmul or convolution in the program"
    found = set()
    for line in lines:
        match = re.search(r"precision = \[(\w+), \w+\]|precision_config = \[#stablehlo<precision (\w+)>", line)
        found.add(next(g for g in match.groups() if g) if match else "DEFAULT")
    return found


@pytest.mark.parametrize("policy,expected", [("float32", {"HIGHEST"}), ("tf32", {"HIGH"})])
def test_the_policy_sets_the_precision_of_every_training_matmul(policy, expected):
    spec, state, member, x = _problem(policy, model="cnn")
    text = train.train_ensemble.lower(spec, state, member, x, 0, 1).as_text()
    assert _precisions(text) == expected


@pytest.mark.slow
def test_bf16_computes_in_bfloat16_with_float32_master_weights_and_statistics():
    spec, state, member, x = _problem("bf16", epochs=6)
    text = train.train_ensemble.lower(spec, state, member, x, 0, 1).as_text()
    assert re.search(r"stablehlo.convolution[^\n]*-> tensor<[^>]*bf16>", text), "no bfloat16 convolution"
    before = np.asarray(state.batch_stats["BatchNorm_0"]["mean"])
    first = train.train_ensemble(spec, state, member, x, 0, 1)
    loss_first = np.asarray(first.loss)
    last = train.train_ensemble(spec, first, member, x, 1, spec.epochs)
    assert np.all(np.asarray(last.loss) < loss_first), (loss_first, np.asarray(last.loss))  # it trains
    for tree in (last.params, last.opt_state, last.batch_stats):
        assert {str(leaf.dtype) for leaf in jax.tree.leaves(tree)} == {"float32"}
    # the running statistics moved, in float32
    assert not np.allclose(last.batch_stats["BatchNorm_0"]["mean"], before)


def test_bf16_training_follows_float32_training_closely():
    losses = {}
    for policy in ("float32", "bf16"):
        spec, state, member, x = _problem(policy, model="mlp", epochs=2)
        losses[policy] = np.asarray(train.train_ensemble(spec, state, member, x, 0, spec.epochs).loss)
    np.testing.assert_allclose(losses["bf16"], losses["float32"], rtol=0.05)
    assert not np.array_equal(losses["bf16"], losses["float32"])


def test_evaluation_and_metrics_apply_the_model_in_float32():
    spec, state, member, x = _problem("bf16")
    one = jax.tree.map(lambda a: a[0], state)
    text = jax.jit(lambda p: models.apply(spec.model, p, one.batch_stats, x)[0]).lower(one.params).as_text()
    assert _precisions(text) == {"HIGHEST"} and "bf16" not in text
    tf32 = jax.jit(lambda p: models.apply(spec.model, p, one.batch_stats, x, policy="tf32")[0]).lower(one.params)
    assert _precisions(tf32.as_text()) == {"HIGH"}


def test_float64_is_never_cast_down():
    tree = {"a": jnp.ones(2, jnp.float32), "b": np.ones(2, np.float64), "i": jnp.ones(2, jnp.int32)}
    cast = precision.compute("bf16", tree)
    assert cast["a"].dtype == jnp.bfloat16 and cast["b"].dtype == np.float64 and cast["i"].dtype == jnp.int32
    assert precision.compute("tf32", tree) is tree
    assert precision.restore(tree, cast)["a"].dtype == jnp.float32


def test_unknown_policy_is_a_one_line_error():
    with pytest.raises(LLJaxError, match="unknown precision policy 'fp8'; choose one of float32, tf32, bf16"):
        train.TrainSpec(models.ModelSpec("mlp", 4), 8, 1, 16, precision="fp8")
