"""lljax.metrics: the registry, and every registered family vmapped over a group == a Python loop of single
calls of its function for one model (pair), in float64, deterministic, on a model with LayerNorm and Dropout
(where jax 0.10.2's vmap(lax.map) HVP defect shows); a family defined here runs through the whole pipeline."""
import csv
import dataclasses

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from lljax import grid, metrics, options, pipeline
from lljax.config import Config
from lljax.errors import LLJaxError
from lljax.metrics import Heatmap
from test_families import assert_group_equals_a_loop, float64_group
from test_pipeline import tiny_dataset


class LNDropoutCNN(nn.Module):
    """A 1-D conv net with LayerNorm and Dropout, no BatchNorm."""

    width: int
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.width, (3,))(x[..., None])
        x = nn.relu(nn.LayerNorm()(x)).reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.width)(x))  # a weight matrix with enough eigenvalues for the spectra family
        x = nn.Dropout(0.2, deterministic=not train)(x)
        self.sow("intermediates", "features", x)  # for the collapse family
        return nn.Dense(self.num_classes)(x)


def ln_cnn(width, num_classes):
    return LNDropoutCNN(width, num_classes)


FAMILY_CONFIG = dict(widths=(12,), lrs=(0.05, 0.2), batch_sizes=(32,), seeds=2, epochs=3, hessian_samples=40,
                     hessian_top_k=2, hessian_lanczos_steps=6, hessian_density_runs=2, hessian_density_steps=5,
                     curve_epochs=2, curve_points=3, cka_samples=24, data_fractions=(0.5, 1.0), hessian_per_layer=True,
                     spectra_bootstrap=4, slice_points=5, slice_grid=3, slice_directions=2, slice_recompute_bn=True,
                     surface_epochs=1, surface_grid=3)


def train_first_group(**overrides):
    config = Config.from_dict({**FAMILY_CONFIG, **overrides})
    members = grid.grid_members(config.knob_values(), config.seeds)
    group = grid.group_members(members)[0]
    parts = pipeline.resolve_parts(config, model=ln_cnn)
    return pipeline.train_group(config, tiny_dataset(), group, members, None, parts=parts)


@pytest.fixture(scope="module")
def trained_group():
    return train_first_group()


@pytest.fixture(scope="module")
def four_seed_group():
    """For the quad families: four seeds at each of two grid points (one data fraction)."""
    return train_first_group(seeds=4, data_fractions=(1.0,), epochs=2)


@pytest.mark.parametrize("name", list(metrics.FAMILIES))
def test_family_vmapped_equals_a_loop_of_single_calls(request, name):
    family = metrics.get(name)
    trained_group = request.getfixturevalue("four_seed_group" if family.kind == "quad" else "trained_group")
    with jax.enable_x64(True):
        g = float64_group(trained_group)
        together = assert_group_equals_a_loop(family, g)
        within = {"member": None, "pair": grid.pairs_within_points, "quad": grid.quads_within_points}[family.kind]
        tuples = None if within is None else np.asarray(within(g.members, range(len(g.members))), np.int32)
        assert tuples is None or len(tuples) >= 2
        again = pipeline.measure_family(family, g, tuples)
        for k in together:  # deterministic under the same seed
            np.testing.assert_array_equal(together[k], again[k], err_msg=k)


def test_the_subset_sizes_split_pairs_into_programs(trained_group):
    """Two data fractions: the curves family runs one static subset size per fraction."""
    sizes = sorted(set(np.asarray(trained_group.member.view.size).tolist()))
    assert sizes == [64, 128]


# ------------------------------------------------------------------------------------------ a new family

def param_norm(ctx, shared, member, key):
    """The global L2 norm of one member's parameters."""
    return {"param_norm": optax.tree.norm(member.params)}


@dataclasses.dataclass(frozen=True)
class NormOptions:
    scale: float = options.option(1.0, "multiplies the norm", low=0, low_open=True)


def scaled_norm(ctx, shared, a, b, key):
    return {"norm_ratio": ctx.options.scale * optax.tree.norm(a.params) / optax.tree.norm(b.params)}


@pytest.fixture
def new_families():
    added = [metrics.Family("param_norm", "member", param_norm, columns=("param_norm",),
                            heatmaps=(Heatmap("param_norm", "parameter norm"),), correlated=("param_norm",),
                            default=False),
             metrics.Family("norm_ratio", "pair", scaled_norm, options=NormOptions, columns=("norm_ratio",),
                            correlated=("norm_ratio",), default=False)]
    for family in added:
        metrics.register(family)
    yield added
    for family in added:
        metrics.FAMILIES.pop(family.name)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_a_family_defined_here_lands_in_tables_figures_and_report(tmp_path, new_families):
    from lljax import cli

    out = tmp_path / "run"
    config = Config.from_dict(dict(widths=(3, 6), lrs=(0.05, 0.2), batch_sizes=(32,), seeds=2, epochs=3,
                                   metrics=("loss", "param_norm", "norm_ratio"), norm_ratio_scale=2.0))
    results = pipeline.run(config, out, progress=False, dataset=tiny_dataset())
    members, pairs = read_csv(out / "members.csv"), read_csv(out / "pairs.csv")
    norms = np.concatenate([arrays["member/param_norm"] for arrays in results.group_metrics])
    np.testing.assert_allclose([float(r["param_norm"]) for r in members], norms, rtol=1e-6)
    assert all(float(r["norm_ratio"]) > 0 for r in pairs)
    assert (out / "figures" / "param_norm.png").exists()
    report = (out / "report.md").read_text()
    assert "| param_norm | all |" in report and "| norm_ratio | all |" in report
    assert '"norm_ratio": {\n    "scale": 2.0' in (out / "config.json").read_text()
    # its options got a flag of their own
    args = cli.parser("x", {}).parse_args(["--out", "o", "--norm-ratio-scale", "3"])
    assert cli.config_from_args(args, {}).options("norm_ratio").scale == 3.0


def test_registry_refuses_bad_families():
    with pytest.raises(LLJaxError, match="already registered"):
        metrics.register(dataclasses.replace(metrics.get("l2")))
    with pytest.raises(LLJaxError, match="kind must be 'member', 'pair' or 'quad'"):
        metrics.Family("x", "grid", param_norm)
    with pytest.raises(LLJaxError, match="identifier"):
        metrics.Family("my-family", "member", param_norm)
    with pytest.raises(LLJaxError, match="unknown metric 'nope'"):
        metrics.get("nope")


def test_a_declared_column_the_function_does_not_return_is_named(trained_group, new_families):
    broken = dataclasses.replace(new_families[0], columns=("param_norm", "missing_column"))
    pairs = np.zeros((0, 2), np.int32)
    with pytest.raises(LLJaxError, match="declares column.*missing_column"):
        pipeline.measure_family(broken, trained_group, pairs)


def test_family_streams_come_from_names_and_the_builtins_keep_theirs():
    assert [grid.stream_index(n) for n in ("cka", "hessian", "curves")] == [1, 2, 3]
    assert grid.stream_index("param_norm") == grid.stream_index("param_norm") != grid.stream_index("norm_ratio")
