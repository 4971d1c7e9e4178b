import jax.numpy as jnp
import numpy as np

from lljax import grid, pytrees


def knobs(**overrides):
    values = dict(width=(4,), batch_size=(16,), lr=(0.1,), weight_decay=(0.0,), momentum=(0.9,),
                  data_fraction=(1.0,), label_noise=(0.0,))
    values.update(overrides)
    return values


def test_grid_is_the_cartesian_product_times_seeds():
    members = grid.grid_members(knobs(width=(4, 8), lr=(0.1, 0.2, 0.3)), seeds=2)
    assert len(members) == 2 * 3 * 2
    expected = {(w, lr, s) for w in (4, 8) for lr in (0.1, 0.2, 0.3) for s in (0, 1)}
    assert {(m.width, m.lr, m.seed) for m in members} == expected
    assert all(m.batch_size == 16 and m.momentum == 0.9 for m in members)


def test_groups_are_the_fewest_with_identical_static_knobs():
    members = grid.grid_members(knobs(width=(4, 8), batch_size=(16, 32), lr=(0.1, 0.2),
                                          label_noise=(0.0, 0.5)), seeds=3)
    groups = grid.group_members(members)
    assert len(groups) == 4  # width x batch size; lr, label noise and seeds are vmapped
    assert sorted(i for g in groups for i in g.members) == list(range(len(members)))
    for g in groups:
        assert {members[i].static for i in g.members} == {(g.width, g.batch_size)}
        assert len(g.members) == 2 * 2 * 3


def test_pairs_stay_within_grid_points():
    members = grid.grid_members(knobs(lr=(0.1, 0.2)), seeds=3)
    pairs = grid.pairs_within_points(members, range(len(members)))
    assert len(pairs) == 2 * 3
    assert all(members[a].point == members[b].point and members[a].seed < members[b].seed for a, b in pairs)
    assert len(grid.pairs_within_points(members, range(len(members)), max_pairs=1)) == 2


def test_stack_unstack_member_roundtrip():
    trees = [{"a": jnp.full((2,), i), "b": (jnp.float32(i),)} for i in range(3)]
    stacked = pytrees.stack(trees)
    assert stacked["a"].shape == (3, 2) and pytrees.num_members(stacked) == 3
    for i, tree in enumerate(pytrees.unstack(stacked)):
        np.testing.assert_array_equal(tree["a"], trees[i]["a"])
    np.testing.assert_array_equal(pytrees.member(stacked, 1)["b"][0], 1.0)
