"""lljax.spectra against prescribed spectra, a NumPy re-creation of WeightWatcher's fit, hand-built conv kernels
and, where it is installed, WeightWatcher itself on the same weights."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lljax import spectra
from lljax.errors import LLJaxError


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def reference_fit(evals):
    """WeightWatcher 0.7.7's WWFit (its 'ww' power-law fit, small-sample variant included), in plain NumPy."""
    data = np.sort(np.asarray(evals, np.float64))
    data = data[data > 1e-5]
    n_all = len(data)
    logs = np.log(data)
    alphas, ds = np.zeros(n_all - 1), np.ones(n_all - 1)
    small = n_all < 20
    found = False
    for i, xmin in enumerate(data[:-1]):
        n = n_all - i
        s = logs[i:].sum() - n * logs[i]
        if small:
            if n < 8 or s <= 1e-12:
                continue
            alpha = 1 + (n - 1) / s
        else:
            alpha = 1 + n / s
        alphas[i] = alpha
        if alpha > 1:
            ds[i] = np.max(np.abs(1 - (data[i:] / xmin) ** (1 - alpha) - np.arange(n) / n))
            found = True
    if small and not found:
        s = logs.sum() - n_all * logs[0]
        alphas[0] = 1 + (n_all - 1) / s
        ds[0] = np.max(np.abs(1 - (data / data[0]) ** (1 - alphas[0]) - np.arange(n_all) / n_all))
    i = int(np.argmin(ds))
    return alphas[i], data[i], ds[i], (alphas[i] - 1) / math.sqrt(n_all - i)


@pytest.mark.parametrize("n,seed", [(400, 0), (60, 1), (19, 2), (12, 3), (10, 4)])
def test_fit_equals_the_numpy_recreation_of_weightwatcher(n, seed):
    rng = np.random.default_rng(seed)
    evals = np.sort(rng.pareto(1.5, n) + 1) * rng.uniform(0.5, 2)
    evals[:2] = [1e-7, 3e-6][: min(2, n)]  # below the threshold: left out of the fit
    fit = spectra.powerlaw_fit(jnp.asarray(np.sort(evals)))
    alpha, xmin, d, sigma = reference_fit(evals)
    np.testing.assert_allclose([fit.alpha, fit.xmin, fit.ks_distance, fit.sigma], [alpha, xmin, d, sigma],
                               rtol=1e-10)
    assert int(fit.num_pl_spikes) == int(np.sum(evals >= xmin))


def test_a_power_law_spectrum_is_recovered_within_two_standard_errors():
    rng = np.random.default_rng(5)
    alphas = []
    for trial in range(5):
        evals = np.sort(rng.pareto(1.5, 3000) + 1)  # density ~ x^-2.5 on [1, inf)
        fit = spectra.powerlaw_fit(jnp.asarray(evals))
        assert abs(float(fit.alpha) - 2.5) < 2 * float(fit.sigma) + 0.02, (trial, fit)
        alphas.append(float(fit.alpha))
    assert abs(np.mean(alphas) - 2.5) < 0.05


def test_a_marchenko_pastur_matrix_has_a_large_alpha_and_soft_rank_one():
    rng = np.random.default_rng(6)
    w = rng.normal(size=(1000, 250)) / np.sqrt(1000)
    m = spectra.layer_metrics({"Dense_0": {"kernel": jnp.asarray(w)}}, key=jax.random.key(0),
                              selection=False).metrics["Dense_0"]
    assert float(m["alpha"]) > 4 and 0.9 < float(m["mp_softrank"]) < 1.1
    evals = np.linalg.svd(w, compute_uv=False) ** 2
    np.testing.assert_allclose(m["log_norm"], np.log10(evals.sum()), rtol=1e-12)
    np.testing.assert_allclose(m["stable_rank"], evals.sum() / evals.max(), rtol=1e-12)
    np.testing.assert_allclose(m["log_alpha_norm"], np.log10(np.sum(evals ** m["alpha"])), rtol=1e-10)
    np.testing.assert_allclose(m["alpha_weighted"], m["alpha"] * np.log10(evals.max()), rtol=1e-12)
    p = evals / evals.sum() + 1e-10
    np.testing.assert_allclose(m["entropy"], -np.sum(p * np.log(p)) / np.log(250 + 1e-10), rtol=1e-10)
    assert float(m["alpha_se"]) > 0


