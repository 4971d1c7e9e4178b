"""What a parameter leaf is, from its path and shape: the layouts of Flax's layers, so that the weight spectra read
every weight as a matrix and filter normalisation finds every output filter, whatever the model.

| kind       | leaf (Flax layout)                            | matrix (`matrices`)          | filter axes |
|------------|-----------------------------------------------|------------------------------|-------------|
| dense      | `kernel` (in, out)                            | itself                       | last        |
| conv       | `kernel` (spatial..., in, out)                | one (in, out) per position   | last        |
| attn_in    | `query`/`key`/`value` `kernel` (in, H, D)     | (in, H x D)                  | (1, 2)      |
| attn_out   | `out` `kernel` (H, D, out) of an attention    | (H x D, out)                 | last        |
| embedding  | `embedding` (V, d) of `nn.Embed`              | (V, d)                       | first       |
| torch_dense| `weight` (out, in) (Equinox, torch layout)    | its transpose (in, out)      | first       |
| torch_conv | `weight` (out, in, spatial...) (Equinox)      | one (in, out) per position   | first       |
| vector     | 1-D leaves (biases, normalisation scales)     | none                         | none        |

Attention projections are recognised by the names Flax gives them (`nn.MultiHeadDotProductAttention`,
`nnx.MultiHeadAttention`: submodules query, key, value and out with 3-D kernels). Each query, key and value
projection is one matrix, as WeightWatcher reads the separate query/key/value `nn.Linear` layers of a PyTorch
Transformer (BERT's), and an embedding table is one matrix (V, d) as WeightWatcher reads `nn.Embedding`. A
filter is one output unit: a column of a Dense kernel, an output channel of a convolution, one (head, dimension)
of a query projection, one token's row of an embedding (as loss-landscape normalises the rows of PyTorch's
`nn.Embedding` weight, its dimension 0 being the filters of every PyTorch layer).

Flax NNX layers name and lay out their parameters as linen's (`nnx.Linear` kernel (in, out), `nnx.Conv`,
`nnx.Embed` embedding, `nnx.MultiHeadAttention` query/key/value/out). Equinox layers store a `weight` in torch's
layout: `eqx.nn.Linear` (out, in) (an `eqx.nn.MultiheadAttention`'s projections are such Linears, an
`eqx.nn.Embedding`'s (V, d) table reads the same way: a 2-D `weight`'s transpose has the same spectrum and its
rows are the filters either way), `eqx.nn.Conv` (out, in, spatial...), and an `eqx.nn.Conv` bias (out, 1, ...)
is a vector.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lljax import pytrees

KINDS = ("dense", "conv", "attn_in", "attn_out", "embedding", "torch_dense", "torch_conv", "vector")
CONVOLUTIONS = ("conv", "torch_conv")  # kinds holding one matrix per spatial position
ATTENTION_INPUTS = ("query", "key", "value")


def kind(path, shape) -> str:
    """The kind of a leaf (module docstring) from its pytree path and shape."""
    names = pytrees.path_name(path).lower().split("/")
    leaf, module = names[-1], names[-2] if len(names) > 1 else ""
    if len(shape) <= 1:
        return "vector"
    if leaf == "bias" and module not in (*ATTENTION_INPUTS, "out") and all(d == 1 for d in shape[1:]):
        return "vector"  # an Equinox conv bias (out, 1, ...)
    if leaf == "weight":
        return "torch_dense" if len(shape) == 2 else "torch_conv"
    if leaf == "embedding" and len(shape) == 2:
        return "embedding"
    if len(shape) == 3 and leaf == "kernel" and module in ATTENTION_INPUTS:
        return "attn_in"
    if len(shape) == 3 and leaf == "kernel" and module == "out":
        return "attn_out"
    return "dense" if len(shape) == 2 else "conv"


def filter_axes(kind_: str, ndim: int) -> tuple[int, ...]:
    """The axes indexing a leaf's filters (output units); () for a vector."""
    return {"vector": (), "embedding": (0,), "attn_in": (1, 2), "torch_dense": (0,), "torch_conv": (0,)}.get(
        kind_, (ndim - 1,))


def matrices(leaf: jax.Array, kind_: str) -> jax.Array:
    """(S, a, b) the weight matrices of a leaf: S = 1 but for a convolution (one (in, out) matrix per spatial
    position)."""
    if kind_ == "attn_in":
        return leaf.reshape(1, leaf.shape[0], -1)
    if kind_ == "attn_out":
        return leaf.reshape(1, -1, leaf.shape[-1])
    if kind_ == "torch_dense":
        return leaf.T[None]
    if kind_ == "torch_conv":  # (out, in, *spatial) -> (*spatial, in, out)
        leaf = jnp.transpose(leaf, (*range(2, leaf.ndim), 1, 0))
    return jnp.reshape(leaf, (-1, *leaf.shape[-2:]))


def matrix_shape(shape: tuple[int, ...], kind_: str) -> tuple[int, int, int]:
    """(S, a, b) of `matrices` from the leaf's shape alone."""
    return jax.eval_shape(lambda a: matrices(a, kind_), jax.ShapeDtypeStruct(shape, jnp.float32)).shape


def kinds(params: Any) -> Any:
    """The kind of every leaf, a pytree like `params`."""
    return jax.tree_util.tree_map_with_path(lambda path, leaf: kind(path, jnp.shape(leaf)), params)
