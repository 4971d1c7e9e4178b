"""Similarity of models: CKA between representations, L2 distance between parameters, all pairs at once.

CKA is the centred kernel alignment of Kornblith et al. 2019, "Similarity of neural network representations
revisited" (ICML); the debiased variant replaces the centred Gram matrices by U-centred ones, i.e. uses the
unbiased HSIC estimator of Song et al. 2012 (JMLR) as in Nguyen, Raghu & Kornblith 2021, "Do wide and deep
networks learn the same things?". Yang et al. 2021 (the taxonomy paper) compare two models by the linear CKA of
their softmax outputs on 768 training inputs perturbed by mixup with lambda ~ Beta(16, 16) (`mixup_inputs`).

Conventions:
- representations are (examples N, features...) arrays, NumPy or JAX; trailing axes are flattened into features;
- computations run in the inputs' floating dtype (float64 when x64 is enabled and the inputs are float64; float16
  and bfloat16 are promoted to float32), with full-precision matmuls so accelerators do not use TF32/bf16 passes;
- a representation that is constant over the examples (e.g. a dead network that outputs the same thing for every
  input) carries no information about the inputs, and CKA with it is defined as **0** (also CKA of it with
  itself), never NaN. "Constant" means: its centred values are below 1000 machine epsilons of its magnitude,
  i.e. indistinguishable from rounding noise;
- bad shapes raise `LLJaxError`; non-finite inputs propagate to a non-finite result.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lljax import pytrees
from lljax.errors import LLJaxError

_HIGHEST = jax.lax.Precision.HIGHEST
# Centred energy below this many epsilons of the raw magnitude is rounding noise: the representation is constant.
_CONSTANT_TOLERANCE_EPS = 1000.0


# ---------------------------------------------------------------------------------------------------------------
# input handling


def _as_float(x) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating) or jnp.finfo(x.dtype).bits < 32:
        x = x.astype(jnp.float32)
    return x


def _representation_pair(x, y, debiased: bool) -> tuple[jax.Array, jax.Array]:
    """Validates two (N, ...) representations and returns them as (N, F) arrays of one common float dtype."""
    x, y = _as_float(x), _as_float(y)
    for name, r in (("x", x), ("y", y)):
        if r.ndim < 2:
            raise LLJaxError(f"CKA: {name} must be an (examples, features...) array, got shape {tuple(r.shape)}")
        if r.size == 0:
            raise LLJaxError(f"CKA: {name} is empty (shape {tuple(r.shape)})")
    if x.shape[0] != y.shape[0]:
        raise LLJaxError(f"CKA: x and y must hold the same examples, got {x.shape[0]} and {y.shape[0]} rows")
    n = x.shape[0]
    min_n = 4 if debiased else 2
    if n < min_n:
        raise LLJaxError(f"CKA: {'debiased ' if debiased else ''}CKA needs at least {min_n} examples, got {n}")
    dtype = jnp.promote_types(x.dtype, y.dtype)
    return x.reshape(n, -1).astype(dtype), y.reshape(n, -1).astype(dtype)


def _centre_and_normalise(x_NF: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Centres the features and scales to unit Frobenius norm; returns (x, is_constant).

    CKA is invariant to both, and unit scale keeps every later product O(1) (no float32 overflow for large
    activations).
    """
    centred_NF = x_NF - jnp.mean(x_NF, axis=0, keepdims=True)
    centred_norm = jnp.sqrt(jnp.sum(centred_NF**2))
    raw_norm = jnp.sqrt(jnp.sum(x_NF**2))
    eps = jnp.finfo(x_NF.dtype).eps
    is_constant = centred_norm <= _CONSTANT_TOLERANCE_EPS * eps * raw_norm
    scale = jnp.where(is_constant, 1.0, centred_norm)
    return centred_NF / scale, is_constant


def _safe_cka(hsic_xy, hsic_xx, hsic_yy, degenerate):
    """hsic_xy / sqrt(hsic_xx * hsic_yy), or 0 where a side carries no signal."""
    valid = jnp.logical_not(degenerate) & (hsic_xx > 0) & (hsic_yy > 0)
    denominator = jnp.sqrt(jnp.where(valid, hsic_xx, 1.0)) * jnp.sqrt(jnp.where(valid, hsic_yy, 1.0))
    return jnp.where(valid, hsic_xy / denominator, 0.0)