def test_conv_kernels_are_sliced_pooled_and_scaled_as_weightwatcher():
    rng = np.random.default_rng(7)
    kernel = rng.normal(size=(2, 3, 12, 16))  # Flax layout: 2 x 3 positions, 12 in, 16 out
    per_position = [np.linalg.svd(kernel[i, j], compute_uv=False) ** 2 for i in range(2) for j in range(3)]
    layers, _ = spectra.weight_layers({"Conv_0": {"kernel": kernel}})
    assert [(w.name, w.N, w.M, w.rf, w.num_evals) for w in layers] == [("Conv_0", 16, 12, 6, 72)]
    pooled = spectra.eigenvalues(kernel, layers[0])
    np.testing.assert_allclose(pooled, np.sort(np.concatenate(per_position)) / 2, rtol=1e-12)  # W x sqrt(1 / 2)
    sliced, _ = spectra.weight_layers({"Conv_0": {"kernel": kernel}}, pool=False)
    assert [w.name for w in sliced] == [f"Conv_0[{s}]" for s in range(6)]
    np.testing.assert_allclose(spectra.eigenvalues(kernel, sliced[4]), np.sort(per_position[4]) * 6 / 2,
                               rtol=1e-12)  # W x sqrt(rf / 2) for a slice


def test_what_is_a_weight_matrix_and_what_is_skipped():
    params = {"Dense_0": {"kernel": jnp.ones((40, 8)), "bias": jnp.ones(8)},
              "Dense_1": {"kernel": jnp.ones((8, 30))}, "LayerNorm_0": {"scale": jnp.ones(8)},
              "Embed_0": {"embedding": jnp.ones((100, 16))}, "Dense_2": {"kernel": jnp.ones((30, 12))}}
    layers, skipped = spectra.weight_layers(params)
    assert [w.name for w in layers] == ["Dense_2", "Embed_0"]  # an embedding table is a matrix (V, d)
    assert skipped == [("Dense_0", "8 eigenvalues < min_evals 10"), ("Dense_1", "8 eigenvalues < min_evals 10")]
    with pytest.raises(LLJaxError, match="no weight matrix"):
        spectra.weight_layers({"bias": jnp.ones(4), "LayerNorm_0": {"scale": jnp.ones(3)}})


def test_vmapped_over_members_equals_a_loop():
    rng = np.random.default_rng(8)
    params = {"Dense_0": {"kernel": jnp.asarray(rng.standard_t(3, (3, 30, 20)))},
              "Conv_0": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 4, 5)))}}
    keys = jax.random.split(jax.random.key(0), 3)
    run = lambda p, k: spectra.layer_metrics(p, key=k, bootstrap=8, selection=False).metrics
    together = jax.jit(jax.vmap(run))(params, keys)
    for i in range(3):
        single = jax.jit(run)(jax.tree.map(lambda a: a[i], params), keys[i])
        for layer, values in single.items():
            for name, value in values.items():
                np.testing.assert_allclose(together[layer][name][i], value, rtol=1e-12, err_msg=f"{layer} {name}")


