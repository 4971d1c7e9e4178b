"""Per-layer weight spectra of ONE model, no data: heavy-tailed self-regularisation metrics (Martin & Mahoney
2019-2021; Yang et al. 2023, KDD), matching WeightWatcher 0.7.7 (`weightwatcher.analyze()`, its default power-law
fit) on the same weights.

For every weight matrix W (a Dense kernel (in, out); a conv kernel (spatial..., in, out) gives one (in, out)
matrix per spatial position, pooled into one spectrum), the eigenvalues lambda of W^T W (the squared singular
values; M = min(in, out) per matrix) give:

- `alpha`, `xmin`, `ks_distance`, `alpha_sigma`, `num_pl_spikes`: the continuous power-law fit of the tail
  (WeightWatcher's 'ww' fit): over the eigenvalues above 1e-5, sorted, every eigenvalue but the largest is a
  candidate xmin; alpha = 1 + n / sum(ln(x_i / xmin)) over the n eigenvalues >= xmin, D = max |1 - (x/xmin)^(1 -
  alpha) - k/n| (1 where alpha <= 1), and the candidate with the smallest D wins (the first on ties).
  alpha_sigma = (alpha - 1) / sqrt(n), num_pl_spikes the eigenvalues >= xmin. Below 20 eigenvalues
  WeightWatcher 0.7.7 switches to its small-sample fit: candidates need a tail of at least 8, alpha is
  bias-corrected (1 + (n - 1) / sum), and the winner is again the smallest D (its tail-size objective is
  computed, then overwritten by that choice); with no candidate the whole spectrum is the tail. lljax matches
  both, the second as the code behaves.
- `alpha_se`: a bootstrap standard error of alpha (the eigenvalues resampled and refitted; WeightWatcher reports
  only alpha_sigma).
- `log_norm` = log10 sum lambda, `log_spectral_norm` = log10 lambda_max, `alpha_weighted` = alpha x
  log_spectral_norm, `log_alpha_norm` = log10 sum lambda^alpha, `stable_rank` = sum lambda / lambda_max,
  `entropy` = the matrix entropy -sum p ln p / ln rank, p = lambda / sum lambda + 1e-10, rank the number of
  singular values above max x N x float64 eps.
- `mp_softrank` = lambda_plus / lambda_max of a Marchenko-Pastur fit to the spectrum normalised to mean 1:
  WeightWatcher's brute-force search of sigma (0.05 to 2 times sigma_0 in steps of 0.01 sigma_0, sigma_0 from
  lambda_max) minimising the squared difference between the MP density and a linear-kernel density estimate
  (bandwidth 0.1, 1000 points, where it exceeds 0.01), polished by scipy's Nelder-Mead (`fmin`) from the best
  grid point, as scipy.optimize.brute does (`nelder_mead_1d`, step for step).

Conv kernels are scaled as WeightWatcher scales 2-D convolutions: W x sqrt(c / 2), c = 1 for a pooled layer
and the kernel's spatial size rf for slices (its `conv2d_count`), so pooled eigenvalues are halved;
`pool=False` keeps the slices apart (one spectrum per spatial position). 1-D conv kernels (k, in, out) are
treated the same way (k positions); WeightWatcher instead takes a torch Conv1d weight (out, in, k) whole as
one "matrix" (its SVD a batch of (in, k) matrices), which has no meaning here, so the two differ there. Layers
with fewer than `min_evals` (10; WeightWatcher 0.7.7's `analyze` default is 8) eigenvalues are skipped and
listed. Leaves that are not weight matrices are skipped: 1-D leaves (biases, normalisation scales) and leaves
named 'scale', 'bias', 'mean' or 'var'.
Attention projections and embedding tables are matrices as `lljax.layers` reads them: a query, key or value
kernel (in, heads, head_dim) is one (in, heads x head_dim) matrix, an attention output kernel (heads, head_dim,
out) one (heads x head_dim, out) matrix, an embedding (V, d) one matrix, as WeightWatcher reads the separate
query/key/value `nn.Linear` layers and the `nn.Embedding` of a PyTorch Transformer.

Eigenvalues: on a CPU numpy's SVD (float64, as WeightWatcher) through a host callback, which cannot hang as
jaxlib's batched CPU LAPACK kernels did under vmap on several devices (see `eigenvalues`); on accelerators
`jnp.linalg.svd`. The fits run in the parameters' dtype (float64 when they are).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lljax import layers as layouts
from lljax import pytrees
from lljax.errors import LLJaxError

MIN_EVALS = 10
EVALS_THRESH = 1e-5
SMALL_N = 20
SMALL_N_MIN_TAIL = 8
EPSILON = 1e-10
METRICS = ("alpha", "alpha_weighted", "alpha_sigma", "alpha_se", "xmin", "ks_distance", "num_pl_spikes", "log_norm",
           "log_spectral_norm", "log_alpha_norm", "stable_rank", "mp_softrank", "entropy", "num_evals")
# WeightWatcher's summary: the means of these over the layers (`get_summary()`)
SUMMARY = ("log_norm", "alpha", "alpha_weighted", "log_alpha_norm", "log_spectral_norm", "stable_rank",
           "mp_softrank")
SKIPPED_NAMES = ("scale", "bias", "mean", "var")


@dataclasses.dataclass(frozen=True)
class WeightLayer:
    """A weight matrix of the model (static, from its shapes). name: the module path ('Dense_0'); path: the leaf
    path ('Dense_0/kernel'); N >= M the matrix dimensions; rf the number of matrices pooled (conv positions);
    slice: the spatial position kept (`pool=False`), else None; kind: its `lljax.layers` kind."""

    name: str
    path: tuple
    shape: tuple
    N: int
    M: int
    rf: int
    conv: bool
    slice: int | None = None
    kind: str = "dense"

    @property
    def num_evals(self) -> int:
        return self.M * (self.rf if self.slice is None else 1)


def weight_layers(params: Any, pool: bool = True, min_evals: int = MIN_EVALS
                  ) -> tuple[list[WeightLayer], list[tuple[str, str]]]:
    """The weight matrices of a parameter pytree and the leaves skipped, with why ((name, reason) pairs). A
    pytree with no weight matrix is a one-line LLJaxError."""
    pytrees.check_params(params)
    layers, skipped = [], []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = pytrees.path_name(path)
        last = name.split("/")[-1].lower()
        shape = tuple(np.shape(leaf))
        kind = layouts.kind(path, shape)
        if kind == "vector" or last in SKIPPED_NAMES:
            continue
        module = "/".join(name.split("/")[:-1]) or name
        rf, a, b = layouts.matrix_shape(shape, kind)
        n, m = max(a, b), min(a, b)
        conv = kind in layouts.CONVOLUTIONS
        if pool or not conv:
            candidates = [WeightLayer(module, path, shape, n, m, rf, conv, kind=kind)]
        else:
            candidates = [WeightLayer(f"{module}[{s}]", path, shape, n, m, rf, conv, s, kind) for s in range(rf)]
        for layer in candidates:
            if layer.num_evals < min_evals:
                skipped.append((layer.name, f"{layer.num_evals} eigenvalues < min_evals {min_evals}"))
            else:
                layers.append(layer)
    if not layers and not skipped:
        raise LLJaxError("the parameters hold no weight matrix (a leaf with at least 2 dimensions that is not a "
                         "bias or scale)")
    return layers, skipped


def _matrices(leaf, layer: WeightLayer) -> jax.Array:
    """(S, in, out) the layer's matrices, scaled as WeightWatcher scales conv layers: W x sqrt(c / 2) with c = 1
    for a pooled layer and c = rf for slices (its `conv2d_count`)."""
    mats = layouts.matrices(leaf, layer.kind)
    if layer.slice is not None:
        mats = mats[layer.slice:layer.slice + 1]
    if layer.conv:
        count = 1 if layer.slice is None else layer.rf
        mats = mats * jnp.sqrt(jnp.asarray(count / 2.0, mats.dtype))
    return mats


def _host_eigenvalues(mats: np.ndarray) -> np.ndarray:
    """Squared singular values of a batch of matrices (..., in, out), computed by numpy's LAPACK in float64 (as
    WeightWatcher computes them), returned in the input's dtype."""
    mats = np.asarray(mats)
    return np.ascontiguousarray((np.linalg.svd(mats.astype(np.float64), compute_uv=False) ** 2).astype(mats.dtype))


