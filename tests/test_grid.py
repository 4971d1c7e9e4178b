import numpy as np

from lljax import grid


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
        assert {members[i].static for i in g.members} == {(g.width, g.batch_size, None)}
        assert len(g.members) == 2 * 2 * 3


def test_each_loss_is_a_group_and_sam_radii_share_one():
    members = grid.grid_members({**knobs(width=(4, 8)), "loss": ("cross_entropy", "focal"),
                                 "sam_rho": (0.0, 0.1)}, seeds=2)
    groups = grid.group_members(members)
    assert [(g.width, g.loss) for g in groups] == [(4, "cross_entropy"), (4, "focal"), (8, "cross_entropy"),
                                                   (8, "focal")]
    for g in groups:
        assert {members[i].sam_rho for i in g.members} == {0.0, 0.1} and len(g.members) == 4
    assert len({m.point for m in members}) == 8  # the radius and the loss are part of the grid point
    assert grid.knob_row(members[0])["loss"] == "cross_entropy" and "loss" not in grid.knob_row(
        grid.grid_members(knobs(), seeds=1)[0])


def test_pairs_stay_within_grid_points():
    members = grid.grid_members(knobs(lr=(0.1, 0.2)), seeds=3)
    pairs = grid.pairs_within_points(members, range(len(members)))
    assert len(pairs) == 2 * 3
    assert all(members[a].point == members[b].point and members[a].seed < members[b].seed for a, b in pairs)
    assert len(grid.pairs_within_points(members, range(len(members)), max_pairs=1)) == 2


def test_streams_are_named_and_keys_reproducible():
    import jax
    key = jax.random.key(0)
    a, b = grid.stream(key, "dropout"), grid.stream(key, "dropout")
    assert np.array_equal(jax.random.key_data(a), jax.random.key_data(b))
    assert not np.array_equal(jax.random.key_data(a), jax.random.key_data(grid.stream(key, "probe")))
    assert grid.stream_index("view") == 2**31 - 1  # the shared training view's stream, as before streams had names
    assert np.array_equal(jax.random.key_data(grid.group_key(0, 3)),
                          jax.random.key_data(jax.random.fold_in(jax.random.key(0), 10_003)))