def test_against_weightwatcher_itself_on_the_same_weights():
    """WeightWatcher 0.7.7 (`pip install weightwatcher==0.7.7` with a CPU torch; benchmarks/requirements-bench.txt)
    on the same Dense and Conv2d weights: every metric within 1e-6 (both in float64)."""
    ww = pytest.importorskip("weightwatcher")
    torch = pytest.importorskip("torch")
    import contextlib
    import io
    import logging

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    rng = np.random.default_rng(9)
    dense = [rng.standard_t(3, (40, 64)) / 8, rng.standard_t(4, (64, 64)) / 8, rng.standard_t(3, (64, 14)) / 8]
    conv = rng.standard_t(3, (3, 3, 16, 24)) / 12
    model = torch.nn.Sequential(*[torch.nn.Linear(*k.shape) for k in dense], torch.nn.Conv2d(16, 24, 3))
    for layer, k in zip(model, dense):
        layer.weight.data = torch.tensor(k.T.copy())
    model[3].weight.data = torch.tensor(conv.transpose(3, 2, 0, 1).copy())
    with contextlib.redirect_stdout(io.StringIO()):
        details = ww.WeightWatcher(model=model).analyze(mp_fit=True)
    params = {f"Dense_{i}": {"kernel": jnp.asarray(k)} for i, k in enumerate(dense)}
    params["Dense_3"] = {"kernel": jnp.asarray(conv)}  # same order as the torch layers
    ours = list(spectra.layer_metrics(params, selection=False).metrics.values())
    names = {"alpha": "alpha", "xmin": "xmin", "ks_distance": "D", "alpha_sigma": "sigma", "log_norm": "log_norm",
             "log_spectral_norm": "log_spectral_norm", "alpha_weighted": "alpha_weighted",
             "log_alpha_norm": "log_alpha_norm", "stable_rank": "stable_rank", "entropy": "entropy",
             "mp_softrank": "mp_softrank", "num_pl_spikes": "num_pl_spikes", "num_evals": "num_evals"}
    assert len(ours) == len(details) == 4
    for (_, row), metrics in zip(details.iterrows(), ours):
        for name, column in names.items():
            np.testing.assert_allclose(float(metrics[name]), float(row[column]), rtol=1e-6, err_msg=name)