# ---------------------------------------------------------------------------------------------------------------
# Gram-matrix (example-space) machinery


def _centre_gram(gram_NN: jax.Array, debiased: bool) -> jax.Array:
    """H K H (biased), or the U-centred K of Szekely & Rizzo 2014 whose inner products give Song et al.'s
    unbiased HSIC (scaled by n(n-3), which cancels in CKA)."""
    n = gram_NN.shape[0]
    if not debiased:
        column_means = jnp.mean(gram_NN, axis=0)
        row_means = jnp.mean(gram_NN, axis=1)
        return gram_NN - column_means[None, :] - row_means[:, None] + jnp.mean(gram_NN)
    off_diagonal = 1.0 - jnp.eye(n, dtype=gram_NN.dtype)
    gram_NN = gram_NN * off_diagonal
    means = jnp.sum(gram_NN, axis=0) / (n - 2)
    means = means - jnp.sum(means) / (2 * (n - 1))
    return (gram_NN - means[:, None] - means[None, :]) * off_diagonal


def _unit_centred_gram(gram_NN, is_constant, debiased: bool):
    """The centred (or U-centred) Gram matrix scaled to unit Frobenius norm, all zeros for a representation
    without signal: CKA is then the plain inner product of two of these."""
    k_NN = _centre_gram(gram_NN, debiased)
    sq_norm = jnp.vdot(k_NN, k_NN)
    valid = jnp.logical_not(is_constant) & (sq_norm > 0)
    return jnp.where(valid, k_NN / jnp.sqrt(jnp.where(valid, sq_norm, 1.0)), 0.0)


def _gram_cka(gram_x_NN, gram_y_NN, constant_x, constant_y, debiased: bool):
    return jnp.vdot(_unit_centred_gram(gram_x_NN, constant_x, debiased),
                    _unit_centred_gram(gram_y_NN, constant_y, debiased))


def _linear_gram(x_NF):
    return jnp.matmul(x_NF, x_NF.T, precision=_HIGHEST)


def _rbf_gram(x_NF, threshold):
    """exp(-d^2 / (2 threshold^2 median(d^2))), the Kornblith et al. bandwidth heuristic (median over all N^2
    entries, diagonal included). If most pairs coincide the median is 0; the mean of d^2 stands in so the kernel
    stays finite (it is 0 only for a constant representation, which is handled as degenerate)."""
    dot_NN = _linear_gram(x_NF)
    sq_norms_N = jnp.diagonal(dot_NN)
    sq_distances_NN = jnp.maximum(sq_norms_N[:, None] + sq_norms_N[None, :] - 2.0 * dot_NN, 0.0)
    sq_distances_NN = sq_distances_NN * (1.0 - jnp.eye(x_NF.shape[0], dtype=x_NF.dtype))
    median = jnp.median(sq_distances_NN)
    bandwidth = jnp.where(median > 0, median, jnp.mean(sq_distances_NN))
    bandwidth = jnp.where(bandwidth > 0, bandwidth, 1.0)
    return jnp.exp(-sq_distances_NN / (2.0 * threshold**2 * bandwidth))


# ---------------------------------------------------------------------------------------------------------------
# feature-space linear CKA


def _debiased_dot(xty, sq_rows_x_N, sq_rows_y_N, sq_norm_x, sq_norm_y, n):
    """<U-centred XX^T, U-centred YY^T> for centred X, Y, from feature-space quantities only."""
    return xty - n / (n - 2.0) * jnp.vdot(sq_rows_x_N, sq_rows_y_N) + sq_norm_x * sq_norm_y / ((n - 1.0) * (n - 2.0))


def _feature_space_linear_cka(x_NF, y_NG, degenerate, debiased: bool):
    n = x_NF.shape[0]
    hsic_xy = jnp.sum(jnp.matmul(x_NF.T, y_NG, precision=_HIGHEST) ** 2)
    hsic_xx = jnp.sum(jnp.matmul(x_NF.T, x_NF, precision=_HIGHEST) ** 2)
    hsic_yy = jnp.sum(jnp.matmul(y_NG.T, y_NG, precision=_HIGHEST) ** 2)
    if debiased:
        sq_rows_x_N = jnp.sum(x_NF**2, axis=1)
        sq_rows_y_N = jnp.sum(y_NG**2, axis=1)
        sq_x, sq_y = jnp.sum(sq_rows_x_N), jnp.sum(sq_rows_y_N)
        hsic_xy = _debiased_dot(hsic_xy, sq_rows_x_N, sq_rows_y_N, sq_x, sq_y, n)
        hsic_xx = _debiased_dot(hsic_xx, sq_rows_x_N, sq_rows_x_N, sq_x, sq_x, n)
        hsic_yy = _debiased_dot(hsic_yy, sq_rows_y_N, sq_rows_y_N, sq_y, sq_y, n)
    return _safe_cka(hsic_xy, hsic_xx, hsic_yy, degenerate)


