"""lljax.shards: the shard argument and the balanced, deterministic assignment of groups to shards."""
import pytest

from lljax import shards
from lljax.errors import LLJaxError


def test_assignment_balances_cost_and_is_deterministic():
    costs = [10, 1, 1, 1, 7, 3, 3, 2]
    assigned = shards.assign(costs, 3)
    assert sorted(g for s in assigned for g in s) == list(range(8)) and assigned == shards.assign(costs, 3)
    loads = [sum(costs[g] for g in s) for s in assigned]
    assert max(loads) - min(loads) <= 2  # LPT: 10 | 7+2 | 3+3+1+1+1
    assert shards.assign([1, 1], 4)[2:] == [[], []]
    assert shards.parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "x", "1/0", "-1/3"):
        with pytest.raises(LLJaxError, match="--shard"):
            shards.parse_shard(bad)