def test_transformer_layers_against_weightwatcher():
    """The built-in Transformer's attention projections and embedding table, read as `lljax.layers` reads them,
    against WeightWatcher 0.7.7 on a PyTorch module holding the same weights where WeightWatcher sees them: a
    BERT-style block (separate query/key/value/out `nn.Linear`), an `nn.Embedding` and the Dense layers. Same
    layers analysed, every metric within 1e-10 in float64 and 2e-5 in float32."""
    ww = pytest.importorskip("weightwatcher")
    torch = pytest.importorskip("torch")
    import contextlib
    import io
    import logging

    from lljax import models

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    spec = models.ModelSpec("transformer", 64, 13, depth=1, extras=(("seq_len", 8), ("vocab_size", 40)))
    # the model's parameter tree (names, shapes) without running its initialiser (seconds of eager compilation);
    # weights drawn Gaussian plus heavy-tailed (Student-t) noise, so that the power-law fits are not trivial
    shapes = jax.eval_shape(lambda key: models.init(spec, key, (8,), "int32")[0], jax.random.key(0))
    rng = np.random.default_rng(3)

    def draw(path, leaf):
        if leaf.ndim < 2 or jax.tree_util.keystr(path).endswith("['bias']"):
            return np.zeros(leaf.shape, np.float32)
        w = (rng.standard_normal(leaf.shape) + rng.standard_t(3, leaf.shape)) / math.sqrt(leaf.shape[0])
        # WeightWatcher reads torch weights as float32 (`torch_T_to_np`: T.float().numpy()) before its float64
        # SVD: weights exact in float32 make both sides see the same numbers
        return w.astype(np.float32)

    params = jax.tree_util.tree_map_with_path(draw, shapes)
    attention, block = params["block_0"]["attention"], params["block_0"]
    # lljax layer name -> (torch module, its weight (out, in) as torch stores it); LayerNorms are 'norm' to
    # WeightWatcher (not analysed) and vectors to lljax
    torch_layers = {
        "embed": (torch.nn.Embedding(40, 64), params["embed"]["embedding"]),  # (V, d) as is
        "positions": (torch.nn.Embedding(8, 64), params["positions"]["embedding"]),  # 8 eigenvalues: skipped
        **{f"block_0/attention/{name}": (torch.nn.Linear(64, 64), attention[name]["kernel"].reshape(64, 64).T)
           for name in ("query", "key", "value", "out")},  # (64, 2, 32) / (2, 32, 64) kernels as one matrix
        "block_0/LayerNorm_0": (torch.nn.LayerNorm(64), None),
        "block_0/mlp_in": (torch.nn.Linear(64, 256), block["mlp_in"]["kernel"].T),
        "block_0/mlp_out": (torch.nn.Linear(256, 64), block["mlp_out"]["kernel"].T),
        "final_norm": (torch.nn.LayerNorm(64), None),
        "readout": (torch.nn.Linear(64, 13), params["readout"]["kernel"].T),
    }
    model = torch.nn.ModuleDict({name.split("/")[-1]: module for name, (module, _) in torch_layers.items()})
    for name, (module, weight) in torch_layers.items():
        if weight is not None:
            assert tuple(module.weight.shape) == weight.shape, name
            module.weight.data = torch.tensor(np.ascontiguousarray(weight))
    # min_evals=10 as lljax's MIN_EVALS: WeightWatcher 0.7.7's own default is 8 (constants.DEFAULT_MIN_EVALS),
    # with which it would also analyse the 8-row position table
    with contextlib.redirect_stdout(io.StringIO()):
        details = ww.WeightWatcher(model=model).analyze(mp_fit=True, min_evals=10)
    rows = {row["longname"]: row for _, row in details.iterrows()}
    expected = {"embed", "block_0/attention/query", "block_0/attention/key", "block_0/attention/value",
                "block_0/attention/out", "block_0/mlp_in", "block_0/mlp_out", "readout"}
    assert set(rows) == {name.split("/")[-1] for name in expected}
    names = {"alpha": "alpha", "xmin": "xmin", "ks_distance": "D", "alpha_sigma": "sigma", "log_norm": "log_norm",
             "log_spectral_norm": "log_spectral_norm", "alpha_weighted": "alpha_weighted",
             "log_alpha_norm": "log_alpha_norm", "stable_rank": "stable_rank", "entropy": "entropy",
             "mp_softrank": "mp_softrank", "num_pl_spikes": "num_pl_spikes", "num_evals": "num_evals"}
    for dtype, rtol in ((jnp.float64, 1e-10), (jnp.float32, 2e-5)):
        typed = jax.tree_util.tree_map(lambda w: jnp.asarray(w, dtype), params)
        # under jit: one compilation for all layers (eagerly every spectrum shape is traced apart, ~5x slower)
        ours = jax.jit(lambda p: spectra.layer_metrics(p, pool=True, min_evals=10, selection=False).metrics)(typed)
        skipped = spectra.weight_layers(typed, pool=True, min_evals=10)[1]  # (as layer_metrics lists them)
        assert set(ours) == expected and skipped == [("positions", "8 eigenvalues < min_evals 10")]
        for layer, metrics in ours.items():
            row = rows[layer.split("/")[-1]]
            assert (row["N"], row["M"]) == {"embed": (64, 40), "readout": (64, 13)}.get(
                layer, (256, 64) if "mlp" in layer else (64, 64))
            for name, column in names.items():
                assert metrics[name].dtype == dtype
                np.testing.assert_allclose(float(metrics[name]), float(row[column]), rtol=rtol,
                                           err_msg=f"{layer} {name} {dtype.__name__}")
    # torch's nn.MultiheadAttention: WeightWatcher 0.7.7 analyses its out_proj only. Its `layer_type` goes by
    # isinstance / the type's name ('linear', 'conv1d', 'conv2d', 'embedding', 'norm'): the attention module
    # itself ('...multiheadattention') is UNKNOWN and has no `weight` anyway, so the packed in_proj_weight (3d, d)
    # (or q/k/v_proj_weight when kdim, vdim != d) is never read; out_proj, an nn.Linear subclass, is DENSE. A
    # PyTorch Transformer built on nn.MultiheadAttention thus shows WeightWatcher no query/key/value matrix at
    # all, whereas lljax reads Flax's query/key/value kernels as BERT's separate nn.Linear layers.
    for attention_module in (torch.nn.MultiheadAttention(64, 2), torch.nn.MultiheadAttention(64, 2, kdim=32, vdim=32)):
        with contextlib.redirect_stdout(io.StringIO()):
            details = ww.WeightWatcher(model=torch.nn.Sequential(attention_module)).analyze()
        assert list(details["longname"]) == ["0.out_proj"] and (details["N"][0], details["M"][0]) == (64, 64)


