"""The ensemble axis: members of a grid, their grouping into shape-compatible ensembles, stacking.

A grid is the cartesian product of knob values x seeds. Knobs split into *static* ones, which change array
shapes or the program (model, width, batch size), and *dynamic* ones, which are per-member scalars (lr, weight
decay, momentum, data fraction, label noise, seed). Members sharing every static knob form one `Group` and
train in one vmapped program, so a grid compiles into the fewest programs.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Knobs of a grid point, in the order they appear in tables. 'Load-like' knobs make the task harder relative to
# the model (the paper's x axis); 'temperature-like' knobs set the noise scale of SGD (its y axis).
LOAD_KNOBS = ("width", "data_fraction", "label_noise")
TEMPERATURE_KNOBS = ("batch_size", "lr", "weight_decay", "momentum")
KNOBS = LOAD_KNOBS + TEMPERATURE_KNOBS
STATIC_KNOBS = ("width", "batch_size")


@dataclasses.dataclass(frozen=True)
class MemberConfig:
    """One trained model: the grid point (every knob) and the seed index."""

    width: int
    batch_size: int
    lr: float
    weight_decay: float
    momentum: float
    data_fraction: float
    label_noise: float
    seed: int

    @property
    def point(self) -> tuple:
        """The grid point: every knob except the seed."""
        return tuple(getattr(self, k) for k in KNOBS)

    @property
    def static(self) -> tuple:
        return tuple(getattr(self, k) for k in STATIC_KNOBS)


@dataclasses.dataclass(frozen=True)
class Group:
    """Members sharing static shapes: one compiled program. `members` indexes the grid's member list."""

    index: int
    width: int
    batch_size: int
    members: tuple[int, ...]


def grid_members(knobs: dict[str, Sequence], seeds: int) -> list[MemberConfig]:
    """The cartesian product of knob values (every name in KNOBS) x seed indices 0..seeds-1."""
    values = [list(knobs[k]) for k in KNOBS]
    return [MemberConfig(**dict(zip(KNOBS, point)), seed=s)
            for point in itertools.product(*values) for s in range(seeds)]


def group_members(members: Sequence[MemberConfig]) -> list[Group]:
    """Split members into the fewest groups of identical static knobs, in order of first appearance."""
    by_static: dict[tuple, list[int]] = {}
    for i, m in enumerate(members):
        by_static.setdefault(m.static, []).append(i)
    return [Group(g, **dict(zip(STATIC_KNOBS, static)), members=tuple(idx))
            for g, (static, idx) in enumerate(by_static.items())]


def pairs_within_points(members: Sequence[MemberConfig], indices: Sequence[int], max_pairs: int | None = None
                        ) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, of members at the same grid point; at most `max_pairs` per point (first by seed)."""
    by_point: dict[tuple, list[int]] = {}
    for i in indices:
        by_point.setdefault(members[i].point, []).append(i)
    pairs = []
    for idx in by_point.values():
        point_pairs = list(itertools.combinations(sorted(idx, key=lambda i: members[i].seed), 2))
        pairs += point_pairs[:max_pairs] if max_pairs else point_pairs
    return pairs


# ---------------------------------------------------------------------------------------------- pytrees

def stack(trees: Sequence[Any]) -> Any:
    """Stack pytrees of identical structure along a new leading member axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack(tree: Any) -> list[Any]:
    """Inverse of `stack`: a list of per-member pytrees."""
    n = num_members(tree)
    return [member(tree, i) for i in range(n)]


def member(tree: Any, i) -> Any:
    """Member i (an int or an index array) of a stacked pytree."""
    return jax.tree.map(lambda x: x[i], tree)


def num_members(tree: Any) -> int:
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError("empty pytree has no member axis")
    return int(np.shape(leaves[0])[0])
