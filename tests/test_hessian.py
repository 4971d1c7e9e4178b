"""lljax.hessian in float64 against exact references: dense `jax.hessian` + `numpy.linalg.eigh` on tiny models,
and quadratics with a prescribed spectrum."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from lljax import hessian, models
from lljax.errors import LLJaxError


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


@functools.cache
def tiny_model(name, width, seed=0, num_samples=16, length=12):
    """(loss_fn, params float64, batch float64, dense Hessian (n, n)) for a tiny model on random inputs."""
    spec = models.ModelSpec(name, width)
    params, batch_stats = models.init(spec, jax.random.key(seed), (length,))
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    x = jax.random.normal(jax.random.key(seed + 100), (num_samples, length), jnp.float64)
    y = jax.random.randint(jax.random.key(seed + 200), (num_samples,), 0, 10)
    loss_fn = models.loss_fn(spec, batch_stats)
    flat, unravel = ravel_pytree(params)
    dense = jax.jit(jax.hessian(lambda f: loss_fn(unravel(f), (x, y))))(flat)
    return loss_fn, params, (x, y), np.asarray(dense)


def prescribed_matrix(eigenvalues, seed=0):
    """U diag(eigenvalues) U^T with U a random orthogonal matrix."""
    n = len(eigenvalues)
    u, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    return u @ np.diag(eigenvalues) @ u.T


def quadratic_loss(params, matrix):
    """0.5 w^T A w over a pytree w, the matrix handed in as the batch so quadratics share compiled programs."""
    w = ravel_pytree(params)[0]
    return 0.5 * w @ matrix @ w


def quadratic_params(n):
    return {"a": jnp.ones((n - 3,), jnp.float64), "b": jnp.ones((3,), jnp.float64)}


MODELS = [("mlp", 4), ("cnn", 2)]
LANCZOS_STEPS = 40  # fewer than the parameter count: a genuine Krylov approximation, not a full decomposition
TRACE_KEYS = 20
DENSITY_RUNS = 64
KRYLOV_METRICS = hessian.HessianConfig(top_k=1, lanczos_steps=12, trace_method="krylov", trace_probes=20,
                                       density_runs=0)


@pytest.fixture(scope="module", params=MODELS, ids=[m for m, _ in MODELS])
def model(request):
    """Everything the tests check on one tiny model, computed in one compiled program (compiling dominates)."""
    with jax.enable_x64(True):
        loss_fn, params, batch, dense = tiny_model(*request.param)
        flat, unravel = ravel_pytree(params)
        v = jax.random.normal(jax.random.key(1), flat.shape, jnp.float64)

        def stochastic_traces(method):
            one = lambda k: hessian.trace(loss_fn, params, batch, key=k, method=method, num_probes=30)
            return jax.vmap(one)(jax.random.split(jax.random.key(11), TRACE_KEYS))

        @jax.jit
        def compute(params):
            return dict(
                product=ravel_pytree(hessian.hvp(loss_fn, params, batch, unravel(v)))[0],
                top=hessian.top_eigenvalues(loss_fn, params, batch, 3, key=jax.random.key(2),
                                            num_steps=LANCZOS_STEPS),
                auto=hessian.trace(loss_fn, params, batch),
                exact=hessian.trace(loss_fn, params, batch, method="exact"),
                density=hessian.spectral_density(loss_fn, params, batch, key=jax.random.key(4), num_runs=DENSITY_RUNS,
                                                 num_steps=24),
                hutchinson=stochastic_traces("hutchinson"),
                hutchpp=stochastic_traces("hutchpp"),
                # the trace reusing the top-eigenvalue Lanczos basis, as the pipeline computes it
                metrics_krylov=jax.vmap(lambda k: hessian.hessian_metrics(loss_fn, params, batch, k, KRYLOV_METRICS))(
                    jax.random.split(jax.random.key(12), TRACE_KEYS)),
            )

        return dict(compute(params), v=np.asarray(v), dense=dense, n=flat.shape[0])


def test_hvp_matches_dense_hessian(model):
    np.testing.assert_allclose(model["product"], model["dense"] @ model["v"], rtol=1e-10, atol=1e-12)


def test_dataset_hvp_with_ragged_batch_equals_full_batch():
    loss_fn, params, _, _ = tiny_model("mlp", 4)
    x = jax.random.normal(jax.random.key(7), (23, 12), jnp.float64)
    y = jax.random.randint(jax.random.key(8), (23,), 0, 10)
    v = jax.tree.map(lambda p: jax.random.normal(jax.random.key(9), p.shape, p.dtype), params)
    sizes = (5, 23, 40)  # ragged last batch, one exact batch, one batch larger than the data

    @jax.jit
    def products(p, d, u):
        return hessian.hvp(loss_fn, p, d, u), [hessian.dataset_hvp(loss_fn, p, d, u, size) for size in sizes]

    full, accumulated = products(params, (x, y), v)
    for size, product in zip(sizes, accumulated):
        np.testing.assert_allclose(ravel_pytree(product)[0], ravel_pytree(full)[0], rtol=1e-12, atol=1e-14,
                                   err_msg=f"batch size {size}")


def test_top_eigenvalues_and_trace_match_dense(model):
    dense, top = model["dense"], model["top"]
    exact = np.linalg.eigvalsh(dense)[::-1]
    assert LANCZOS_STEPS < model["n"]
    np.testing.assert_allclose(top.eigenvalues, exact[:3], rtol=1e-6)
    # Each Ritz value lies within its residual bound of an eigenvalue.
    assert np.all(np.abs(np.asarray(top.eigenvalues) - exact[:3]) <= np.asarray(top.residuals) + 1e-12)
    assert model["n"] <= hessian.EXACT_TRACE_MAX_PARAMS  # so 'auto' is exact
    for method in ("auto", "exact"):
        np.testing.assert_allclose(model[method].trace, np.trace(dense), rtol=1e-6)
        assert model[method].standard_error == 0


SPECTRA = {
    "negative": np.concatenate([[-0.5, -1.0, -1.5], -np.linspace(3.0, 9.0, 27)]),  # the largest is not the dominant
    # 12 distinct values: Lanczos breaks down and restarts twice to find 4.0 three times within 20 steps
    "repeated": np.concatenate([[4.0] * 3, [2.0] * 5, [-3.0] * 4, [0.0] * 10, np.linspace(-2, -1, 8)]),
    # eigenvalues 1e-9 apart: no breakdown is declared, yet the cluster is resolved without ghost copies
    "clustered": np.concatenate([3.0 + 1e-9 * np.arange(4), [1.0, 1.0 + 1e-7], [0.0] * 16, np.linspace(-2, -1, 8)]),
}


def test_top_eigenvalues_of_prescribed_spectra():
    matrices = jnp.asarray(np.stack([prescribed_matrix(spectrum) for spectrum in SPECTRA.values()]))
    run = lambda steps: jax.vmap(lambda a: hessian.top_eigenvalues(quadratic_loss, quadratic_params(30), a, 3,
                                                                   key=jax.random.key(0), num_steps=steps))
    top, unconverged = jax.jit(lambda a: (run(20)(a), run(6)(a)))(matrices)
    for i, (name, spectrum) in enumerate(SPECTRA.items()):
        exact = np.sort(spectrum)[::-1]
        np.testing.assert_allclose(top.eigenvalues[i], exact[:3], rtol=1e-6, err_msg=name)
        # Each Ritz value lies within its residual bound of an eigenvalue, converged or not.
        assert np.all(np.abs(np.asarray(top.eigenvalues[i]) - exact[:3]) <= np.asarray(top.residuals[i]) + 1e-12)
        for value, bound in zip(np.asarray(unconverged.eigenvalues[i]), np.asarray(unconverged.residuals[i])):
            assert np.min(np.abs(spectrum - value)) <= bound * (1 + 1e-8) + 1e-14, name
        assert np.max(np.asarray(unconverged.residuals[i])) > 1e-3, name  # six steps cannot converge all three


STEPPED = np.repeat([5.0, 2.0, -1.0, -4.0], [3, 4, 2, 1])  # 4 distinct values in 10 dimensions


def test_breakdown_is_masked_without_restart():
    matrix = prescribed_matrix(STEPPED)
    v0 = jax.random.normal(jax.random.key(3), (10,), jnp.float64)
    result = jax.jit(lambda a, v: hessian.lanczos(lambda u: a @ u, v, 10))(matrix, v0)
    assert int(result.num_valid) == 4
    np.testing.assert_allclose(result.ritz_values[:4], [5.0, 2.0, -1.0, -4.0], rtol=1e-10)
    assert np.all(np.isnan(np.asarray(result.ritz_values[4:])))
    assert np.all(np.asarray(result.ritz_weights[4:]) == 0)
    # The quadrature weights are the squared projections of the start vector on each eigenspace.
    eigenvalues, vectors = np.linalg.eigh(matrix)
    q0 = np.asarray(v0) / np.linalg.norm(v0)
    expected = [np.sum((vectors[:, np.isclose(eigenvalues, lam)].T @ q0) ** 2) for lam in (5.0, 2.0, -1.0, -4.0)]
    np.testing.assert_allclose(result.ritz_weights[:4], expected, rtol=1e-8)
    assert np.all(np.asarray(result.residuals[:4]) < 1e-10)


def test_restart_finds_every_eigenvalue_with_multiplicity():
    matrix = prescribed_matrix(STEPPED)
    v0 = jax.random.normal(jax.random.key(3), (10,), jnp.float64)
    # More steps than the dimension: the basis fills the space, then the rest is masked.
    result = jax.jit(lambda a, v: hessian.lanczos(lambda u: a @ u, v, 14, key=jax.random.key(4)))(matrix, v0)
    assert int(result.num_valid) == 10
    np.testing.assert_allclose(result.ritz_values[:10], np.sort(STEPPED)[::-1], rtol=1e-10, atol=1e-12)
    assert np.all(np.isnan(np.asarray(result.ritz_values[10:])))
    np.testing.assert_allclose(np.sum(result.ritz_weights), 1.0, rtol=1e-12)


def test_density_is_gauss_quadrature_of_the_start_vector(model):
    density, dense = model["density"], model["dense"]
    assert density.nodes.shape == density.weights.shape == (DENSITY_RUNS, 24)
    np.testing.assert_allclose(np.sum(density.weights), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.sum(density.weights, axis=1), 1 / DENSITY_RUNS, rtol=1e-12)
    # Gauss quadrature with m nodes integrates moments up to 2m - 1 exactly: sum_i w_i t_i^p = v^T H^p v / runs.
    run_keys = jax.random.split(jax.random.key(4), DENSITY_RUNS)
    scale = np.max(np.abs(np.linalg.eigvalsh(dense)))
    for run in range(3):
        v = np.asarray(jax.random.rademacher(run_keys[run], (dense.shape[0],), jnp.float64))
        v = v / np.linalg.norm(v)
        for p in range(0, 12):
            quadrature = np.sum(density.weights[run] * (density.nodes[run] / scale) ** p)
            exact = v @ np.linalg.matrix_power(dense / scale, p) @ v / DENSITY_RUNS
            np.testing.assert_allclose(quadrature, exact, rtol=1e-8, atol=1e-14)


def test_density_matches_smoothed_exact_spectrum(model):
    density, exact = model["density"], np.linalg.eigvalsh(model["dense"])
    sigma = 0.05 * (exact.max() - exact.min())
    grid = jnp.linspace(exact.min() - 8 * sigma, exact.max() + 8 * sigma, 400)
    estimated = hessian.smooth_density(density.nodes, density.weights, grid, sigma)
    reference = hessian.smooth_density(jnp.asarray(exact), jnp.full(exact.shape, 1 / exact.size), grid, sigma)
    spacing = float(grid[1] - grid[0])
    np.testing.assert_allclose(np.sum(estimated) * spacing, 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.sum(reference) * spacing, 1.0, rtol=1e-6)
    assert np.sum(np.abs(estimated - reference)) * spacing < 0.05  # L1 distance between the two densities


def test_smooth_density_skips_masked_nodes():
    grid = jnp.linspace(-5, 5, 11)
    with_nan = hessian.smooth_density(jnp.array([0.0, jnp.nan]), jnp.array([1.0, 0.0]), grid, 1.0)
    alone = hessian.smooth_density(jnp.array([0.0]), jnp.array([1.0]), grid, 1.0)
    np.testing.assert_allclose(with_nan, alone)
    np.testing.assert_allclose(alone, np.exp(-0.5 * np.asarray(grid) ** 2) / np.sqrt(2 * np.pi))


@pytest.mark.parametrize("method", ["hutchinson", "hutchpp", "metrics_krylov"])
def test_stochastic_trace_within_three_standard_errors(model, method):
    exact, estimates = np.trace(model["dense"]), model[method]
    if method == "metrics_krylov":
        estimates = hessian.TraceEstimate(estimates.trace, estimates.trace_se)
    assert np.all(np.asarray(estimates.standard_error) > 0)
    z = (np.asarray(estimates.trace) - exact) / np.asarray(estimates.standard_error)
    assert np.sum(np.abs(z) > 3) <= 1
    # The mean of the independent estimates is within 3 of its own standard errors too (the estimator is unbiased).
    mean_se = np.sqrt(np.sum(np.asarray(estimates.standard_error) ** 2)) / TRACE_KEYS
    assert abs(np.mean(estimates.trace) - exact) <= 3 * mean_se


def test_hutchpp_beats_hutchinson_on_a_decaying_spectrum():
    # Hutch++ (Meyer et al. 2021) needs O(1/eps) probes where Hutchinson needs O(1/eps^2) when the spectrum decays.
    spectrum = 1.0 / np.arange(1, 101) ** 1.5
    matrix, params = jnp.asarray(prescribed_matrix(spectrum)), quadratic_params(100)

    @jax.jit
    def estimates(keys):
        one = lambda method: lambda k: hessian.trace(quadratic_loss, params, matrix, key=k, method=method,
                                                     num_probes=30)
        return {m: jax.vmap(one(m))(keys) for m in ("hutchinson", "hutchpp", "krylov")}

    results = estimates(jax.random.split(jax.random.key(3), 20))
    rms = {m: np.sqrt(np.mean((np.asarray(e.trace) - spectrum.sum()) ** 2)) for m, e in results.items()}
    assert rms["hutchpp"] < 0.2 * rms["hutchinson"]
    # A Krylov space of 10 steps captures the top of the spectrum better than Hutch++'s one-pass sketch of rank 10.
    assert rms["krylov"] < rms["hutchpp"]
    # The stand-alone Krylov trace (its own Lanczos run) is unbiased with an honest standard error.
    krylov = results["krylov"]
    assert np.sum(np.abs(np.asarray(krylov.trace) - spectrum.sum()) > 3 * np.asarray(krylov.standard_error)) <= 1


def test_krylov_trace_is_exact_once_lanczos_spans_the_space():
    spectrum = SPECTRA["repeated"]  # breakdowns and restarts on the way to spanning all 30 dimensions
    matrix, params = jnp.asarray(prescribed_matrix(spectrum, seed=5)), quadratic_params(30)
    config = hessian.HessianConfig(top_k=1, lanczos_steps=40, trace_method="krylov", trace_probes=4, density_runs=0)
    metrics = jax.jit(lambda a, k: hessian.hessian_metrics(quadratic_loss, params, a, k, config))(
        matrix, jax.random.key(0))
    np.testing.assert_allclose(metrics.trace, spectrum.sum(), rtol=1e-10, atol=1e-10)
    assert abs(float(metrics.trace_se)) < 1e-10


def test_vmapped_metrics_equal_loop_over_members():
    spec = models.ModelSpec("mlp", 4)
    config = hessian.HessianConfig(top_k=2, lanczos_steps=20, trace_method="hutchpp", trace_probes=12,
                                   density_runs=2, density_steps=8)
    members = [models.init(spec, jax.random.key(s), (12,)) for s in range(3)]
    params = jax.tree.map(lambda *p: jnp.stack(p).astype(jnp.float64), *[m[0] for m in members])
    batch_stats = jax.tree.map(lambda *b: jnp.stack(b), *[m[1] for m in members])
    x = jax.random.normal(jax.random.key(1), (3, 16, 12), jnp.float64)
    y = jax.random.randint(jax.random.key(2), (3, 16), 0, 10)
    keys = jax.random.split(jax.random.key(3), 3)
    metrics = lambda p, bs, b, k: hessian.hessian_metrics(models.loss_fn(spec, bs), p, b, k, config)
    vmapped = jax.jit(jax.vmap(metrics))(params, batch_stats, (x, y), keys)
    assert vmapped.top_eigenvalues.shape == (3, 2) and vmapped.density_nodes.shape == (3, 2, 8)
    for i in range(3):
        member = jax.tree.map(lambda a: a[i], (params, batch_stats, (x, y), keys))
        single = jax.jit(metrics)(*member)
        for field, a, b in zip(hessian.HessianMetrics._fields, single, vmapped):
            np.testing.assert_allclose(a, b[i], rtol=1e-9, atol=1e-12, err_msg=field)


def test_float32_default_path_without_recompiling():
    _, _, (x, y), dense = tiny_model("mlp", 4)
    with jax.enable_x64(False):
        spec = models.ModelSpec("mlp", 4)
        params, batch_stats = models.init(spec, jax.random.key(0), (12,))
        batch = (jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32))
        run = jax.jit(lambda p, k: hessian.hessian_metrics(models.loss_fn(spec, batch_stats), p, batch, k))
        metrics = run(params, jax.random.key(1))
        run(jax.tree.map(lambda a: 2 * a, params), jax.random.key(2))
    assert run._cache_size() == 1
    assert metrics.top_eigenvalues.dtype == jnp.float32 and metrics.trace.dtype == jnp.float32
    np.testing.assert_allclose(metrics.top_eigenvalues, np.linalg.eigvalsh(dense)[::-1][:3], rtol=1e-4)
    np.testing.assert_allclose(metrics.trace, np.trace(dense), rtol=1e-4)
    np.testing.assert_allclose(np.sum(metrics.density_weights), 1.0, rtol=1e-5)


def test_bad_input_raises():
    params = quadratic_params(10)
    matrix = jnp.eye(10)
    with pytest.raises(LLJaxError, match="trace method"):
        hessian.trace(quadratic_loss, params, matrix, method="spectral")
    with pytest.raises(LLJaxError, match="pass a key"):
        hessian.trace(quadratic_loss, params, matrix, method="hutchpp")
    with pytest.raises(LLJaxError, match="k=12"):
        hessian.top_eigenvalues(quadratic_loss, params, matrix, 12, key=jax.random.key(0))
    with pytest.raises(LLJaxError, match="top_k"):
        hessian.HessianConfig(top_k=5, lanczos_steps=4)
    with pytest.raises(LLJaxError, match="disagree"):
        hessian.dataset_hvp(quadratic_loss, params, (jnp.ones(3), jnp.ones(4)), params, 2)


@pytest.mark.parametrize("m", [1, 2, 5, 32, 33])
def test_small_eigh_equals_lapack_with_repeated_and_negative_eigenvalues(m):
    """The pure-JAX Jacobi eigensolver behind Lanczos (jaxlib's batched CPU eigh can deadlock) against LAPACK."""
    rng = np.random.default_rng(m)
    spectrum = np.concatenate([[3.0, 3.0, -2.0], rng.normal(size=m)])[:m]
    q = np.linalg.qr(rng.normal(size=(m, m)))[0]
    a = q @ np.diag(spectrum) @ q.T
    with jax.enable_x64(True):
        values, vectors = jax.jit(jax.vmap(hessian._small_eigh))(jnp.asarray(np.stack([a, 2 * a])))
    values, vectors = np.asarray(values), np.asarray(vectors)
    for k, scale in enumerate((1, 2)):
        np.testing.assert_allclose(values[k], np.sort(scale * spectrum), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(vectors[k] @ np.diag(values[k]) @ vectors[k].T, scale * a, atol=1e-12)
        np.testing.assert_allclose(vectors[k].T @ vectors[k], np.eye(m), atol=1e-12)


# ------------------------------------------------------------------ the jax 0.10.2 vmap(lax.map(batched HVP)) defect

def _layernorm_like(x):
    def f(w):
        h = x @ w
        return jnp.sum(jax.lax.rsqrt(((h - h.mean(1, keepdims=True)) ** 2).mean(1) + 1e-6))
    return f


def test_the_upstream_repro_and_lljax_avoids_the_construct():
    """docs/upstream/vmap_map_hvp.md: under vmap, lax.map(hvp, batch_size >= 4) of a LayerNorm-like function is
    wrong for members 1 and up (jax 0.10.2, CPU). The reference is jax.hessian per member; lljax's exact trace
    (one HVP at a time) matches it vmapped. If a JAX release fixes the defect, the first check fails and says so:
    the note can then go."""
    with jax.enable_x64(False):
        x = jax.random.uniform(jax.random.key(1), (500, 64))
        f = _layernorm_like(x)
        ws = jax.random.normal(jax.random.key(0), (4, 64, 8)) / 8

        def diag(w, bs):
            hv = lambda t: jax.jvp(jax.grad(lambda u: f(u.reshape(w.shape))), (w.ravel(),), (t,))[1]
            return jax.lax.map(lambda i: hv(jax.nn.one_hot(i, w.size))[i], jnp.arange(w.size), batch_size=bs).sum()

        exact = np.stack([np.trace(jax.hessian(lambda u: f(u.reshape(w.shape)))(w.ravel())) for w in ws])
        batched = np.asarray(jax.vmap(lambda w: diag(w, 8))(ws))
        assert np.abs(batched - exact)[1:].max() > 0.05 * np.abs(exact).max(), \
            "jax no longer shows the vmap(lax.map(batch_size)) HVP defect: see docs/upstream/vmap_map_hvp.md"
        loss = lambda w, batch: f(w)
        lljax_trace = jax.jit(jax.vmap(lambda w: hessian.trace(loss, w, None, method="exact").trace))(ws)
        np.testing.assert_allclose(lljax_trace, exact, rtol=2e-4)


def test_vmapped_metrics_equal_loop_on_a_layernorm_model():
    """Every Hessian metric of an ensemble with LayerNorm (where the defect shows) equals a loop of single calls."""
    import flax.linen as nn

    class LN(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(3)(nn.LayerNorm()(nn.tanh(nn.Dense(6)(x))))

    module = LN()
    x = jax.random.normal(jax.random.key(3), (20, 5), jnp.float64)
    y = jax.random.randint(jax.random.key(4), (20,), 0, 3)
    members = [jax.tree.map(lambda p: p.astype(jnp.float64), module.init(k, x[:1])["params"])
               for k in jax.random.split(jax.random.key(5), 3)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *members)
    config = hessian.HessianConfig(top_k=2, lanczos_steps=10, density_runs=2, density_steps=8)
    metrics = lambda p, k: hessian.hessian_metrics(models.loss_fn(module, {}), p, (x, y), k, config)
    keys = jax.random.split(jax.random.key(6), 3)
    together = jax.jit(jax.vmap(metrics))(stacked, keys)
    for i, p in enumerate(members):
        single = jax.jit(metrics)(p, keys[i])
        for a, b in zip(single, together):
            np.testing.assert_allclose(b[i], a, rtol=1e-9, atol=1e-12)
        flat, unravel = ravel_pytree(p)
        dense = jax.hessian(lambda f: models.loss_fn(module, {})(unravel(f), (x, y)))(flat)
        np.testing.assert_allclose(together.trace[i], np.trace(dense), rtol=1e-10)  # exact trace (63 params)


@pytest.mark.parametrize("name,width", MODELS)
def test_layer_blocks_equal_the_dense_hessian_blocks(name, width):
    """Top eigenvalues, eigenvectors (up to sign) and traces of every layer's block against dense sub-blocks."""
    from lljax import pytrees

    loss_fn, params, batch, dense = tiny_model(name, width)
    offsets, start = {}, 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:  # ravel_pytree's order
        offsets[pytrees.path_name(path)] = (start, start + leaf.size)
        start += leaf.size
    blocks = hessian.layer_blocks(params)
    assert list(blocks) == sorted(blocks) and len(blocks) >= 2
    for name, pattern in blocks.items():
        block = hessian.block(loss_fn, params, pattern)
        idx = np.concatenate([np.arange(*offsets[leaf]) for leaf in block.params])
        sub = dense[np.ix_(idx, idx)]
        exact = np.linalg.eigh(sub)
        n = len(idx)
        pairs = hessian.top_eigenpairs(block.loss_fn, block.params, batch, 2, key=jax.random.key(3), num_steps=n)
        np.testing.assert_allclose(pairs.eigenvalues, exact[0][::-1][:2], rtol=1e-8)
        vectors = np.stack([ravel_pytree(jax.tree.map(lambda a: a[i], pairs.eigenvectors))[0] for i in range(2)])
        for v, u in zip(vectors, exact[1][:, ::-1].T[:2]):
            np.testing.assert_allclose(abs(v @ u), 1.0, rtol=1e-6)
        trace = hessian.trace(block.loss_fn, block.params, batch, method="exact")
        np.testing.assert_allclose(trace.trace, np.trace(sub), rtol=1e-10)
    with pytest.raises(LLJaxError, match="matches no leaf"):
        hessian.block(loss_fn, params, "NoSuchLayer")