@functools.partial(jax.jit, static_argnames=("debiased", "use_features"))
def _linear_cka(x_NF, y_NG, debiased: bool, use_features: bool):
    x_NF, constant_x = _centre_and_normalise(x_NF)
    y_NG, constant_y = _centre_and_normalise(y_NG)
    degenerate = constant_x | constant_y
    if use_features:
        return _feature_space_linear_cka(x_NF, y_NG, degenerate, debiased)
    return _gram_cka(_linear_gram(x_NF), _linear_gram(y_NG), constant_x, constant_y, debiased)


@functools.partial(jax.jit, static_argnames=("debiased",))
def _rbf_cka(x_NF, y_NG, threshold, debiased: bool):
    x_NF, constant_x = _centre_and_normalise(x_NF)
    y_NG, constant_y = _centre_and_normalise(y_NG)
    return _gram_cka(_rbf_gram(x_NF, threshold), _rbf_gram(y_NG, threshold), constant_x, constant_y, debiased)


# ---------------------------------------------------------------------------------------------------------------
# public CKA


def linear_cka(x, y, debiased: bool = False, form: str = "auto") -> jax.Array:
    """Linear CKA between two representations of the same N examples (Kornblith et al. 2019).

    x: (N, F...) and y: (N, G...). Returns a scalar in [0, 1] (biased) or about [-1, 1] (debiased: U-centred
    Gram matrices, Song et al. 2012 unbiased HSIC; needs N >= 4). 0 if either side is constant over examples.
    form: "features" computes ||X^T Y||_F^2 / (||X^T X||_F ||Y^T Y||_F) with O(N F G) work, "examples" compares
    centred N x N Gram matrices; both give the same value. "auto" uses the feature form when F and G are below N.
    """
    if form not in ("auto", "features", "examples"):
        raise LLJaxError(f"linear_cka: form must be 'auto', 'features' or 'examples', got {form!r}")
    x_NF, y_NG = _representation_pair(x, y, debiased)
    n, f, g = x_NF.shape[0], x_NF.shape[1], y_NG.shape[1]
    use_features = form == "features" or (form == "auto" and max(f, g) < n)
    return _linear_cka(x_NF, y_NG, debiased=debiased, use_features=use_features)


def rbf_cka(x, y, threshold: float = 1.0, debiased: bool = False) -> jax.Array:
    """CKA with Gaussian (RBF) kernels (Kornblith et al. 2019), bandwidth sigma = threshold * median distance.

    x: (N, F...) and y: (N, G...); threshold > 0 (the paper's "fraction of the median distance"; large values
    approach linear CKA). Returns a scalar; 0 if either side is constant over examples.
    """
    if isinstance(threshold, (int, float, np.number)) and not (np.isfinite(threshold) and threshold > 0):
        raise LLJaxError(f"rbf_cka: threshold must be a positive number, got {threshold!r}")
    x_NF, y_NG = _representation_pair(x, y, debiased)
    return _rbf_cka(x_NF, y_NG, jnp.asarray(threshold, x_NF.dtype), debiased=debiased)


# ---------------------------------------------------------------------------------------------------------------
# all pairs


def _leading_size(tree_M: Any, what: str) -> int:
    leaves = jax.tree.leaves(tree_M)
    if not leaves:
        raise LLJaxError(f"{what}: got an empty pytree")
    sizes = {int(np.shape(leaf)[0]) if np.ndim(leaf) > 0 else -1 for leaf in leaves}
    if len(sizes) != 1 or -1 in sizes:
        raise LLJaxError(f"{what}: every leaf needs the same leading member axis, got sizes {sorted(sizes)}")
    return sizes.pop()


