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
           "log_spectral_norm", "log_alpha_norm", "stable_rank", "mp_softrank", "entropy", "num_evals", "alpha_xmax",
           "etpl_beta", "etpl_lambda", "etpl_ks", "exp_lambda", "exp_ks")
# Yang et al. 2023's data-free model-selection metrics (`selection_metrics`), layer means beside SUMMARY
SELECTION = ("alpha_xmax", "etpl_beta", "etpl_lambda", "etpl_ks", "exp_lambda", "exp_ks")
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


def eigenvalues(leaf, layer: WeightLayer, dtype=None) -> jax.Array:
    """(num_evals,) the layer's pooled eigenvalues, ascending (in `dtype`: the matrices, scaled in the leaf's
    dtype, are cast to it first).

    On a CPU the SVD runs in numpy (LAPACK, float64) through `jax.pure_callback`, batched over members under
    vmap: XLA:CPU's own batched LAPACK kernels deadlocked under vmap on several devices (see `lljax.hessian`);
    a host callback does not use XLA's thread pool, and a pure-JAX Jacobi solver was measured 200x slower
    (1.2 s per 256 x 256 matrix). Elsewhere `jnp.linalg.svd` on the device."""
    mats = _matrices(jnp.asarray(leaf), layer)
    mats = mats if dtype is None else mats.astype(dtype)
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


# --- Truncated power-law and exponential fits (Yang et al. 2023, KDD; the `powerlaw` package 1.5 as reference) ---

DISTRIBUTIONS = ("power_law", "power_law_xmax", "truncated_power_law", "exponential")
HISTOGRAM_BINS = 100
PEAK_WINDOW = (0.95, 1.05)
TPL_NEWTON_STEPS = 40
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(16)
_TPL_PANELS = 32  # the normaliser: 32 Gauss-Legendre panels of 16 nodes over ln(x / xmin) in [0, U]
_CDF_NODES, _CDF_WEIGHTS = np.polynomial.legendre.leggauss(8)  # the CDF: 8 nodes between neighbouring eigenvalues
_TAIL_EFOLDS = 50.0  # the normaliser's integrand is cut where it has fallen by e^-50
OUT_OF_RANGE = -math.log(1e-307)  # `powerlaw`'s negative log-likelihood per point outside its parameter range


class SpectrumFit(NamedTuple):
    """One distribution fitted to a spectrum's tail: exponent (alpha of a power law, beta of the truncated power
    law, NaN for the exponential), lam (Lambda of the truncated power law and the exponential, NaN for power
    laws), xmin, ks_distance over [xmin, xmax], num_tail (the eigenvalues >= xmin)."""

    exponent: jax.Array
    lam: jax.Array
    xmin: jax.Array
    ks_distance: jax.Array
    num_tail: jax.Array


def histogram_peak(evals, bins: int = HISTOGRAM_BINS) -> jax.Array:
    """10 ** (the left edge of the fullest bin of a `bins`-bin histogram of log10 of the eigenvalues above 1e-5),
    binned as numpy.histogram bins (the first fullest bin on ties): the centre of Yang et al.'s xmin window."""
    x = jnp.asarray(evals)
    valid = x > EVALS_THRESH
    logs = jnp.log10(jnp.where(valid, x, 1))
    lo = jnp.min(jnp.where(valid, logs, jnp.inf))
    hi = jnp.max(jnp.where(valid, logs, -jnp.inf))
    lo, hi = jnp.where(lo == hi, lo - 0.5, lo), jnp.where(lo == hi, hi + 0.5, hi)
    edges = jnp.linspace(lo, hi, bins + 1)
    index = jnp.floor((logs - lo) / (hi - lo) * bins).astype(jnp.int32)
    index = jnp.clip(jnp.where(index == bins, bins - 1, index), 0, bins - 1)
    index = index - (logs < edges[index])
    index = index + ((logs >= edges[index + 1]) & (index != bins - 1))
    counts = jnp.zeros(bins, jnp.int32).at[index].add(valid.astype(jnp.int32))
    return 10 ** edges[jnp.argmax(counts)]


