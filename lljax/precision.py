"""Precision policies: the arithmetic a model is applied in.

  `float32`  full float32 matmuls and convolutions everywhere (JAX's 'highest'; on a CPU the same numbers as
             no policy at all, on Hopper/Ampere GPUs no silent TF32).
  `tf32`     float32 values, matmuls and convolutions in TensorFloat-32 ('tensorfloat32').
  `bf16`     parameters and inputs cast to bfloat16 for the forward and backward pass; outputs, the loss, the
             float32 master weights, the optimiser state and BatchNorm statistics stay float32.

Training runs under the configured policy (`train.TrainSpec.precision`); evaluation and every metric (Hessian,
CKA, curves) apply the model under `float32` unless asked otherwise. Arrays of float64 (tests in x64) are never
cast down.
"""
from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp

from lljax.errors import LLJaxError

POLICIES = {"float32": "float32", "tf32": "tensorfloat32", "bf16": "bfloat16"}  # -> jax matmul precision


def check(policy: str) -> str:
    if policy not in POLICIES:
        raise LLJaxError(f"unknown precision policy {policy!r}; choose one of {', '.join(POLICIES)}")
    return policy


def scope(policy: str):
    """Context in which traced matmuls and convolutions take the policy's default precision."""
    return jax.default_matmul_precision(POLICIES[check(policy)]) if policy != "bf16" else contextlib.nullcontext()


def compute(policy: str, tree):
    """The tree's float32 leaves in the policy's compute dtype (bfloat16 under bf16; unchanged otherwise)."""
    if check(policy) != "bf16":
        return tree
    return jax.tree.map(lambda a: a.astype(jnp.bfloat16) if getattr(a, "dtype", None) == jnp.float32 else a, tree)


def restore(like, tree):
    """`tree` with every leaf back in the dtype of the matching leaf of `like` (outputs, BatchNorm statistics)."""
    return jax.tree.map(lambda old, new: new.astype(old.dtype), like, tree)
