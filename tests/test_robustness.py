"""Tests of lljax.robustness and the 'robust' / 'robust_curves' families: PGD against the closed-form worst
perturbation of a linear classifier (L-infinity, L2, inside a box), the per-example input-Hessian eigenvalue
against dense `jax.hessian` + eigh in float64, vmapped over members == a loop, the families' group programs == a
loop, bad options as one-line errors, and (slow) a small study run end to end."""
import csv

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lljax import cli, data, grid, metrics, pipeline, robustness
from lljax.config import Config
from lljax.errors import LLJaxError
from lljax.metrics import robust


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def linear_problem(key, n=7, d=9, classes=2):
    kw, kb, kx = jax.random.split(key, 3)
    w = jax.random.normal(kw, (d, classes), jnp.float64)
    b = jax.random.normal(kb, (classes,), jnp.float64)
    x = jax.random.normal(kx, (n, d), jnp.float64)
    logits = lambda v: v @ w + b
    y = jnp.argmax(logits(x), -1)
    return w, b, x, y, logits


def margins(logits, x, y):
    z = logits(x)
    return jnp.take_along_axis(z, y[:, None], 1)[:, 0] - jnp.take_along_axis(z, 1 - y[:, None], 1)[:, 0]


@pytest.mark.parametrize("random_start", [False, True])
def test_linf_pgd_finds_the_closed_form_worst_perturbation_of_a_linear_classifier(random_start, x64):
    # Two classes: the cross-entropy falls with the margin (w_y - w_k) . x + b_y - b_k, so the worst L-infinity
    # perturbation moves every coordinate by epsilon against sign(w_y - w_k): the margin falls by
    # epsilon ||w_y - w_k||_1. From a random start 2 epsilon away at most, 10 steps of epsilon/4 reach it.
    w, b, x, y, logits = linear_problem(jax.random.key(0))
    eps = 0.3
    adv = robustness.pgd_attack(logits, x, y, epsilon=eps, steps=10, step_size=eps / 4,
                                key=jax.random.key(1) if random_start else None)
    diff = (w[:, 1] - w[:, 0])[None] * jnp.where(y == 1, 1, -1)[:, None]  # w_y - w_other per example
    expected = margins(logits, x, y) - eps * jnp.abs(diff).sum(1)
    np.testing.assert_allclose(margins(logits, adv, y), expected, rtol=1e-12, atol=1e-12)
    assert float(jnp.max(jnp.abs(adv - x))) <= eps + 1e-15


def test_linf_pgd_in_a_box_matches_the_closed_form(x64):
    # With a box [lo, hi], coordinate i moves against sign(diff_i) as far as both the ball and the box allow.
    w, b, x, y, logits = linear_problem(jax.random.key(2))
    eps, lo, hi = 0.5, -0.6, 0.8
    x = jnp.clip(x, lo, hi)
    y = jnp.argmax(logits(x), -1)
    adv = robustness.pgd_attack(logits, x, y, epsilon=eps, steps=12, step_size=eps / 4, key=jax.random.key(3),
                                clip=(lo, hi))
    diff = (w[:, 1] - w[:, 0])[None] * jnp.where(y == 1, 1, -1)[:, None]
    room = jnp.where(diff > 0, jnp.minimum(eps, x - lo), jnp.minimum(eps, hi - x))
    expected = margins(logits, x, y) - jnp.sum(jnp.abs(diff) * room, 1)
    np.testing.assert_allclose(margins(logits, adv, y), expected, rtol=1e-12, atol=1e-12)
    assert float(adv.min()) >= lo and float(adv.max()) <= hi