def eigenvalues(leaf, layer: WeightLayer) -> jax.Array:
    """(num_evals,) the layer's pooled eigenvalues, ascending.

    On a CPU the SVD runs in numpy (LAPACK, float64) through `jax.pure_callback`, batched over members under
    vmap: XLA:CPU's own batched LAPACK kernels deadlocked under vmap on several devices (see `lljax.hessian`);
    a host callback does not use XLA's thread pool, and a pure-JAX Jacobi solver was measured 200x slower
    (1.2 s per 256 x 256 matrix). Elsewhere `jnp.linalg.svd` on the device."""
    mats = _matrices(jnp.asarray(leaf), layer)
    shape = (mats.shape[0], min(mats.shape[1:]))
    if jax.default_backend() == "cpu" and mats.dtype == jnp.float64:
        # float64 arrays cross as their two uint32 words: JAX rounds float64 callback arguments and results to
        # float32 in a callback thread where x64 is off (a thread-local setting, as in `with jax.enable_x64()`)
        def host(words):
            mats64 = np.ascontiguousarray(words).view(np.float64)[..., 0]
            return _host_eigenvalues(mats64).view(np.uint32).reshape(*mats64.shape[:-2], -1, 2)

        words = jax.pure_callback(host, jax.ShapeDtypeStruct((*shape, 2), jnp.uint32),
                                  jax.lax.bitcast_convert_type(mats, jnp.uint32), vmap_method="expand_dims")
        evals = jax.lax.bitcast_convert_type(words, jnp.float64)
    elif jax.default_backend() == "cpu":
        evals = jax.pure_callback(_host_eigenvalues, jax.ShapeDtypeStruct(shape, mats.dtype), mats,
                                  vmap_method="expand_dims")
    else:
        evals = jnp.linalg.svd(mats, compute_uv=False) ** 2
    return jnp.sort(evals.reshape(-1))