def _tpl_quadrature(beta, lam, xmin):
    """Nodes (ln x, x) and log weights of a quadrature of Z = int_xmin^inf x^-beta e^(-lam x) dx (x = xmin e^u,
    composite Gauss-Legendre over u in [0, U], U where the integrand has fallen by e^-50): log Z is the
    logsumexp of the log weights."""
    dtype = jnp.result_type(beta)
    s = 1 - beta
    a = lam * xmin
    upper = jnp.minimum(_TAIL_EFOLDS / jnp.maximum(-s, 1e-30), jnp.log1p(_TAIL_EFOLDS / a))
    width = upper / _TPL_PANELS
    left = jnp.arange(_TPL_PANELS, dtype=dtype) * width
    u = (left[:, None] + (jnp.asarray(_GL_NODES, dtype) + 1) * (width / 2)).reshape(-1)
    log_w = jnp.tile(jnp.log(jnp.asarray(_GL_WEIGHTS, dtype) * (width / 2)), _TPL_PANELS)
    log_x = jnp.log(xmin) + u
    log_terms = log_w + s * log_x - a * jnp.exp(u)  # x^-beta e^(-lam x) dx, dx = x du
    return log_x, jnp.exp(log_x), log_terms


def tpl_log_normaliser(beta, lam, xmin) -> jax.Array:
    """ln int_xmin^inf x^-beta e^(-lam x) dx = ln(lam^(beta - 1) Gamma(1 - beta, lam xmin)), for beta >= 1,
    lam > 0 (also beta < 1), by quadrature."""
    return jax.nn.logsumexp(_tpl_quadrature(beta, lam, xmin)[2])


def _tpl_newton(mean_log, mean_x, xmin, steps: int = TPL_NEWTON_STEPS):
    """(beta, lam) maximising the truncated power law's mean log-likelihood -beta mean_log - lam mean_x - ln Z
    over beta >= 1, lam > 0: projected Newton steps (a concave problem: an exponential family in (beta, lam))
    with a line search, started where `powerlaw` starts (the power law's alpha, 1 / mean x)."""
    dtype = jnp.result_type(mean_log)

    def loglik(p):
        return -p[0] * mean_log - p[1] * mean_x - tpl_log_normaliser(p[0], p[1], xmin)

    def step(_, p):
        log_x, x, log_terms = _tpl_quadrature(p[0], p[1], xmin)
        prob = jax.nn.softmax(log_terms)
        stats = jnp.stack([log_x, x])
        mean = stats @ prob
        centred = stats - mean[:, None]
        hess = -(centred * prob) @ centred.T  # d2 loglik = -Cov(ln x, x) under the model
        grad = mean - jnp.stack([mean_log, mean_x])
        full = -jnp.linalg.solve(hess, grad)
        lam_only = jnp.stack([jnp.zeros((), dtype), -grad[1] / hess[1, 1]])
        d = jnp.where((p[0] <= 1) & (full[0] < 0), lam_only, full)
        t_beta = jnp.where(d[0] < 0, (p[0] - 1) / jnp.where(d[0] < 0, -d[0], 1), jnp.inf)
        t_lam = jnp.where(d[1] < 0, 0.9 * p[1] / jnp.where(d[1] < 0, -d[1], 1), jnp.inf)
        t_max = jnp.minimum(1.0, jnp.minimum(t_beta, t_lam))
        ts = jnp.concatenate([t_max * 0.5 ** jnp.arange(10, dtype=dtype), jnp.zeros((1,), dtype)])
        trials = p[None, :] + ts[:, None] * d[None, :]
        trials = trials.at[:, 0].set(jnp.maximum(trials[:, 0], 1))
        values = jax.vmap(loglik)(trials)
        values = jnp.where(jnp.isfinite(values), values, -jnp.inf)
        return trials[jnp.argmax(values)]

    beta0 = jnp.maximum(1 + 1 / (mean_log - jnp.log(xmin)), 1)
    return jax.lax.fori_loop(0, steps, step, jnp.stack([beta0, 1 / mean_x]))


