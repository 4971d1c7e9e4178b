"""lljax.pytrees: the member axis, and the one-line error for non-float leaves (Flax NNX and Equinox state)."""
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lljax import curves, hessian, pytrees, similarity
from lljax.errors import LLJaxError


class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.dense = nnx.Linear(4, 3, rngs=rngs)
        self.dropout = nnx.Dropout(0.1, rngs=rngs)

    def __call__(self, x):
        return self.dropout(self.dense(x))


def test_stack_unstack_member():
    trees = [{"a": jnp.full(2, i), "b": (jnp.ones(1) * i,)} for i in range(3)]
    stacked = pytrees.stack(trees)
    assert stacked["a"].shape == (3, 2) and pytrees.num_members(stacked) == 3
    for i, tree in enumerate(pytrees.unstack(stacked)):
        np.testing.assert_array_equal(tree["a"], trees[i]["a"])
    np.testing.assert_array_equal(pytrees.member(stacked, 1)["b"][0], 1.0)


def test_nnx_state_names_the_leaf_and_the_filter():
    _, state = nnx.split(NNXNet(nnx.Rngs(0)))
    for call in (lambda: hessian.trace(lambda p, b: 0.0, state, None, method="exact"),
                 lambda: curves.init_curve(state, state),
                 lambda: similarity.l2_distance(state, state)):
        with pytest.raises(LLJaxError, match=r"leaf 'dropout/rngs/.*' is .*, not floating point.*nnx\.split"
                                             r"\(model, nnx\.Param, \.\.\.\)") as error:
            call()
        assert len(str(error.value).splitlines()) == 1
    _, params, _ = nnx.split(NNXNet(nnx.Rngs(0)), nnx.Param, ...)
    pytrees.check_params(params)  # the filtered parameters pass


def test_equinox_model_names_the_leaf_and_the_filter():
    model = eqx.nn.MLP(4, 3, 8, 1, key=jax.random.key(0))
    with pytest.raises(LLJaxError, match=r"leaf 'activation' is .*eqx\.partition\(model, eqx\.is_inexact_array\)"):
        pytrees.check_params(model)
    params, _ = eqx.partition(model, eqx.is_inexact_array)
    pytrees.check_params(params)
    with pytest.raises(LLJaxError, match="hold no arrays"):
        pytrees.check_params({})