def test_l2_pgd_and_fgsm_match_closed_forms(x64):
    # L2: the worst perturbation is epsilon along -(w_y - w_k)/||.||_2: the margin falls by epsilon ||w_y - w_k||_2;
    # without a random start every step moves along that direction and the projection stops it on the sphere.
    w, b, x, y, logits = linear_problem(jax.random.key(4))
    eps = 0.7
    adv = robustness.pgd_attack(logits, x, y, epsilon=eps, steps=5, step_size=0.3, norm="l2")
    diff = (w[:, 1] - w[:, 0])[None] * jnp.where(y == 1, 1, -1)[:, None]
    np.testing.assert_allclose(margins(logits, adv, y), margins(logits, x, y) - eps * jnp.linalg.norm(diff, axis=1),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(jnp.linalg.norm(adv - x, axis=1), eps, rtol=1e-12)
    # FGSM: one step of epsilon along the gradient's sign, no random start
    fgsm = robustness.pgd_attack(logits, x, y, epsilon=eps, steps=1, step_size=eps)
    g = jax.grad(lambda v: jnp.sum(robustness.losses.cross_entropy.per_example(logits(v), y)))(x)
    np.testing.assert_array_equal(fgsm, x + eps * jnp.sign(g))


class Tanh(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(4)(jnp.tanh(nn.Dense(6)(x)))


def test_input_hessian_top_eig_matches_dense_hessian_and_vmap_equals_loop(x64):
    model = Tanh()
    x = jax.random.normal(jax.random.key(5), (5, 7), jnp.float64)
    y = jnp.arange(5) % 4
    params = [jax.tree.map(lambda a: a.astype(jnp.float64), model.init(jax.random.key(s), x)) for s in (6, 7, 8)]

    @jax.jit
    def eigs(p, key):
        logits = lambda v: model.apply(p, v)
        return robustness.input_hessian_top_eig(logits, x, y, key=key, num_steps=7)  # 7 = the input size: exact

    loss_i = lambda p, v, yi: robustness.losses.cross_entropy.per_example(model.apply(p, v[None]), yi[None])[0]
    dense_top = jax.jit(jax.vmap(lambda p, v, yi: jnp.linalg.eigvalsh(jax.hessian(loss_i, 1)(p, v, yi))[-1],
                                 in_axes=(None, 0, 0)))
    for p in params[:2]:
        np.testing.assert_allclose(eigs(p, jax.random.key(9)), dense_top(p, x, y), rtol=1e-9, atol=1e-12)
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *params)
    keys = jax.random.split(jax.random.key(10), 3)
    together = jax.jit(jax.vmap(eigs))(stacked, keys)
    for i, p in enumerate(params):
        np.testing.assert_allclose(together[i], eigs(p, keys[i]), rtol=1e-12, atol=1e-12)


def test_pgd_vmapped_over_members_equals_a_loop(x64):
    model = Tanh()
    x = jax.random.normal(jax.random.key(11), (6, 7), jnp.float64)
    y = jnp.arange(6) % 4
    params = [jax.tree.map(lambda a: a.astype(jnp.float64), model.init(jax.random.key(s), x)) for s in (1, 2, 3)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *params)
    keys = jax.random.split(jax.random.key(12), 3)
    for norm in robustness.NORMS:
        attack = lambda p, k: robustness.pgd_attack(lambda v: model.apply(p, v), x, y, epsilon=0.2, steps=3,
                                                    step_size=0.07, norm=norm, key=k)
        together = jax.jit(jax.vmap(attack))(stacked, keys)
        for i, p in enumerate(params):
            np.testing.assert_allclose(together[i], attack(p, keys[i]), rtol=1e-12, atol=1e-12)


def test_ranks_and_correlations_match_scipy(x64):
    from scipy import stats

    a = jnp.asarray([0.3, 0.1, 0.3, 0.9, -0.2, 0.1], jnp.float64)
    b = jnp.asarray([1.0, 2.0, 0.5, 3.0, 0.0, 2.0], jnp.float64)
    np.testing.assert_allclose(robust.ranks(a), stats.rankdata(np.asarray(a)) - 1)
    np.testing.assert_allclose(robust.pearson(a, b), stats.pearsonr(a, b)[0], rtol=1e-12)
    np.testing.assert_allclose(robust.spearman(a, b), stats.spearmanr(a, b)[0], rtol=1e-12)


# ------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("flags, message", [
    (["--robust-epsilon", "-0.1"], "robust epsilon must be at least 0"),
    (["--robust-norm", "l3"], "invalid choice: 'l3'"),
    (["--robust-steps", "0"], "robust steps must be a positive integer"),
    (["--robust-samples", "0"], "robust samples must be a positive integer"),
    (["--robust-step-size", "-1"], "robust step size must be at least 0"),
    (["--robust-clip", "box"], "invalid choice: 'box'"),
])
def test_bad_options_are_one_line_errors_before_anything_is_written(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    try:
        code = cli.main(["--metrics", "robust", "--out", str(out), *flags])
    except SystemExit as e:  # argparse's choices
        code = e.code
    err = capsys.readouterr().err
    assert code != 0 and message in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_bad_attack_arguments_are_one_line_errors():
    x, y = jnp.zeros((2, 3)), jnp.zeros(2, int)
    f = lambda v: v
    with pytest.raises(LLJaxError, match="unknown attack norm"):
        robustness.pgd_attack(f, x, y, epsilon=0.1, steps=2, step_size=0.1, norm="l1")
    with pytest.raises(LLJaxError, match="positive integer"):
        robustness.pgd_attack(f, x, y, epsilon=0.1, steps=0, step_size=0.1)
    with pytest.raises(LLJaxError, match="float inputs"):
        robustness.pgd_attack(f, jnp.zeros((2, 3), jnp.int32), y, epsilon=0.1, steps=1, step_size=0.1)
    for bad, match in ((dict(epsilon=-1.0), "epsilon must be non-negative"), (dict(norm="x"), "unknown attack norm"),
                       (dict(steps=0), "positive integer")):
        args = {**dict(epsilon=0.1, steps=1, step_size=0.1, norm="linf"), **bad}
        with pytest.raises(LLJaxError, match=match):
            robustness.check_attack(**args)


def test_companion_family_cannot_be_asked_for_alone_and_comes_with_both():
    with pytest.raises(LLJaxError, match="computed when curves and robust"):
        from lljax import config as configs
        configs.validate(Config(metrics=("robust_curves",)))
    assert "robust_curves" in Config(metrics=("robust", "curves")).metric_names
    assert "robust_curves" not in Config(metrics=("robust",)).metric_names
    assert "robust" not in Config().metric_names  # off by default: nothing changes for existing runs
    assert "robust_curves" not in Config().to_dict()


# ------------------------------------------------------------------------------------------- families

def tiny_group():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 10)).astype(np.float32)
    y = (x[:, :2] > 0).sum(1).astype(np.int32)
    dataset = data.Dataset.from_arrays("tiny", x[:32], y[:32], x[32:], y[32:])
    config = Config.from_dict(dict(model="mlp", widths=(8,), batch_sizes=(16,), lrs=(0.05,), seeds=2, epochs=2,
                                   metrics=("robust", "curves"), curve_epochs=1, curve_points=3, curve_batch_size=8,
                                   robust_samples=6, robust_steps=3, robust_hessian_steps=4))
    members = grid.grid_members(config.knob_values(), config.seeds)
    return pipeline.train_group(config, dataset, grid.group_members(members)[0], members, None)