def _tpl_cdf_segments(x, beta, lam, xmin):
    """(L - 1,) int_{x_k}^{x_k+1} t^-beta e^(-lam t) dt / (xmin^(1 - beta) e^(-lam xmin)) between neighbouring
    eigenvalues (8-node Gauss-Legendre in ln t)."""
    dtype = x.dtype
    lx = jnp.log(x)
    lo, hi = lx[:-1], lx[1:]
    v = (lo + hi)[:, None] / 2 + (hi - lo)[:, None] / 2 * jnp.asarray(_CDF_NODES, dtype)[None, :]
    f = jnp.exp((1 - beta) * (v - jnp.log(xmin)) - lam * (jnp.exp(v) - xmin))
    return (f @ jnp.asarray(_CDF_WEIGHTS, dtype)) * (hi - lo) / 2


def _window_candidates(x, valid):
    """Yang et al.'s xmin candidates: the eigenvalues in [0.95, 1.05] x the histogram peak but the largest there
    (as `powerlaw.Fit(xmin=(low, high))` takes them)."""
    peak = histogram_peak(x)
    inside = valid & (x >= PEAK_WINDOW[0] * peak) & (x <= PEAK_WINDOW[1] * peak)
    index = jnp.arange(x.shape[0])
    last = jnp.max(jnp.where(inside, index, -1))
    return inside & (index < last)


def _search(x, candidates, fit_one):
    """The candidate xmin with the smallest KS distance (the first on ties): fit_one(i) -> (exponent, lam, D)
    for xmin = x[i], run over the candidates only (a while loop from the first to the last)."""
    dtype = x.dtype
    index = jnp.arange(x.shape[0])
    first = jnp.min(jnp.where(candidates, index, x.shape[0]))
    last = jnp.max(jnp.where(candidates, index, -1))
    nan = jnp.full((), jnp.nan, dtype)

    def body(state):
        i, best = state
        exponent, lam, d = fit_one(i)
        better = candidates[i] & (d < best[2])  # a NaN D never wins
        new = (exponent, lam, d, i.astype(dtype))
        return i + 1, tuple(jnp.where(better, a, b) for a, b in zip(new, best))

    best = (nan, nan, jnp.full((), jnp.inf, dtype), jnp.asarray(-1, dtype))
    _, best = jax.lax.while_loop(lambda s: s[0] <= last, body, (first, best))
    i = best[3].astype(jnp.int32)
    xmin = jnp.where(i >= 0, x[jnp.maximum(i, 0)], jnp.nan)
    best = (best[0], best[1], jnp.where(i >= 0, best[2], jnp.nan))
    return SpectrumFit(best[0], best[1], xmin, best[2], jnp.sum(x >= xmin).astype(dtype))


def _tail_statistics(x, valid, i):
    """Mask of the tail x >= x[i], its size, the empirical CDF (k - i) / n at each eigenvalue."""
    tail = valid & (x >= x[i])
    n = jnp.sum(tail).astype(x.dtype)
    empirical = (jnp.cumsum(tail) - 1).astype(x.dtype) / n
    return tail, n, empirical


def _tpl_nelder_mead(mean_log, mean_x, xmin, n):
    """(beta, lam) as `powerlaw` 1.5 fits them: scipy's fmin on the negative log-likelihood from (the power
    law's alpha, 1 / mean x), every point outside beta > 1, lam > 0 scored as likelihoods of 1e-307."""
    dtype = jnp.result_type(mean_log)

    def objective(p):
        ok = (p[0] > 1) & (p[1] > 0)
        beta, lam = jnp.where(ok, p[0], 2), jnp.where(ok, p[1], 1)
        value = n * (beta * mean_log + lam * mean_x + tpl_log_normaliser(beta, lam, xmin))
        return jnp.where(ok, value, n * OUT_OF_RANGE)

    start = jnp.stack([1 + 1 / (mean_log - jnp.log(xmin)), 1 / mean_x]).astype(dtype)
    return nelder_mead(objective, start)


