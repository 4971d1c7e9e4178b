"""Adversarial robustness of one model: projected gradient descent attacks and the curvature of the loss with
respect to the input (Zhao et al., ICLR 2020, *Bridging mode connectivity in loss landscapes and adversarial
robustness*).

Every function is for ONE model, given `logits_fn(x_BX) -> outputs_B...` (the model at fixed parameters,
BatchNorm in inference mode, so examples do not interact); ensembles vmap it over members like the rest of lljax.

- `pgd_attack`: L-infinity or L2 projected gradient ascent on each example's loss inside a ball of radius
  `epsilon` around it, `steps` steps of `step_size` (L-infinity: the sign of the gradient; L2: the gradient over
  its norm), from a uniformly random point of the ball when a `key` is given (Madry et al.'s random start),
  returning the last iterate (advertorch's, which Zhao et al. use). Zhao et al.'s image setting: epsilon 8/255,
  10 steps of 2/255, L-infinity, inputs in [0, 1]. FGSM (Goodfellow et al.) is steps=1, step_size=epsilon and no
  key. Everything is in the inputs' own units: data normalised per channel (MNIST-1D, standardised CIFAR-10) have
  no [0, 1] box, so epsilon is then in standard deviations and `clip` is either None (no box: the attack may
  leave the data's range) or the box (low, high) the *attacked inputs* are clipped to after every step (in the
  same normalised units; scalars or arrays broadcasting against one example).
- `input_hessian_top_eig`: for each example, the largest (algebraic) eigenvalue of the Hessian of its own loss
  with respect to its own input, by Lanczos on input-space Hessian-vector products (`lljax.hessian.lanczos`).
  Zhao et al. run power iteration on ONE vector over a whole batch (the Hessian of the batch loss with respect
  to every input at once): that Hessian is block diagonal (one block per example), so their single vector tends
  to the dominant block's top eigenvector, i.e. about the largest example's eigenvalue (of the largest
  magnitude, divided by the batch size for a mean loss), the examples mixed in one number. lljax's is per
  example, and the caller reports the mean and the max over the sample.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from lljax import hessian, losses
from lljax.errors import LLJaxError

NORMS = ("linf", "l2")


def check_attack(epsilon, steps, step_size, norm) -> None:
    """One-line LLJaxErrors for an attack's settings (before anything runs)."""
    if norm not in NORMS:
        raise LLJaxError(f"unknown attack norm {norm!r}; choose one of {', '.join(NORMS)}")
    for name, value in (("epsilon", epsilon), ("step size", step_size)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value == value \
                or value in (float("inf"), float("-inf")):
            raise LLJaxError(f"attack {name} must be a finite number, got {value!r}")
        if value < 0:
            raise LLJaxError(f"attack {name} must be non-negative, got {value:g}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise LLJaxError(f"attack steps must be a positive integer, got {steps!r}")


def _per_example_norm(a, keepdims=True):
    axes = tuple(range(1, a.ndim))
    return jnp.sqrt(jnp.sum(a ** 2, axis=axes, keepdims=keepdims))


def _project(delta, epsilon, norm):
    if norm == "linf":
        return jnp.clip(delta, -epsilon, epsilon)
    size = _per_example_norm(delta)
    return delta * jnp.minimum(1, epsilon / jnp.maximum(size, jnp.finfo(delta.dtype).tiny))


def _random_start(key, x, epsilon, norm):
    if norm == "linf":
        return jax.random.uniform(key, x.shape, x.dtype, -epsilon, epsilon)
    k_dir, k_rad = jax.random.split(key)
    direction = jax.random.normal(k_dir, x.shape, x.dtype)
    direction = direction / jnp.maximum(_per_example_norm(direction), jnp.finfo(x.dtype).tiny)
    dim = x[0].size
    radius = jax.random.uniform(k_rad, (x.shape[0],) + (1,) * (x.ndim - 1), x.dtype) ** (1 / dim)
    return epsilon * radius * direction  # uniform in the ball


def pgd_attack(logits_fn: Callable[[jax.Array], jax.Array], x, y, *, epsilon, steps: int, step_size,
               norm: str = "linf", key: jax.Array | None = None, clip=None,
               loss: losses.Loss = losses.cross_entropy) -> jax.Array:
    """Adversarial inputs (B, ...) for the inputs x (B, ...) and targets y: `steps` steps of projected gradient
    ascent on each example's `loss` within its `norm` ball of radius `epsilon` (module docstring), from a random
    point of the ball when `key` is given, else from x; `clip` = (low, high) keeps the attacked inputs in a box
    (None: no box). epsilon and step_size may be traced scalars; steps, norm and clip are static."""
    if norm not in NORMS:
        raise LLJaxError(f"unknown attack norm {norm!r}; choose one of {', '.join(NORMS)}")
    if int(steps) != steps or steps < 1:
        raise LLJaxError(f"attack steps must be a positive integer, got {steps}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise LLJaxError(f"an attack needs float inputs, got {x.dtype} (tokens cannot be perturbed)")
    epsilon = jnp.asarray(epsilon, x.dtype)
    step_size = jnp.asarray(step_size, x.dtype)
    box = (lambda a: a) if clip is None else (lambda a: jnp.clip(a, jnp.asarray(clip[0], x.dtype),
                                                                 jnp.asarray(clip[1], x.dtype)))
    # Summed, not averaged: each example's gradient is then its own loss's (inference mode: no interaction).
    total = lambda x_adv: jnp.sum(loss.totals(logits_fn(x_adv), y)[0])
    delta = jnp.zeros_like(x) if key is None else _random_start(key, x, epsilon, norm)
    delta = box(x + delta) - x

    def step(delta, _):
        g = jax.grad(total)(x + delta)
        if norm == "linf":
            move = jnp.sign(g)
        else:
            move = g / jnp.maximum(_per_example_norm(g), jnp.finfo(x.dtype).tiny)
        delta = _project(delta + step_size * move, epsilon, norm)
        return box(x + delta) - x, None

    delta, _ = jax.lax.scan(step, delta, None, length=int(steps))
    return x + delta


def attack_metrics(logits_fn, x, y, loss: losses.Loss = losses.cross_entropy) -> tuple[jax.Array, jax.Array]:
    """The mean loss and the mean error (NaN without an error metric) of `logits_fn` on (x, y), one batch."""
    values, wrong, counts = loss.totals(logits_fn(x), y)
    mean_loss = jnp.sum(values) / jnp.sum(counts)
    mean_error = jnp.sum(wrong) / jnp.sum(counts) if loss.error else jnp.full((), jnp.nan, mean_loss.dtype)
    return mean_loss, mean_error


def input_hessian_top_eig(logits_fn: Callable[[jax.Array], jax.Array], x, y, *, key: jax.Array,
                          num_steps: int = 20, loss: losses.Loss = losses.cross_entropy) -> jax.Array:
    """(B,) the top eigenvalue of the Hessian of each example's loss with respect to its input, x (B, ...):
    Lanczos with full reorthogonalisation (`lljax.hessian.lanczos`), `num_steps` input-space HVPs per example
    (capped at the input's size, where it is exact), from a random start (`key`). Per example, not Zhao et al.'s
    one vector over the batch (module docstring)."""
    if int(num_steps) != num_steps or num_steps < 1:
        raise LLJaxError(f"Lanczos steps must be a positive integer, got {num_steps}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise LLJaxError(f"an input Hessian needs float inputs, got {x.dtype} (tokens)")
    shape = x.shape[1:]
    dim = x[0].size
    steps = min(int(num_steps), dim)

    def one(xi, yi, k):
        f = lambda v: jnp.sum(loss.totals(logits_fn(v.reshape(1, *shape)), yi[None])[0])
        grad_flat = jax.grad(f)
        _, matvec = jax.linearize(grad_flat, xi.reshape(-1))
        v0 = jax.random.normal(k, (dim,), x.dtype)
        return hessian.lanczos(matvec, v0, steps).ritz_values[0]

    return jax.vmap(one)(x, y, jax.random.split(key, x.shape[0]))