def test_families_group_programs_equal_a_loop_and_reuse_the_fitted_curve():
    from test_families import assert_group_equals_a_loop, float64_group

    g = tiny_group()
    with jax.enable_x64(True):
        g = float64_group(g)
        out = {name: assert_group_equals_a_loop(metrics.get(name), g) for name in ("robust", "robust_curves")}
        pairs = np.asarray(grid.pairs_within_points(g.members, range(len(g.members))), np.int32)
    r, c = out["robust"], out["robust_curves"]
    assert np.all((0 <= r["robust_acc"]) & (r["robust_acc"] <= 1))
    assert np.all(r["input_hessian_top_eig_max"] >= r["input_hessian_top_eig"])
    np.testing.assert_allclose(c["mc_robust"], metrics_mc(c["robust_curve_adv_err"]))
    # t = 0 is member a itself: the clean error there is member a's on the attacked examples (BatchNorm-free MLP)
    assert c["robust_curve_clean_err"].shape == (len(pairs), 3)
    a = pairs[:, 0]
    x, y = g.dataset.x_test[:6], g.dataset.y_test[:6]
    params = jax.tree.map(lambda leaf: leaf[a[0]], g.state.params)
    z = pipeline.models.apply(g.spec.model, params, jax.tree.map(lambda leaf: leaf[a[0]], g.state.batch_stats), x)[0]
    np.testing.assert_allclose(c["robust_curve_clean_err"][0, 0], np.mean(np.argmax(z, -1) != y))
    # an attack never helps: adversarial loss >= clean loss along the whole curve
    assert np.all(c["robust_curve_adv_loss"] >= c["robust_curve_clean_loss"] - 1e-12)


def metrics_mc(values):
    from lljax import curves
    return np.asarray(curves.mode_connectivity(jnp.asarray(values)))


@pytest.mark.slow
def test_a_small_study_writes_robust_columns_figures_and_correlations(tmp_path):
    out = tmp_path / "run"
    code = cli.main(["--widths", "4", "16", "--lrs", "0.05", "--seeds", "2", "--epochs", "3", "--metrics", "robust",
                     "curves", "--curve-epochs", "1", "--curve-points", "3", "--robust-samples", "16",
                     "--robust-steps", "2", "--robust-hessian-steps", "3", "--out", str(out), "--no-progress"])
    assert code == 0
    members = list(csv.DictReader(open(out / "members.csv")))
    pairs = list(csv.DictReader(open(out / "pairs.csv")))
    assert {"robust_acc", "robust_loss", "input_hessian_top_eig", "input_hessian_top_eig_max"} <= set(members[0])
    assert {"mc_robust", "robust_eig_pearson", "robust_eig_spearman"} <= set(pairs[0])
    assert (out / "robust_curves.csv").is_file()
    assert list((out / "figures").glob("robust_along_t*.png"))
    assert "| robust_acc | all" in (out / "report.md").read_text()  # in the correlation table