def pairwise(fn: Callable[[Any, Any], jax.Array], tree_M: Any, symmetric: bool = True) -> jax.Array:
    """(M, M) matrix of fn(member_i, member_j) over the members stacked on axis 0 of every leaf of tree_M.

    All pairs go through one `jax.vmap` of fn. With symmetric=True only i <= j is evaluated and mirrored.
    """
    m = _leading_size(tree_M, "pairwise")
    if symmetric:
        first, second = np.triu_indices(m)
    else:
        first, second = (a.ravel() for a in np.meshgrid(np.arange(m), np.arange(m), indexing="ij"))
    take = lambda idx: jax.tree.map(lambda leaf: jnp.asarray(leaf)[idx], tree_M)  # noqa: E731
    values_P = jax.vmap(fn)(take(first), take(second))
    matrix_MM = jnp.zeros((m, m), values_P.dtype).at[first, second].set(values_P)
    if symmetric:
        matrix_MM = matrix_MM.at[second, first].set(values_P)
    return matrix_MM


@functools.partial(jax.jit, static_argnames=("kind", "debiased", "use_features"))
def _all_pairs_cka(reps_MNF, threshold, kind: str, debiased: bool, use_features: bool):
    if use_features:
        # O(N F^2) per pair and no N x N matrices: vmap the feature-space form over the pairs
        return pairwise(functools.partial(_linear_cka, debiased=debiased, use_features=True), reps_MNF)

    # Gram forms: one unit-norm centred N x N matrix per member (M of them, not one per pair), then every pair's
    # CKA is an inner product, all at once as one (M, N^2) x (N^2, M) matmul
    def member_gram(x_NF):
        x_NF, is_constant = _centre_and_normalise(x_NF)
        gram_NN = _linear_gram(x_NF) if kind == "linear" else _rbf_gram(x_NF, threshold)
        return _unit_centred_gram(gram_NN, is_constant, debiased)

    flat_MK = jax.vmap(member_gram)(reps_MNF).reshape(reps_MNF.shape[0], -1)
    return jnp.matmul(flat_MK, flat_MK.T, precision=_HIGHEST)


def all_pairs_cka(reps_MN, kind: str = "linear", debiased: bool = False, threshold: float = 1.0) -> jax.Array:
    """(M, M) CKA between the representations of M members on the same N inputs; reps_MN: (M, N, F...).

    kind: "linear" or "rbf" (threshold as in `rbf_cka`). One compiled program: linear CKA with fewer features
    than examples is the feature-space form vmapped over the M(M+1)/2 pairs; otherwise each member's centred
    Gram matrix is built once (vmapped over members, M N^2 memory) and all pairs are one matrix product.
    The diagonal is 1 (0 for a constant member).
    """
    if kind not in ("linear", "rbf"):
        raise LLJaxError(f"all_pairs_cka: kind must be 'linear' or 'rbf', got {kind!r}")
    if isinstance(threshold, (int, float, np.number)) and not (np.isfinite(threshold) and threshold > 0):
        raise LLJaxError(f"all_pairs_cka: threshold must be a positive number, got {threshold!r}")
    reps_MN = _as_float(reps_MN)
    if reps_MN.ndim < 3 or reps_MN.size == 0:
        raise LLJaxError(f"all_pairs_cka: reps must be a non-empty (members, examples, features...) array, "
                         f"got shape {tuple(reps_MN.shape)}")
    m, n = reps_MN.shape[:2]
    _representation_pair(reps_MN[0], reps_MN[0], debiased)  # validates N
    reps_MNF = reps_MN.reshape(m, n, -1)
    use_features = kind == "linear" and reps_MNF.shape[2] < n
    return _all_pairs_cka(reps_MNF, jnp.asarray(threshold, reps_MNF.dtype), kind=kind, debiased=debiased,
                          use_features=use_features)


def all_pairs_output_cka(logits_MNC, debiased: bool = False) -> dict[str, jax.Array]:
    """The paper's output similarity: {"softmax": (M, M), "logits": (M, M)} linear CKA of members' outputs.

    logits_MNC: (members, probe inputs, classes), e.g. `models.apply` vmapped over an ensemble on
    `mixup_inputs(...)`. Softmax CKA is the metric Yang et al. 2021 use for phase IV-A vs IV-B.
    """
    logits_MNC = _as_float(logits_MNC)
    if logits_MNC.ndim != 3:
        raise LLJaxError(f"all_pairs_output_cka: logits must be (members, examples, classes), "
                         f"got shape {tuple(logits_MNC.shape)}")
    return {"softmax": all_pairs_cka(jax.nn.softmax(logits_MNC, axis=-1), debiased=debiased),
            "logits": all_pairs_cka(logits_MNC, debiased=debiased)}


