"""Which groups a shard computes: `--shard I/N` parsed, and groups assigned to shards balanced by their
estimated cost (`pipeline.run` takes shard I's groups; `lljax.jobs` starts the shards)."""
from __future__ import annotations

from typing import Sequence

from lljax.errors import LLJaxError


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise LLJaxError(f"--shard takes I/N (shard I of N, 0 <= I < N), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise LLJaxError(f"--shard I/N needs 0 <= I < N, got {text!r}")
    return i, n


def assign(costs: Sequence[float], shards: int) -> list[list[int]]:
    """Groups (by position) per shard: longest processing time first onto the least-loaded shard (ties to the
    lower index), so the shards' total estimated costs are close; deterministic."""
    loads = [0.0] * shards
    out: list[list[int]] = [[] for _ in range(shards)]
    for g in sorted(range(len(costs)), key=lambda g: (-costs[g], g)):
        s = min(range(shards), key=lambda s: (loads[s], s))
        out[s].append(g)
        loads[s] += costs[g]
    return [sorted(groups) for groups in out]


def group_cost(members: int, params: int, epochs: int) -> float:
    """A group's estimated cost: members x parameters x epochs (an epoch's work is about the training set times
    the parameters, whatever the batch size)."""
    return float(members) * float(params) * float(epochs)