# --- spectra.fit: Yang et al. 2023's truncated power-law and exponential fits ---

REFERENCE = "/work/shared/reference/yang2023_esd"
# the published table (reference/yang2023_esd/README.md), as printed: distribution -> spectrum -> (exponent,
# lambda, xmin, D); each value is compared to half a unit of its last printed digit
PUBLISHED = {
    "power_law": {"good": ("1.767614", None, "1.93968", "0.042277"),
                  "mediocre": ("3.474144", None, "21.7088", "0.054439"),
                  "bad": ("4.836811", None, "15.069", "0.084586")},
    "power_law_xmax": {"good": ("1.7563", None, "1.8324", None), "mediocre": ("3.4621", None, "21.303", None),
                       "bad": ("4.8368", None, "15.069", None)},
    "truncated_power_law": {"good": ("1.50226", "0.0081777", "1.92982", "0.0192"),
                            "mediocre": ("1.19495", "0.036509", "2.25951", "0.0161"),
                            "bad": ("1.00002", "0.086506", "2.93250", "0.0601")},
    "exponential": {"good": (None, "0.075493", "2.11348", "0.2675"), "mediocre": (None, "0.11566", "2.43928", "0.1315"),
                    "bad": (None, "0.17422", "2.86964", "0.0391")},
}


def reference_spectrum(name):
    import os

    path = os.path.join(REFERENCE, f"{name}.npy")
    if not os.path.exists(path):
        pytest.skip(f"{path} is not here")
    return jnp.asarray(np.sort(np.load(path)))


@pytest.mark.parametrize("distribution", spectra.DISTRIBUTIONS)
def test_fits_reproduce_the_published_table(distribution):
    run = jax.jit(spectra.fit, static_argnums=1)
    for name, row in PUBLISHED[distribution].items():
        result = run(reference_spectrum(name), distribution)
        for value, printed, column in zip((result.exponent, result.lam, result.xmin, result.ks_distance), row,
                                          ("exponent", "lambda", "xmin", "D")):
            if printed is None:
                continue
            decimals = len(printed.split(".")[1])
            assert abs(float(value) - float(printed)) <= 0.5001 * 10.0 ** -decimals, (name, column, float(value))


def test_the_exponential_is_its_closed_form():
    x = reference_spectrum("mediocre")
    fit = spectra.fit(x, "exponential", optimizer="newton")
    like_powerlaw = spectra.fit(x, "exponential")
    np.testing.assert_allclose(fit.lam, like_powerlaw.lam, rtol=1e-3)  # fmin stops within its tolerance
    tail = np.asarray(x)[np.asarray(x) >= float(fit.xmin)]
    np.testing.assert_allclose(fit.lam, 1 / np.mean(tail - float(fit.xmin)), rtol=1e-12)
    assert int(fit.num_tail) == len(tail)