def mean_over_pairs(matrix_MM) -> jax.Array:
    """Mean of the strictly upper triangle of an (M, M) pair matrix (each unordered pair once, no self-pairs)."""
    matrix_MM = jnp.asarray(matrix_MM)
    if matrix_MM.ndim != 2 or matrix_MM.shape[0] != matrix_MM.shape[1] or matrix_MM.shape[0] < 2:
        raise LLJaxError(f"mean_over_pairs: need a square matrix with at least 2 members, "
                         f"got shape {tuple(matrix_MM.shape)}")
    first, second = np.triu_indices(matrix_MM.shape[0], k=1)
    return jnp.mean(matrix_MM[first, second])


# ---------------------------------------------------------------------------------------------------------------
# the paper's probe inputs


def mixup_inputs(key: jax.Array, x_NX, num: int = 768, alpha: float = 16.0) -> jax.Array:
    """The CKA probe of Yang et al. 2021: num mixtures lambda x_a + (1 - lambda) x_b of training inputs.

    x_NX: (N, ...) training inputs; returns (num, ...). x_a runs over a random subset of num distinct inputs,
    x_b over an independent one; lambda ~ Beta(alpha, alpha) is drawn per probe (the reference code draws one per
    batch of 128; the marginal of every probe is the same).
    """
    x_NX = jnp.asarray(x_NX)
    if x_NX.ndim < 1 or x_NX.shape[0] == 0:
        raise LLJaxError(f"mixup_inputs: x must be a non-empty (examples, ...) array, got shape {x_NX.shape}")
    n = x_NX.shape[0]
    if not 1 <= num <= n:
        raise LLJaxError(f"mixup_inputs: num must be between 1 and the {n} inputs given, got {num}")
    if not np.isfinite(alpha) or alpha <= 0:
        raise LLJaxError(f"mixup_inputs: alpha must be positive, got {alpha!r}")
    if not jnp.issubdtype(x_NX.dtype, jnp.floating):
        x_NX = x_NX.astype(jnp.float32)
    return _mixup_inputs(key, x_NX, jnp.asarray(alpha, x_NX.dtype), num=num)


@functools.partial(jax.jit, static_argnames=("num",))
def _mixup_inputs(key, x_NX, alpha, num: int):
    n = x_NX.shape[0]
    key_first, key_second, key_lambda = jax.random.split(key, 3)
    first = jax.random.permutation(key_first, n)[:num]
    second = jax.random.permutation(key_second, n)[:num]
    lam = jax.random.beta(key_lambda, alpha, alpha, (num,), dtype=x_NX.dtype)
    lam = lam.reshape((num,) + (1,) * (x_NX.ndim - 1))
    return lam * x_NX[first] + (1.0 - lam) * x_NX[second]


# ---------------------------------------------------------------------------------------------------------------
# L2 distance of parameters


def l2_distance(params_a: Any, params_b: Any) -> jax.Array:
    """||w_a - w_b||_2 over every leaf of two parameter pytrees of identical structure and shapes."""
    pytrees.check_params(params_a, "l2_distance: parameters")
    struct_a, struct_b = jax.tree.structure(params_a), jax.tree.structure(params_b)
    if struct_a != struct_b:
        raise LLJaxError("l2_distance: the two parameter pytrees have different structures")
    leaves_a, leaves_b = jax.tree.leaves(params_a), jax.tree.leaves(params_b)
    if not leaves_a:
        raise LLJaxError("l2_distance: the parameter pytrees are empty")
    for a, b in zip(leaves_a, leaves_b):
        if np.shape(a) != np.shape(b):
            raise LLJaxError(f"l2_distance: parameter shapes differ: {np.shape(a)} vs {np.shape(b)}")
    squared = [jnp.sum((_as_float(a) - _as_float(b)) ** 2) for a, b in zip(leaves_a, leaves_b)]
    return jnp.sqrt(sum(squared[1:], squared[0]))


@jax.jit
def _all_pairs_l2(params_M):
    return pairwise(l2_distance, params_M)


def all_pairs_l2(params_M: Any) -> jax.Array:
    """(M, M) L2 distances between the members stacked on axis 0 of every leaf of params_M (one vmapped program)."""
    _leading_size(params_M, "all_pairs_l2")
    return _all_pairs_l2(params_M)


