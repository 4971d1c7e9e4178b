"""Convolution strategies for ensembles: how the convolutions of M vmapped members are computed.

Under `jax.vmap` every convolution of a member becomes one grouped convolution over all members
(feature_group_count x M) and its weight gradient a batch-grouped one; XLA:CPU runs those several times slower
than the same work as matmuls, and cuDNN handles them poorly at small channel counts (JAX issues #13800,
#26568). So the strategy is a choice:

  `im2col`   patches (strided slices, concatenated) @ kernel: under vmap one batched matmul per layer.
  `grouped`  `lax.conv_general_dilated`; vmapped, the grouped convolution.
  `map`      `lax.conv_general_dilated` with the members trained one chunk after another inside the program
             (`lax.map` over slices of `map_chunk` members, `train.train_ensemble(passes=...)`), so each
             convolution is grouped over a chunk only (one member: a plain convolution).
  `auto`     `rule(backend)` or, where probing is on, the fastest of a short timed probe (`lljax.probe`).

The strategy names the kernel of `models.Conv` (the built-in cnn and resnet18, and any model built from it)
and, for `map`, how training walks the member axis. Every strategy gives the same numbers to float rounding.
"""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp

from lljax.errors import LLJaxError

STRATEGIES = ("auto", "grouped", "map", "im2col")
CONCRETE = STRATEGIES[1:]


def rule(backend: str) -> str:
    """The strategy `auto` takes without a probe: im2col on a CPU (measured: benchmarks/RESULTS.md, issue 15),
    grouped elsewhere (XLA's own convolution kernels; a GPU probe may pick `map` instead)."""
    return "im2col" if backend == "cpu" else "grouped"


def check(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise LLJaxError(f"unknown convolution strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    return strategy


def concrete(strategy: str, backend: str | None = None) -> str:
    """`strategy`, with `auto` replaced by the rule for `backend` (default: JAX's default backend)."""
    check(strategy)
    return rule(backend or jax.default_backend()) if strategy == "auto" else strategy


def im2col(x, kernel, strides, padding):
    """Convolution of x (B, *spatial, C_in) with kernel (*window, C_in, C_out) as (strided slices ->
    concatenated patches) @ kernel; explicit padding ((lo, hi) per spatial axis)."""
    nd = len(strides)
    x = jnp.pad(x, [(0, 0), *padding, (0, 0)])
    window = kernel.shape[:nd]
    out = [(x.shape[1 + d] - window[d]) // strides[d] + 1 for d in range(nd)]
    cols = []
    for offset in itertools.product(*(range(k) for k in window)):
        index = tuple(slice(o, o + s * (n - 1) + 1, s) for o, s, n in zip(offset, strides, out))
        cols.append(x[(slice(None), *index)])
    return jnp.concatenate(cols, -1) @ kernel.reshape(-1, kernel.shape[-1])


def lax_conv(x, kernel, strides, padding):
    """The same convolution by `lax.conv_general_dilated` (channels last)."""
    spatial = "DHW"[-len(strides):]
    return jax.lax.conv_general_dilated(x, kernel, strides, padding,
                                        dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"))


def convolve(x, kernel, strides, padding, strategy: str = "auto"):
    """x (B, *spatial, C_in) * kernel (*window, C_in, C_out) -> (B, *spatial', C_out) by `strategy`'s kernel."""
    if concrete(strategy) == "im2col":
        return im2col(x, kernel, strides, padding)
    return lax_conv(x, kernel, strides, padding)


def passes(strategy: str, per_device: int, map_chunk: int = 1) -> int | None:
    """Training slices for the `map` strategy: `per_device` members in slices of `map_chunk` (the largest
    divisor of `per_device` not above it); None for the other strategies (their own rule decides)."""
    if concrete(strategy) != "map":
        return None
    if int(map_chunk) != map_chunk or map_chunk < 1:
        raise LLJaxError(f"map chunk must be a positive integer, got {map_chunk}")
    size = max(d for d in range(1, min(map_chunk, per_device) + 1) if per_device % d == 0)
    return per_device // size