class PowerLaw(NamedTuple):
    alpha: jax.Array
    xmin: jax.Array
    ks_distance: jax.Array
    sigma: jax.Array
    num_pl_spikes: jax.Array


def powerlaw_fit(evals) -> PowerLaw:
    """WeightWatcher 0.7.7's default power-law fit (module docstring) of ascending eigenvalues (L,)."""
    x = jnp.asarray(evals)
    L = x.shape[0]
    dtype = x.dtype
    valid = x > EVALS_THRESH
    zeros = jnp.sum(~valid)
    n0 = L - zeros  # eigenvalues in the fit
    logs = jnp.log(jnp.where(valid, x, 1))
    index = jnp.arange(L)
    tail = (L - index).astype(dtype)  # eigenvalues >= x[i] (the data are sorted)
    suffix = jnp.cumsum(logs[::-1])[::-1]
    s = suffix - tail * logs  # sum_j ln(x_j / x_i) over the tail
    candidate = valid & (index < L - 1)
    small = n0 < SMALL_N
    small_ok = candidate & (tail >= SMALL_N_MIN_TAIL) & (s > 1e-12)
    alphas_std = 1 + tail / jnp.where(s > 0, s, jnp.nan)
    alphas_small = jnp.where(small_ok, 1 + (tail - 1) / jnp.where(s > 0, s, 1), 0.0)
    alphas = jnp.where(small, alphas_small, alphas_std)
    # D_i = max over k >= i of |1 - (x_k / x_i)^(1 - alpha_i) - (k - i) / n_i|
    ratio = x[None, :] / jnp.where(valid, x, 1)[:, None]  # (i, k)
    offset = (index[None, :] - index[:, None]).astype(dtype)
    theory = 1 - jnp.where(offset >= 0, ratio, 1) ** (1 - alphas[:, None])
    deviation = jnp.where(offset >= 0, jnp.abs(theory - offset / tail[:, None]), 0)
    D = jnp.max(deviation, axis=1)
    usable = candidate & (alphas > 1) & (~small | small_ok)
    D = jnp.where(usable, D, 1.0)
    # the small-sample fit with no candidate takes the whole spectrum as its tail
    first = zeros
    fallback_alpha = 1 + (n0 - 1) / jnp.where(s[first] > 1e-12, s[first], jnp.nan)
    none = small & ~jnp.any(small & usable)
    alphas = jnp.where(none & (index == first), fallback_alpha, alphas)
    fallback_D = jnp.max(jnp.where(offset[first] >= 0, jnp.abs(
        1 - jnp.where(offset[first] >= 0, ratio[first], 1) ** (1 - fallback_alpha) - offset[first] / tail[first]),
        0))
    D = jnp.where(none & (index == first), fallback_D, D)
    D = jnp.where(index >= first, D, jnp.inf)  # only the fitted eigenvalues are candidates
    best = jnp.argmin(D)
    alpha = alphas[best]
    xmin = x[best]
    return PowerLaw(alpha, xmin, D[best], (alpha - 1) / jnp.sqrt(tail[best]), jnp.sum(x >= xmin))