@pytest.mark.parametrize("beta", [1.0, 1.0 + 1e-9, 1.3, 2.0, 3.7])
def test_the_truncated_power_law_normaliser_against_a_numerical_integral(beta):
    import mpmath
    from scipy import special

    mpmath.mp.dps = 30
    for lam, xmin in ((1e-6, 2.0), (0.008, 1.93), (0.3, 2.5), (5.0, 0.7), (200.0, 1.1)):
        integral = mpmath.quad(lambda t: t ** -beta * mpmath.exp(-lam * t),
                               [xmin, *(xmin + k / lam for k in (0.1, 0.5, 2, 8, 30, 100)), mpmath.inf])
        got = spectra.tpl_log_normaliser(jnp.asarray(beta), jnp.asarray(lam), jnp.asarray(xmin))
        np.testing.assert_allclose(got, float(mpmath.log(integral)), rtol=1e-10, err_msg=f"{lam} {xmin}")
        gamma = mpmath.gammainc(1 - beta, lam * xmin) * mpmath.mpf(lam) ** (beta - 1)  # as powerlaw computes it
        np.testing.assert_allclose(got, float(mpmath.log(gamma)), rtol=1e-13, atol=1e-14, err_msg=f"{lam} {xmin}")
        if 1.01 < beta < 2:  # the recurrence (cancels near beta = 1, which the quadrature does not)
            a, s = lam * xmin, 1 - beta
            gamma = (special.gammaincc(s + 1, a) * special.gamma(s + 1) - a ** s * np.exp(-a)) / s
            np.testing.assert_allclose(got, np.log(lam ** -s * gamma), rtol=1e-9)


def test_beta_is_held_at_one_where_the_likelihood_wants_less():
    """Exponentially distributed eigenvalues (beta = 0 unconstrained): the Newton fit sits on beta = 1 with the
    likelihood's slope in beta pointing out of the box and none in lambda; powerlaw's Nelder-Mead stays above 1."""
    rng = np.random.default_rng(11)
    x = jnp.asarray(np.sort(rng.exponential(3.0, 60) + 0.5))
    fit = spectra.fit(x, "truncated_power_law", xmin="all", optimizer="nelder_mead")
    assert float(fit.exponent) > 1 and float(fit.lam) > 0
    fit = spectra.fit(x, "truncated_power_law", xmin="all", optimizer="newton")
    assert float(fit.exponent) == 1.0
    tail = x[x >= fit.xmin]

    def loglik(beta, lam):
        return (-beta * jnp.mean(jnp.log(tail)) - lam * jnp.mean(tail)
                - spectra.tpl_log_normaliser(beta, lam, fit.xmin))

    d_beta, d_lam = jax.grad(loglik, argnums=(0, 1))(jnp.asarray(1.0), fit.lam)
    assert float(d_beta) < 0 and abs(float(d_lam) * float(fit.lam)) < 1e-8
    # a true truncated power law (beta 2.2) away from the bound: the gradient vanishes there
    u = rng.pareto(1.2, 20000) + 1
    y = u[rng.uniform(size=u.size) < np.exp(-0.05 * (u - 1))][:200]
    f = spectra.fit(jnp.asarray(np.sort(y)), "truncated_power_law", xmin="all", optimizer="newton")
    tail = jnp.asarray(np.sort(y)[np.sort(y) >= float(f.xmin)])
    grads = jax.grad(lambda p: -p[0] * jnp.mean(jnp.log(tail)) - p[1] * jnp.mean(tail)
                     - spectra.tpl_log_normaliser(p[0], p[1], f.xmin))(jnp.stack([f.exponent, f.lam]))
    assert float(f.exponent) > 1.3 and np.max(np.abs(grads * jnp.stack([1.0, f.lam]))) < 1e-8


def test_nelder_mead_is_scipy_fmin_step_for_step():
    from scipy import optimize

    def rosenbrock(p):
        return (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2

    for start in ([-1.2, 1.0], [0.0, 3.0], [2.0, 0.5]):
        expected = optimize.fmin(rosenbrock, np.asarray(start), disp=False)
        got = spectra.nelder_mead(rosenbrock, jnp.asarray(start))
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)


