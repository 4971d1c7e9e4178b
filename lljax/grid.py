"""The grid: knobs -> members -> groups of equal static shapes -> pairs; and the named random streams.

A grid is the cartesian product of knob values x seeds. Knobs split into *static* ones, which change array
shapes or the program (model, width, batch size), and *dynamic* ones, which are per-member scalars (lr, weight
decay, momentum, data fraction, label noise, seed). Members sharing every static knob form one `Group` and
train in one vmapped program, so a grid compiles into the fewest programs.

Random streams are derived from names (`stream`): a member's key from the run's seed and its seed index, a
group's key from the run's seed and the group, and every metric family's key from the group key and the
family's name, so a new family never needs a hand-picked integer.
"""
from __future__ import annotations

import dataclasses
import itertools
import zlib
from typing import Sequence

import jax

# Knobs of a grid point, in the order they appear in tables. 'Load-like' knobs make the task harder relative to
# the model (the paper's x axis); 'temperature-like' knobs set the noise scale of SGD (its y axis).
LOAD_KNOBS = ("width", "data_fraction", "label_noise")
TEMPERATURE_KNOBS = ("batch_size", "lr", "weight_decay", "momentum")
KNOBS = LOAD_KNOBS + TEMPERATURE_KNOBS
# Training-recipe knobs, present only in a run that sweeps them or sets them away from plain training (the loss
# by `--losses`, the SAM radius by `--sam-rho`): elsewhere a member's value is None and tables leave the column out,
# so runs without them write the tables they always wrote. The SAM radius is temperature-like (a flatness
# strength, like weight decay); the loss is categorical (a static knob: each loss its own program).
RECIPE_KNOBS = ("loss", "sam_rho")
ALL_KNOBS = KNOBS + RECIPE_KNOBS
STATIC_KNOBS = ("width", "batch_size", "loss")


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
    loss: str | None = None  # None: the run's one loss, not a knob
    sam_rho: float | None = None  # None: no SAM in the run

    @property
    def point(self) -> tuple:
        """The grid point: every knob except the seed."""
        return tuple(getattr(self, k) for k in ALL_KNOBS)

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
    loss: str | None = None  # the group's loss when the loss is a knob


def knobs_of(knob_values: dict[str, Sequence]) -> tuple[str, ...]:
    """The knobs of a run, in table order: `KNOBS` and the recipe knobs it has (`RECIPE_KNOBS`)."""
    return KNOBS + tuple(k for k in RECIPE_KNOBS if k in knob_values)


def swept(knob_values: dict[str, Sequence]) -> list[str]:
    """The knobs with more than one value, in table order."""
    return [k for k in knobs_of(knob_values) if len(knob_values[k]) > 1]


def knob_row(member: MemberConfig) -> dict:
    """A member's knobs as a table row's first columns: `KNOBS` and the recipe knobs it has (not None)."""
    row = {k: getattr(member, k) for k in KNOBS}
    row.update({k: getattr(member, k) for k in RECIPE_KNOBS if getattr(member, k) is not None})
    return row


def point_key(row: dict) -> tuple:
    """The grid point of a table row (recipe knobs it lacks as None, as `MemberConfig.point`)."""
    return tuple(row.get(k) for k in ALL_KNOBS)


def format_value(value) -> str:
    """A knob's value for labels: floats as %g, the rest (a loss's name) as they are."""
    return f"{value:g}" if isinstance(value, (float, int)) and not isinstance(value, bool) else str(value)


def grid_members(knobs: dict[str, Sequence], seeds: int) -> list[MemberConfig]:
    """The cartesian product of knob values (every name in KNOBS, and the recipe knobs `knobs` has) x seed indices
    0..seeds-1."""
    names = knobs_of(knobs)
    values = [list(knobs[k]) for k in names]
    return [MemberConfig(**dict(zip(names, point)), seed=s)
            for point in itertools.product(*values) for s in range(seeds)]


def group_members(members: Sequence[MemberConfig]) -> list[Group]:
    """Split members into the fewest groups of identical static knobs, in order of first appearance."""
    by_static: dict[tuple, list[int]] = {}
    for i, m in enumerate(members):
        by_static.setdefault(m.static, []).append(i)
    return [Group(g, **dict(zip(STATIC_KNOBS, static)), members=tuple(idx))
            for g, (static, idx) in enumerate(by_static.items())]


def _by_point(members: Sequence[MemberConfig], indices: Sequence[int]) -> list[list[int]]:
    by_point: dict[tuple, list[int]] = {}
    for i in indices:
        by_point.setdefault(members[i].point, []).append(i)
    return list(by_point.values())


def pairs_within_points(members: Sequence[MemberConfig], indices: Sequence[int], max_pairs: int | None = None
                        ) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, of members at the same grid point; at most `max_pairs` per point (first by seed)."""
    pairs = []
    for idx in _by_point(members, indices):
        point_pairs = list(itertools.combinations(sorted(idx, key=lambda i: members[i].seed), 2))
        pairs += point_pairs[:max_pairs] if max_pairs else point_pairs
    return pairs


def quads_within_points(members: Sequence[MemberConfig], indices: Sequence[int]) -> list[tuple[int, ...]]:
    """The first four seeds (i, j, k, l) of every grid point that has at least four: the corners of its surface."""
    return [tuple(sorted(idx, key=lambda i: members[i].seed)[:4]) for idx in _by_point(members, indices)
            if len(idx) >= 4]


# ---------------------------------------------------------------------------------------------- streams

# fold_in indices of the streams that existed before streams were named; kept so their numbers do not change
LEGACY_STREAMS = {"cka": 1, "hessian": 2, "curves": 3, "view": 2**31 - 1}


def stream_index(name: str) -> int:
    """The fold_in index of a named stream: a 31-bit hash of the name (CRC-32), or its legacy index."""
    return LEGACY_STREAMS.get(name, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def stream(key: jax.Array, name: str) -> jax.Array:
    """The key of the stream `name` under `key`."""
    return jax.random.fold_in(key, stream_index(name))


def member_key(base_seed: int, seed_index) -> jax.Array:
    """The key of seed index s: the same at every grid point, so points differ only by their knobs."""
    return jax.random.fold_in(jax.random.key(base_seed), seed_index)


def group_key(base_seed: int, group_index: int) -> jax.Array:
    """The key of a group's metric families."""
    return jax.random.fold_in(jax.random.key(base_seed), 10_000 + group_index)