def _kde_linear(points, grid, bandwidth):
    """The linear-kernel density estimate of sklearn's KernelDensity(kernel='linear') at `grid`."""
    u = jnp.abs(grid[:, None] - points[None, :]) / bandwidth
    return jnp.sum(jnp.maximum(1 - u, 0), axis=1) / (points.shape[0] * bandwidth)


def nelder_mead_1d(f, x0, xtol: float = 1e-4, ftol: float = 1e-4, max_evals: int = 200) -> jax.Array:
    """scipy.optimize.fmin (Nelder-Mead, its defaults) in one dimension, step for step: the polish
    scipy.optimize.brute applies to its best grid point."""
    dtype = jnp.result_type(x0)
    x1 = jnp.where(x0 != 0, x0 * 1.05, 0.00025)
    sim = jnp.stack([x0, x1]).astype(dtype)
    fsim = jnp.stack([f(x0), f(x1)])
    order = jnp.argsort(fsim, stable=True)
    state = (sim[order], fsim[order], jnp.asarray(2), jnp.asarray(1))

    def unfinished(state):
        sim, fsim, calls, iterations = state
        converged = (jnp.abs(sim[1] - sim[0]) <= xtol) & (jnp.abs(fsim[0] - fsim[1]) <= ftol)
        return ~converged & (calls < max_evals) & (iterations < max_evals)

    def step(state):
        sim, fsim, calls, iterations = state
        best, worst = sim[0], sim[1]
        xr = 2 * best - worst
        fxr = f(xr)
        xe = 3 * best - 2 * worst  # expansion, tried when the reflection beats the best point
        fxe = f(xe)
        outside = fxr < fsim[1]
        xc = jnp.where(outside, 1.5 * best - 0.5 * worst, 0.5 * best + 0.5 * worst)  # contraction
        fxc = f(xc)
        shrink_to = best + 0.5 * (worst - best)
        fshrink = f(shrink_to)
        expanded = fxr < fsim[0]
        contracted = jnp.where(outside, fxc <= fxr, fxc < fsim[1])
        new_x = jnp.where(expanded, jnp.where(fxe < fxr, xe, xr), jnp.where(contracted, xc, shrink_to))
        new_f = jnp.where(expanded, jnp.where(fxe < fxr, fxe, fxr), jnp.where(contracted, fxc, fshrink))
        calls = calls + 2
        sim, fsim = jnp.stack([best, new_x]), jnp.stack([fsim[0], new_f])
        order = jnp.argsort(fsim, stable=True)
        return sim[order], fsim[order], calls, iterations + 1

    return jax.lax.while_loop(unfinished, step, state)[0][0]


def mp_softrank(evals, Q: float, bandwidth: float = 0.1, grid_size: int = 1000) -> jax.Array:
    """lambda_plus / lambda_max of WeightWatcher's Marchenko-Pastur fit (module docstring) to eigenvalues (L,) of
    matrices with aspect ratio Q = N / M."""
    x = jnp.asarray(evals)
    dtype = x.dtype
    scaled = x * (x.shape[0] / jnp.sum(x))  # WeightWatcher's rescaling: mean eigenvalue 1
    lmax = jnp.max(scaled)
    quarter = Q == 1
    points = jnp.sqrt(scaled) if quarter else scaled
    xde = jnp.linspace(0, jnp.max(points) + 0.5, grid_size).astype(dtype)
    yde = _kde_linear(points, xde, bandwidth)
    good = yde > 0.01
    peak = xde[jnp.argmax(jnp.where(good, yde, -jnp.inf))]
    good_max = jnp.max(jnp.where(good, xde, -jnp.inf))

    def objective(sigma):
        if quarter:
            ymp = jnp.nan_to_num(jnp.sqrt(4 - xde ** 2) / (jnp.pi * sigma ** 2))
            resid = ymp - yde
        else:
            b = (sigma * (1 + jnp.sqrt(1 / Q))) ** 2
            a = (sigma * (1 - jnp.sqrt(1 / Q))) ** 2
            ymp = jnp.nan_to_num(Q / (2 * jnp.pi * sigma ** 2 * xde) * jnp.sqrt((b - xde) * (xde - a)))
            bad = (b < peak) | (b > good_max) | (a > peak)
            resid = jnp.where(bad, 1000.0, ymp - yde)
        return jnp.sum(jnp.where(good, resid, 0) ** 2)

    sigma0 = jnp.sqrt(lmax / (1 + 1 / math.sqrt(Q)) ** 2)
    grid = 0.05 * sigma0 + jnp.arange(195) * (0.01 * sigma0)  # scipy.optimize.brute's slice(0.05, 2.0, 0.01) x s0
    start = grid[jnp.argmin(jax.vmap(objective)(grid))]
    sigma = nelder_mead_1d(objective, start)
    bulk_max = (sigma * (1 + 1 / math.sqrt(Q))) ** 2
    return bulk_max / lmax


