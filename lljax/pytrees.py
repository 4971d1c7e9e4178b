"""Parameter pytrees: the member axis (stack, unstack, one member) and the check that a pytree holds only
trainable floating-point arrays.

Flax NNX and Equinox models carry non-float leaves in their full state (RNG keys, counters, static fields);
`ravel_pytree` and every curvature or distance computation need the trainable parameters alone, so such a
leaf is a one-line error naming it and the filter that separates the parameters.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lljax.errors import LLJaxError

FILTER_HINT = ("pass only the trainable parameters: for Flax NNX `graphdef, params, rest = nnx.split(model, "
               "nnx.Param, ...)`; for Equinox `params, static = eqx.partition(model, eqx.is_inexact_array)`")


def path_name(path) -> str:
    """A pytree path as 'Dense_0/kernel'."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def check_params(params: Any, what: str = "parameters") -> None:
    """Raise LLJaxError naming the first leaf of `params` that is not a floating-point array (an NNX RNG key, an
    integer counter, a Python object), with the filter that keeps the parameters only."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    if not leaves:
        raise LLJaxError(f"{what} hold no arrays")
    for path, leaf in leaves:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
            kind = str(dtype) if dtype is not None else type(leaf).__name__
            raise LLJaxError(f"{what} leaf {path_name(path) or '<root>'!r} is {kind}, not floating point; "
                             f"{FILTER_HINT}")


def stack(trees: Sequence[Any]) -> Any:
    """Stack pytrees of identical structure along a new leading member axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack(tree: Any) -> list[Any]:
    """Inverse of `stack`: a list of per-member pytrees."""
    return [member(tree, i) for i in range(num_members(tree))]


def member(tree: Any, i) -> Any:
    """Member i (an int or an index array) of a stacked pytree."""
    return jax.tree.map(lambda x: x[i], tree)


def num_members(tree: Any) -> int:
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise LLJaxError("empty pytree has no member axis")
    return int(np.shape(leaves[0])[0])