def test_fit_vmapped_equals_a_loop_and_bad_input():
    spectra_ = jnp.stack([reference_spectrum(name) for name in ("good", "bad")])
    for distribution in ("power_law_xmax", "truncated_power_law"):
        together = jax.jit(jax.vmap(lambda x: spectra.fit(x, distribution)))(spectra_)
        for i in range(2):
            single = spectra.fit(spectra_[i], distribution)
            np.testing.assert_allclose(np.asarray(together)[:, i], np.asarray(single), rtol=1e-12)
    with pytest.raises(LLJaxError, match="unknown distribution"):
        spectra.fit(spectra_[0], "lognormal")
    with pytest.raises(LLJaxError, match="1-D float"):
        spectra.fit(jnp.ones((3, 4)), "exponential")
    # no eigenvalue in the window but the largest there: NaN, as powerlaw's "Cannot fit"
    fit = spectra.fit(jnp.asarray([1.0, 2.0, 100.0, 1e4]), "exponential")
    assert np.isnan(float(fit.xmin)) and np.isnan(float(fit.lam))


def test_layer_selection_columns_are_each_layers_own_fit():
    """selection_metrics pads the layers' spectra to one length and fits them in one lax.map: each layer's
    columns equal `fit` on its own spectrum (the padding is invisible)."""
    rng = np.random.default_rng(9)
    params = {"Dense_0": {"kernel": jnp.asarray(rng.standard_t(3, (80, 60)))},
              "Dense_1": {"kernel": jnp.asarray(rng.standard_t(4, (40, 30)))}}
    metrics = jax.jit(lambda p: spectra.layer_metrics(p).metrics)(params)
    layers = spectra.weight_layers(params)[0]
    for layer in layers:
        evals = spectra.eigenvalues(params[layer.name]["kernel"], layer)
        tpl, exp = spectra.fit(evals, "truncated_power_law"), spectra.fit(evals, "exponential")
        expected = dict(alpha_xmax=spectra.fit(evals, "power_law_xmax").exponent, etpl_beta=tpl.exponent,
                        etpl_lambda=tpl.lam, etpl_ks=tpl.ks_distance, exp_lambda=exp.lam, exp_ks=exp.ks_distance)
        for name in spectra.SELECTION:
            np.testing.assert_allclose(metrics[layer.name][name], expected[name], rtol=1e-12, err_msg=name)
    assert np.isfinite(float(metrics["Dense_0"]["etpl_lambda"]))


def test_float32_weights_get_float64_fits_and_their_own_weightwatcher_metrics():
    """In x64 mode (the spectra family's program) float32 weights keep their float32 WeightWatcher metrics bit
    for bit, while Yang et al.'s fits run on numpy's float64 eigenvalues (those of the same weights in float64)."""
    rng = np.random.default_rng(10)
    params = {"Dense_0": {"kernel": jnp.asarray(rng.standard_t(3, (64, 48)), jnp.float32)},
              "Conv_0": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 8, 16)), jnp.float32)}}
    run = lambda p, k: spectra.layer_metrics(p, key=k, bootstrap=8).metrics
    key = jax.random.key(3)
    without = lambda p, k: spectra.layer_metrics(p, key=k, bootstrap=8, selection=False).metrics
    with jax.enable_x64(False):
        plain = jax.jit(without)(params, key)
    mixed = jax.jit(run)(params, key)
    wide = jax.jit(run)(jax.tree.map(lambda a: a.astype(jnp.float64), params), key)
    for layer in plain:
        for name in spectra.METRICS:
            if name in spectra.SELECTION:
                assert mixed[layer][name].dtype == jnp.float32
                # a conv kernel is scaled in its own dtype first: an ulp apart
                np.testing.assert_allclose(mixed[layer][name], np.float32(wide[layer][name]), rtol=1e-6,
                                           err_msg=f"{layer} {name}")
            else:
                np.testing.assert_array_equal(mixed[layer][name], plain[layer][name], err_msg=f"{layer} {name}")
