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
    m = spectra.layer_metrics({"Dense_0": {"kernel": jnp.asarray(w)}}, key=jax.random.key(0)).metrics["Dense_0"]
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
    run = lambda p, k: spectra.layer_metrics(p, key=k, bootstrap=8).metrics
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
    ours = list(spectra.layer_metrics(params).metrics.values())
    names = {"alpha": "alpha", "xmin": "xmin", "ks_distance": "D", "alpha_sigma": "sigma", "log_norm": "log_norm",
             "log_spectral_norm": "log_spectral_norm", "alpha_weighted": "alpha_weighted",
             "log_alpha_norm": "log_alpha_norm", "stable_rank": "stable_rank", "entropy": "entropy",
             "mp_softrank": "mp_softrank", "num_pl_spikes": "num_pl_spikes", "num_evals": "num_evals"}
    assert len(ours) == len(details) == 4
    for (_, row), metrics in zip(details.iterrows(), ours):
        for name, column in names.items():
            np.testing.assert_allclose(float(metrics[name]), float(row[column]), rtol=1e-6, err_msg=name)
