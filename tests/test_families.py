"""Every registered metric family (member, pair and quad kinds) on every built-in model: the MLP, the CNN on 1-D
signals and on 2-D images, ResNet18 (on 1-D signals), and the Transformer on tokens with one label per example
and with per-token targets; and on a Flax NNX and an Equinox model with BatchNorm and Dropout. Each family's group
program (vmapped over members, pairs or quads) runs and gives finite values, and on three of the models (`LOOPED`)
equals a Python loop of single calls of its function for one model, in float64, at tiny sizes (optax's habit: one
generic test over the whole family).
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lljax import data, grid, metrics, pipeline, tasks
from lljax.config import Config
from lljax.metrics import Member, Shared

TINY = dict(lrs=(0.05,), seeds=4, epochs=1, max_pairs=2, hessian_samples=16, hessian_top_k=2,
            hessian_lanczos_steps=4, hessian_density_runs=1, hessian_density_steps=3, hessian_trace_method="hutchinson",
            hessian_trace_probes=2, curve_epochs=1, curve_points=3, curve_batch_size=8, cka_samples=12,
            spectra_bootstrap=0, spectra_min_evals=4, slice_samples=16, slice_points=3, slice_grid=2,
            slice_directions=1, surface_epochs=1, surface_grid=2, surface_batch_size=8, robust_samples=8,
            robust_steps=2, robust_hessian_steps=3)


def images(shape):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, *shape)).astype(np.float32)
    y = (x.reshape(48, -1)[:, :2] > 0).sum(1).astype(np.int32)
    return data.Dataset.from_arrays("tiny", x[:32], y[:32], x[32:], y[32:])


def task(name, **options):
    return data.Dataset.from_arrays(name, **tasks.generate(name, tasks.TaskOptions(**options)))


CASES = {  # name -> (model, width, batch size, dataset)
    "mlp": ("mlp", 12, 16, lambda: images((12,))),
    "cnn-1d": ("cnn", 6, 16, lambda: images((12,))),
    "cnn-2d": ("cnn", 6, 16, lambda: images((8, 8, 2))),
    "resnet18": ("resnet18", 4, 16, lambda: images((8,))),  # 1-D: its 2-D kernels (cnn-2d's) cost twice the time
    "transformer": ("transformer", 16, 8, lambda: task("modular", p=5, test_fraction=0.4)),
    "transformer-per-token": ("transformer", 16, 8,
                              lambda: task("counter", modulus=5, length=4, train_size=24, test_size=8)),
    # Flax NNX and Equinox models (lljax.adapters), BatchNorm and Dropout in both (defined in test_adapters.py)
    "nnx-batchnorm-dropout": ("test_adapters:nnx_bn_dropout", 12, 16, lambda: images((12,))),
    "equinox-batchnorm-dropout": ("test_adapters:eqx_bn_dropout", 12, 16, lambda: images((12,))),
}


# The group program against a loop of single calls on these (the vmapping does not depend on the layers: an MLP,
# BatchNorm and Dropout through an adapter, tokens with masked per-token targets); on the others the group program
# runs and gives finite values (a loop would compile every family twice)
LOOPED = ("mlp", "nnx-batchnorm-dropout", "transformer-per-token")


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    model, width, batch, make = CASES[request.param]
    dataset = make()
    config = Config.from_dict({**TINY, "model": model, "widths": (width,), "batch_sizes": (batch,)})
    members = grid.grid_members(config.knob_values(), config.seeds)
    g = pipeline.train_group(config, dataset, grid.group_members(members)[0], members, None)
    return request.param, g


def to64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64) if np.issubdtype(np.asarray(a).dtype, np.floating)
                        else a, tree)


def float64_group(g):
    ds = g.dataset
    floats = (lambda a: a.astype(np.float64)) if not ds.is_tokens else (lambda a: a)
    return dataclasses.replace(g, state=g.state._replace(params=to64(g.state.params),
                                                         batch_stats=to64(g.state.batch_stats)),
                               dataset=ds._replace(x_train=floats(ds.x_train), x_test=floats(ds.x_test)))


def measure_group(family, g):
    """The family's group program on every member (pair, quad) of the group: (its results, the tuples)."""
    within = {"member": None, "pair": grid.pairs_within_points, "quad": grid.quads_within_points}[family.kind]
    tuples = None if within is None else np.asarray(within(g.members, range(len(g.members))), np.int32)
    together = pipeline.measure_family(family, g, tuples)
    assert set(family.column_names(pipeline.family_context(family, g))) <= set(together)
    return together, tuples


def assert_group_equals_a_loop(family, g):
    """The family's group program == its function for one member (pair, quad) in a Python loop."""
    together, tuples = measure_group(family, g)
    ctx = pipeline.family_context(family, g)
    key = grid.stream(g.key, family.stream_name)
    shared = Shared(jnp.asarray(g.dataset.x_train), jnp.asarray(g.dataset.x_test), jnp.asarray(g.dataset.y_test))
    if family.prepare:
        shared = shared._replace(extra=family.prepare(ctx, shared, key))
    s = g.state
    member = Member(s.params, s.batch_stats, g.member.view, g.member.hyper, np.asarray(s.diverged))
    one = lambda i: jax.tree.map(lambda leaf: leaf[i], member)
    inputs = [(one(i),) for i in range(len(g.members))] if tuples is None else [tuple(map(one, t)) for t in tuples]
    keys = jax.random.split(key, len(inputs))
    single = jax.jit(family.compute, static_argnums=0)
    for i, args in enumerate(inputs):
        c = dataclasses.replace(ctx, subset_size=int(args[0].view.size)) if family.static_subset else ctx
        for k, v in single(c, shared, *args, keys[i]).items():
            np.testing.assert_allclose(together[k][i], v, rtol=1e-7, atol=1e-9, err_msg=f"{family.name} {k} {i}")
    return together


@pytest.mark.slow
@pytest.mark.parametrize("name", list(metrics.FAMILIES))
def test_every_family_on_every_builtin_model(case, name):
    label, g = case
    family = metrics.get(name)
    with jax.enable_x64(True):
        g = float64_group(g)
        together = assert_group_equals_a_loop(family, g) if label in LOOPED else measure_group(family, g)[0]
    for column in family.column_names(pipeline.family_context(family, g)):
        values = np.asarray(together[column], np.float64)
        if not (name == "spectra" and label == "resnet18"):  # width 4: every layer below 4 eigenvalues is skipped
            assert np.all(np.isfinite(values)), f"{label}: {name} {column} = {values}"