def matrix_entropy(evals, N: int) -> jax.Array:
    """WeightWatcher's matrix entropy of a spectrum (module docstring)."""
    x = jnp.asarray(evals)
    sv = jnp.sqrt(x)
    rank = jnp.sum(sv > jnp.max(sv) * N * np.finfo(np.float64).eps).astype(x.dtype)
    p = x / jnp.sum(x) + EPSILON
    return -jnp.sum(p * jnp.log(p)) / jnp.log(rank + EPSILON)


def spectrum_metrics(evals, N: int, M: int, key: jax.Array | None = None, bootstrap: int = 0) -> dict:
    """Every metric of one spectrum (ascending eigenvalues (L,) of matrices N x M): a dict of scalars."""
    x = jnp.asarray(evals)
    fit = powerlaw_fit(x)
    total, top = jnp.sum(x), jnp.max(x)
    log_spectral = jnp.log10(top)
    out = {"alpha": fit.alpha, "alpha_weighted": fit.alpha * log_spectral, "alpha_sigma": fit.sigma,
           "xmin": fit.xmin, "ks_distance": fit.ks_distance, "num_pl_spikes": fit.num_pl_spikes.astype(x.dtype),
           "log_norm": jnp.log10(total), "log_spectral_norm": log_spectral,
           "log_alpha_norm": jnp.log10(jnp.sum(x ** fit.alpha)), "stable_rank": total / top,
           "mp_softrank": mp_softrank(x, N / M), "entropy": matrix_entropy(x, N),
           "num_evals": jnp.asarray(x.shape[0], x.dtype)}
    if bootstrap and key is not None:
        draws = jax.random.randint(key, (bootstrap, x.shape[0]), 0, x.shape[0])
        alphas = jax.lax.map(lambda idx: powerlaw_fit(jnp.sort(x[idx])).alpha, draws)
        out["alpha_se"] = jnp.std(alphas, ddof=1)
    else:
        out["alpha_se"] = jnp.full((), jnp.nan, x.dtype)
    return out


class LayerMetrics(NamedTuple):
    """metrics: layer name -> {metric: value}; skipped: (layer name, reason) pairs."""

    metrics: dict
    skipped: list


def layer_metrics(params: Any, *, pool: bool = True, min_evals: int = MIN_EVALS, key: jax.Array | None = None,
                  bootstrap: int = 100) -> LayerMetrics:
    """Every weight metric of every weight matrix of ONE model's parameters (a Flax `params` collection or any
    pytree of arrays), keyed by layer name; `key` draws the bootstrap of alpha (`bootstrap` resamples; no key:
    no bootstrap). Works under jit and vmap (layers come from the shapes)."""
    layers, skipped = weight_layers(params, pool, min_evals)
    leaves = {path: leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    keys = [None] * len(layers) if key is None else list(jax.random.split(key, max(len(layers), 1)))
    out = {}
    for layer, k in zip(layers, keys):
        evals = eigenvalues(leaves[layer.path], layer)
        out[layer.name] = spectrum_metrics(evals, layer.N, layer.M, k, bootstrap if key is not None else 0)
    return LayerMetrics(out, skipped)


def summary(metrics: dict) -> dict:
    """WeightWatcher's summary: the mean over layers of every metric in SUMMARY (NaN without layers)."""
    return {name: jnp.mean(jnp.stack([m[name] for m in metrics.values()])) if metrics else jnp.nan
            for name in SUMMARY}