def _truncated_power_law_fit(x, valid, candidates, optimizer, steps):
    xmax = x[-1]

    def fit_one(i):
        xmin = x[i]
        tail, n, empirical = _tail_statistics(x, valid, i)
        mean_log = jnp.sum(jnp.where(tail, jnp.log(jnp.where(tail, x, 1)), 0)) / n
        mean_x = jnp.sum(jnp.where(tail, x, 0)) / n
        if optimizer == "newton":
            beta, lam = _tpl_newton(mean_log, mean_x, xmin, steps)
        else:
            beta, lam = _tpl_nelder_mead(mean_log, mean_x, xmin, n)
        segments = _tpl_cdf_segments(x, beta, lam, xmin)
        segments = jnp.where(tail[:-1], segments, 0)
        cumulative = jnp.concatenate([jnp.zeros((1,), x.dtype), jnp.cumsum(segments)])
        theory = cumulative / cumulative[-1]
        d = jnp.max(jnp.where(tail & (x <= xmax), jnp.abs(theory - empirical), 0))
        return beta, lam, d

    return _search(x, candidates, fit_one)


def _exponential_fit(x, valid, candidates, optimizer):
    xmax = x[-1]

    def fit_one(i):
        xmin = x[i]
        tail, n, empirical = _tail_statistics(x, valid, i)
        excess = jnp.sum(jnp.where(tail, x - xmin, 0))
        if optimizer == "newton":
            lam = n / excess  # the MLE, closed form
        else:  # `powerlaw` 1.5: scipy's fmin from 1 / mean x
            def objective(p):
                lam = jnp.where(p[0] > 0, p[0], 1)
                return jnp.where(p[0] > 0, -n * jnp.log(lam) + lam * excess, n * OUT_OF_RANGE)

            lam = nelder_mead(objective, (n / jnp.sum(jnp.where(tail, x, 0)))[None])[0]
        theory = jnp.expm1(-lam * (x - xmin)) / jnp.expm1(-lam * (xmax - xmin))
        d = jnp.max(jnp.where(tail, jnp.abs(theory - empirical), 0))
        return jnp.full((), jnp.nan, x.dtype), lam, d

    return _search(x, candidates, fit_one)


def _power_law_xmax_fit(x, valid, candidates):
    """`powerlaw.Fit(evals, xmax=max(evals))`'s power law: alpha = 1 + n / sum ln(x / xmin) (its likelihood's
    normaliser ignores xmax), the KS distance to the power law truncated to [xmin, xmax]."""
    L = x.shape[0]
    dtype = x.dtype
    index = jnp.arange(L)
    logs = jnp.log(jnp.where(valid, x, 1))
    tail = (L - index).astype(dtype)
    s = jnp.cumsum(logs[::-1])[::-1] - tail * logs
    alphas = 1 + tail / jnp.where(s > 0, s, jnp.nan)
    safe = jnp.where(valid, x, 1)
    offset = (index[None, :] - index[:, None]).astype(dtype)
    ratio = jnp.where(offset >= 0, x[None, :] / safe[:, None], 1)
    theory = -jnp.expm1((1 - alphas[:, None]) * jnp.log(ratio)) / -jnp.expm1(
        (1 - alphas[:, None]) * jnp.log(x[-1] / safe)[:, None])
    D = jnp.max(jnp.where(offset >= 0, jnp.abs(theory - offset / tail[:, None]), 0), axis=1)
    usable = candidates & (alphas > 1)
    D = jnp.where(candidates, jnp.where(usable, D, 1 + D), jnp.inf)
    best = jnp.argmin(D)
    D_best = jnp.where(usable[best], D[best], jnp.nan)
    return SpectrumFit(alphas[best], jnp.full((), jnp.nan, dtype), x[best], D_best, tail[best])


