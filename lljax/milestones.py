"""Accuracy milestones measured inside the training loop: training and test accuracy every K steps, and the steps
at which they first reach a threshold (Liu et al. 2022's "steps to fit" and "steps to generalise", from which
`phases.liu_phases` tells comprehension, grokking, memorization and confusion apart).

With `--milestones-every K` every member's training accuracy (on its own subset and labels) and test accuracy are
evaluated after steps K, 2K, ... inside the compiled training loop (BatchNorm in inference mode, float32, as the
loss family), so a run of 10^5 full-batch steps needs no host round trip per check. `steps_to_threshold` reads a
recorded curve: the first checked step at which the accuracy is >= the threshold, exact to K; a run that never
reached it within the budget (the run's total steps) holds the budget.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lljax import options


@dataclasses.dataclass(frozen=True)
class MilestoneOptions:
    """The `milestones` section of a configuration (flags --milestones-<field>)."""

    every: int = options.option(0, "measure training and test accuracy every K steps inside the training loop "
                                   "(0: off): steps_to_fit, steps_to_generalise, accuracy curves, Liu's phases", low=0)
    threshold: float = options.option(0.9, "accuracy a member must reach to count as fitted (training) or "
                                           "generalised (test)", low=0, high=1, low_open=True)
    gap: float = options.option(1000.0, "Liu et al.'s gap in steps between generalising and fitting: comprehension "
                                        "below it, grokking above", low=0)


class Curves(NamedTuple):
    """One member's accuracies after steps K, 2K, ..., C K (C = total steps // K): training and test, (C,) each
    (NaN before a check has run)."""

    train_acc: jax.Array
    test_acc: jax.Array


def empty(checks: int) -> Curves:
    return Curves(jnp.full((checks,), jnp.nan, jnp.float32), jnp.full((checks,), jnp.nan, jnp.float32))


def record(curves: Curves, step, every: int, measure) -> Curves:
    """`curves` with the accuracies of `measure() -> (train_acc, test_acc)` at check (step + 1) / every - 1 when
    step + 1 (the steps done, `step` 0-based) is a multiple of `every`; unchanged otherwise (`lax.cond`: nothing
    is evaluated between checks)."""
    def write(curves):
        i = (step + 1) // every - 1
        train_acc, test_acc = measure()
        return Curves(curves.train_acc.at[i].set(train_acc.astype(jnp.float32)),
                      curves.test_acc.at[i].set(test_acc.astype(jnp.float32)))

    return jax.lax.cond((step + 1) % every == 0, write, lambda c: c, curves)


def steps_to_threshold(curve, every: int, budget: int, threshold: float) -> np.ndarray:
    """The first checked step ((c + 1) x every) at which `curve` (..., C) is >= `threshold`, else `budget`:
    (...,) int."""
    curve = np.asarray(curve, float)
    reached = curve >= threshold
    first = np.argmax(reached, axis=-1)
    return np.where(reached.any(-1), (first + 1) * every, budget).astype(np.int64)