# ---------------------------------------------------------------------------------------------------------------
# neural collapse


class NeuralCollapse(NamedTuple):
    """Neural-collapse statistics of one model (Papyan, Han & Donoho 2020; Zhu et al. 2021), each () and 0 at
    full collapse: nc1 within-class variability relative to between-class (tr(Sigma_W Sigma_B^+) / K), nc2 the
    distance of the centred class means' normalised Gram matrix from the simplex ETF's, nc3 the distance of the
    normalised classifier-times-means matrix from the ETF's, nc4 the fraction of examples where the classifier
    and the nearest class mean disagree."""

    nc1: jax.Array
    nc2: jax.Array
    nc3: jax.Array
    nc4: jax.Array


def neural_collapse(features_NF, labels_N, logits_NK, num_classes: int, weights_N=None) -> NeuralCollapse:
    """Neural collapse of penultimate `features_NF` (N, F) with integer `labels_N` and the model's outputs
    `logits_NK` (N, K), over the examples weighted by `weights_N` (a member's subset; default all). Classes with
    no example are left out (K counts the classes present).

    The classifier enters only through the logits: with an affine read-out z = W h + b, the mean logits of class
    c minus the global mean logits equal W (mu_c - mu_G), so NC3 needs no access to W; NC1's pseudo-inverse is
    taken in the K-dimensional span of the class means (pure JAX, no LAPACK)."""
    from lljax.hessian import _small_eigh

    h = jnp.asarray(features_NF)
    dtype = jnp.result_type(h.dtype, jnp.float32)
    h = h.astype(dtype)
    n = h.shape[0]
    w = jnp.ones(n, dtype) if weights_N is None else jnp.asarray(weights_N, dtype)
    onehot = jax.nn.one_hot(labels_N, num_classes, dtype=dtype) * w[:, None]  # (N, K)
    counts = onehot.sum(0)
    present = counts > 0
    k = jnp.sum(present).astype(dtype)
    total = w.sum()
    mu_c = (onehot.T @ h) / jnp.where(present, counts, 1)[:, None]  # (K, F)
    mu_g = (w @ h) / total
    means = jnp.where(present[:, None], mu_c - mu_g, 0).T  # (F, K): the centred class means M
    etf = jnp.where(present[:, None] & present[None, :], jnp.eye(num_classes, dtype=dtype) - 1 / k, 0)
    etf = etf / jnp.sqrt(k - 1)
    unit = lambda a: a / jnp.maximum(jnp.linalg.norm(a), jnp.finfo(dtype).tiny)
    gram = means.T @ means  # (K, K)
    nc2 = jnp.linalg.norm(unit(gram) - etf)
    z = jnp.asarray(logits_NK, dtype)
    z_c = (onehot.T @ z) / jnp.where(present, counts, 1)[:, None]
    wm = jnp.where(present[None, :] & present[:, None], (z_c - (w @ z) / total).T, 0)  # (K, K) = W M
    nc3 = jnp.linalg.norm(unit(wm) - etf)
    # NC1 = K tr(G^{+2} M^T Sigma_W M) / K, G = M^T M: Sigma_B = M M^T / K has the pseudo-inverse K M G^{+2} M^T
    within = jnp.where(w[:, None] > 0, h - mu_c[labels_N], 0) * jnp.sqrt(w)[:, None]
    a = within @ means  # (N, K)
    sw_m = a.T @ a / total  # M^T Sigma_W M
    values, vectors = _small_eigh(gram)
    keep = values > jnp.max(values) * num_classes * jnp.finfo(dtype).eps * 10
    inv2 = (vectors * jnp.where(keep, 1 / jnp.where(keep, values, 1) ** 2, 0)) @ vectors.T
    nc1 = jnp.trace(inv2 @ sw_m)  # tr(Sigma_W Sigma_B^+) / K, Sigma_B^+ = K M G^{+2} M^T
    distances = jnp.sum((h[:, None, :] - mu_c[None, :, :]) ** 2, -1)
    nearest = jnp.argmin(jnp.where(present[None, :], distances, jnp.inf), axis=1)
    disagree = (jnp.argmax(z, axis=1) != nearest).astype(dtype)
    return NeuralCollapse(nc1, nc2, nc3, jnp.sum(w * disagree) / total)