def fit(evals, distribution: str = "truncated_power_law", xmin: str | None = None, optimizer: str = "nelder_mead",
        steps: int = TPL_NEWTON_STEPS) -> SpectrumFit:
    """Fit one distribution to the tail of ascending eigenvalues (L,) (those <= 1e-5 left out), as Yang et al.
    2023 (KDD) fit them with the `powerlaw` package 1.5; pure JAX (jit, vmap), in the eigenvalues' dtype.

    distribution: 'power_law' (WeightWatcher 0.7.7's fit, `powerlaw_fit`), 'power_law_xmax' (xmax = the
    largest eigenvalue: the paper's PL_alpha, `powerlaw.Fit(evals, xmax=max(evals))`), 'truncated_power_law'
    (E-TPL: p(x) ~ x^-beta e^(-Lambda x) on x >= xmin, maximum likelihood with beta >= 1 and Lambda > 0 as
    `powerlaw`'s optimiser keeps them, by projected Newton steps; a spectrum whose optimum has beta < 1 gets
    beta = 1) or 'exponential' (p(x) = Lambda e^(-Lambda (x - xmin)), Lambda = 1 / mean(x - xmin)).
    xmin: the candidates, 'all' (every eigenvalue but the largest) or 'peak' (the paper's window: the
    eigenvalues in [0.95, 1.05] x `histogram_peak`, the largest there left out); default 'all' for the power
    laws, 'peak' for the others. The candidate with the smallest KS distance over [xmin, xmax] wins (the first
    on ties); no candidate: NaN.
    optimizer (truncated power law, exponential): 'nelder_mead' fits every candidate as `powerlaw` 1.5 does
    (scipy's fmin step for step from its starting point, `nelder_mead`: its tolerances of 1e-4 decide which
    candidate wins where the KS distances are close, as on the reference's bad spectrum) or 'newton' (the
    exact maximum-likelihood estimate: `steps` projected Newton steps, the exponential's closed form)."""
    if distribution not in DISTRIBUTIONS:
        raise LLJaxError(f"unknown distribution {distribution!r}; one of {', '.join(DISTRIBUTIONS)}")
    if optimizer not in ("nelder_mead", "newton"):
        raise LLJaxError(f"optimizer must be 'nelder_mead' or 'newton', not {optimizer!r}")
    if xmin not in (None, "all", "peak"):
        raise LLJaxError(f"xmin must be 'all' or 'peak', not {xmin!r}")
    x = jnp.sort(jnp.asarray(evals))
    if x.ndim != 1 or x.shape[0] < 2 or not jnp.issubdtype(x.dtype, jnp.floating):
        raise LLJaxError(f"fit wants a 1-D float array of at least 2 eigenvalues, not shape {x.shape} {x.dtype}")
    if distribution == "power_law" and xmin in (None, "all"):
        f = powerlaw_fit(x)
        return SpectrumFit(f.alpha, jnp.full((), jnp.nan, x.dtype), f.xmin, f.ks_distance,
                           f.num_pl_spikes.astype(x.dtype))
    valid = x > EVALS_THRESH
    if xmin is None:
        xmin = "all" if distribution.startswith("power_law") else "peak"
    index = jnp.arange(x.shape[0])
    candidates = (valid & (index < x.shape[0] - 1)) if xmin == "all" else _window_candidates(x, valid)
    if distribution == "power_law":
        raise LLJaxError("the 'power_law' fit (WeightWatcher's) searches every eigenvalue: xmin='all'")
    if distribution == "power_law_xmax":
        return _power_law_xmax_fit(x, valid, candidates)
    if distribution == "exponential":
        return _exponential_fit(x, valid, candidates, optimizer)
    return _truncated_power_law_fit(x, valid, candidates, optimizer, steps)


def _selection_fits(x) -> dict:
    """SELECTION of one ascending spectrum (L,) (zeros on the left are padding: below 1e-5, left out)."""
    valid = x > EVALS_THRESH
    index = jnp.arange(x.shape[0])
    window = _window_candidates(x, valid)
    power = _power_law_xmax_fit(x, valid, valid & (index < x.shape[0] - 1))
    tpl = _truncated_power_law_fit(x, valid, window, "nelder_mead", TPL_NEWTON_STEPS)
    exp = _exponential_fit(x, valid, window, "nelder_mead")
    return {"alpha_xmax": power.exponent, "etpl_beta": tpl.exponent, "etpl_lambda": tpl.lam,
            "etpl_ks": tpl.ks_distance, "exp_lambda": exp.lam, "exp_ks": exp.ks_distance}


def selection_metrics(spectra: list) -> dict:
    """Yang et al. 2023's fits (`fit`'s defaults: power_law_xmax, truncated_power_law, exponential) of several
    ascending spectra (each (L_i,)): {metric: (len(spectra),)}. The spectra are padded on the left with zeros to
    one length and fitted in one `lax.map`, so the fits compile once, not once per layer."""
    length = max(x.shape[0] for x in spectra)
    padded = jnp.stack([jnp.pad(x, (length - x.shape[0], 0)) for x in spectra])
    return jax.lax.map(_selection_fits, padded)


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


def nelder_mead(f, x0, xtol: float = 1e-4, ftol: float = 1e-4) -> jax.Array:
    """scipy.optimize.fmin (Nelder-Mead, its defaults: initial steps 5%, at most 200 N iterations and calls) in N
    dimensions, step for step, as the `powerlaw` package fits a distribution's parameters (N,). Every branch's
    point is evaluated and one kept, so `f` runs N + 4 times a step."""
    x0 = jnp.asarray(x0)
    dtype = x0.dtype
    n = x0.shape[0]
    max_calls = 200 * n
    steps = jnp.where(x0 != 0, x0 * 1.05, 0.00025)
    sim = jnp.concatenate([x0[None], jnp.where(jnp.eye(n, dtype=bool), steps[None, :], x0[None, :])])
    fsim = jax.vmap(f)(sim)
    order = jnp.argsort(fsim, stable=True)
    state = (sim[order], fsim[order], jnp.asarray(n + 1), jnp.asarray(1))

    def unfinished(state):
        sim, fsim, calls, iterations = state
        converged = (jnp.max(jnp.abs(sim[1:] - sim[0])) <= xtol) & (jnp.max(jnp.abs(fsim[0] - fsim[1:])) <= ftol)
        return ~converged & (calls < max_calls) & (iterations < max_calls)

    def step(state):
        sim, fsim, calls, iterations = state
        xbar = jnp.sum(sim[:-1], axis=0) / n
        xr = 2 * xbar - sim[-1]
        xe = 3 * xbar - 2 * sim[-1]
        xc = 1.5 * xbar - 0.5 * sim[-1]
        xcc = 0.5 * xbar + 0.5 * sim[-1]
        shrunk = sim[0] + 0.5 * (sim[1:] - sim[0])
        fxr, fxe, fxc, fxcc = jax.vmap(f)(jnp.stack([xr, xe, xc, xcc]))
        fshrunk = jax.vmap(f)(shrunk)
        expand = fxr < fsim[0]
        reflect = ~expand & (fxr < fsim[-2])
        outside = ~expand & ~reflect & (fxr < fsim[-1])
        inside = ~expand & ~reflect & ~outside
        contract_ok = (outside & (fxc <= fxr)) | (inside & (fxcc < fsim[-1]))
        shrink = (outside | inside) & ~contract_ok
        last = jnp.where(expand, jnp.where(fxe < fxr, 0, 1), jnp.where(reflect, 1, jnp.where(outside, 2, 3)))
        new_x = jnp.stack([xe, xr, xc, xcc])[last]
        new_f = jnp.stack([fxe, fxr, fxc, fxcc])[last]
        sim = jnp.where(shrink, jnp.concatenate([sim[:1], shrunk]), sim.at[-1].set(new_x))
        fsim = jnp.where(shrink, jnp.concatenate([fsim[:1], fshrunk]), fsim.at[-1].set(new_f))
        calls = calls + 1 + (expand | outside | inside) + n * shrink
        order = jnp.argsort(fsim, stable=True)
        return sim[order], fsim[order], calls, iterations + 1

    return jax.lax.while_loop(unfinished, step, state)[0][0].astype(dtype)


def mp_softrank(evals, Q: float, bandwidth: float = 0.1, grid_size: int = 1000) -> jax.Array:
    """lambda_plus / lambda_max of WeightWatcher's Marchenko-Pastur fit (module docstring) to eigenvalues (L,) of
    matrices with aspect ratio Q = N / M."""
    x = jnp.asarray(evals)
    dtype = x.dtype
    scaled = x * (x.shape[0] / jnp.sum(x))  # WeightWatcher's rescaling: mean eigenvalue 1
    lmax = jnp.max(scaled)
    quarter = Q == 1
    points = jnp.sqrt(scaled) if quarter else scaled
    xde = jnp.linspace(0, jnp.max(points) + 0.5, grid_size, dtype=dtype)
    yde = _kde_linear(points, xde, bandwidth)
    good = yde > 0.01
    peak = xde[jnp.argmax(jnp.where(good, yde, -jnp.inf))]
    good_max = jnp.max(jnp.where(good, xde, -jnp.inf))

    def objective(sigma):
        if quarter:
            ymp = jnp.nan_to_num(jnp.sqrt(4 - xde ** 2) / (jnp.pi * sigma ** 2))
            resid = ymp - yde
        else:
            root = jnp.sqrt(jnp.asarray(1 / Q, dtype))  # in the spectrum's dtype, also when x64 is on
            b = (sigma * (1 + root)) ** 2
            a = (sigma * (1 - root)) ** 2
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
        draws = jax.random.randint(key, (bootstrap, x.shape[0]), 0, x.shape[0], jnp.int32)  # the same draws in x64
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
                  bootstrap: int = 100, selection: bool = True) -> LayerMetrics:
    """Every weight metric of every weight matrix of ONE model's parameters (a Flax `params` collection or any
    pytree of arrays), keyed by layer name; `key` draws the bootstrap of alpha (`bootstrap` resamples; no key:
    no bootstrap); `selection`: Yang et al. 2023's fits too (SELECTION; NaN without: they add a few seconds of
    compilation), computed in float64 whenever 64-bit types are enabled (the spectra family enables them for its
    program) and returned in the eigenvalues' dtype. Works under jit and vmap (layers come from the shapes)."""
    layers, skipped = weight_layers(params, pool, min_evals)
    leaves = {path: leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    keys = [None] * len(layers) if key is None else list(jax.random.split(key, max(len(layers), 1)))
    wide = jax.dtypes.canonicalize_dtype(jnp.float64)  # float64 where enabled
    out, spectra = {}, []
    for layer, k in zip(layers, keys):
        leaf = jnp.asarray(leaves[layer.path])
        if selection and leaf.dtype != wide and jax.default_backend() == "cpu":
            spectra.append(eigenvalues(leaf, layer, wide))  # numpy's float64 eigenvalues, before rounding
            evals = spectra[-1].astype(leaf.dtype)  # the same numbers as eigenvalues(leaf, layer)
        else:
            evals = eigenvalues(leaf, layer)
            spectra.append(evals.astype(wide))
        out[layer.name] = spectrum_metrics(evals, layer.N, layer.M, k, bootstrap if key is not None else 0)
    if spectra:
        dtype = next(iter(out.values()))["alpha"].dtype
        if selection:  # in float64 where enabled: float32's Nelder-Mead stops elsewhere on some E-TPL fits
            fits = {m: v.astype(dtype) for m, v in selection_metrics(spectra).items()}
        else:
            fits = {m: jnp.full(len(spectra), jnp.nan, dtype) for m in SELECTION}
        for i, name in enumerate(out):
            out[name].update({metric: values[i] for metric, values in fits.items()})
    return LayerMetrics(out, skipped)


def summary(metrics: dict, names: tuple = SUMMARY) -> dict:
    """WeightWatcher's summary: the mean over layers of every metric in `names` (SUMMARY; NaN without layers).
    SELECTION's means leave out the layers whose fit found no xmin candidate (NaN: on small matrices the
    histogram window often holds one eigenvalue); NaN when no layer has one."""
    def mean(name):
        values = jnp.stack([m[name] for m in metrics.values()])
        return jnp.nanmean(values) if name in SELECTION else jnp.mean(values)

    return {name: mean(name) if metrics else jnp.nan for name in names}
