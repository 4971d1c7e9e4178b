"""Hessian spectrum of one model's loss: HVPs, Lanczos top-k, trace, spectral density (SLQ).

The local metrics of Yang et al. 2021 ("Taxonomizing local versus global structure in neural network loss
landscapes"), which the paper computes with PyHessian (Yao et al. 2020): the top Hessian eigenvalue (power
iteration there, Lanczos here), the trace (Hutchinson there; exact, Krylov-deflated Hutchinson, Hutch++ or
Hutchinson here) and the spectral density (stochastic Lanczos quadrature, Ghorbani et al. 2019; Lin et al. 2016).

Every function is for ONE model, given `loss_fn(params, batch) -> scalar` and a parameter pytree; ensembles
are `jax.jit(jax.vmap(...))` of them. All algorithms run a fixed number of steps, so vmapped members never
wait on each other, and every estimate carries its own accuracy figure (residual bounds, standard errors).
Vectors are flattened with `jax.flatten_util.ravel_pytree`; the dtype follows the parameters, so passing
float64 parameters (inside `jax.enable_x64`) gives the float64 path. Memory: Lanczos keeps its whole basis,
(num_steps + 1) x num_params per member.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from lljax import pytrees
from lljax.errors import LLJaxError

Params = Any
LossFn = Callable[[Params, Any], jax.Array]
TRACE_METHODS = ("auto", "exact", "krylov", "hutchpp", "hutchinson")
# 'auto' computes the trace exactly (one HVP per parameter) up to this many parameters, else by 'krylov'.
EXACT_TRACE_MAX_PARAMS = 1024

# HVPs run one at a time (`lax.map` without `batch_size`), never as a vmap inside a loop: under an outer vmap
# over members (how every ensemble calls these functions), jax 0.10.2 gives wrong values for members 1 and up
# when a loop body vmaps HVPs of a model with a normalisation (LayerNorm): `lax.map(hvp, ..., batch_size=B)`
# with B >= 4 returns a Hessian trace 5-95% off. Repro and measurements: docs/upstream/vmap_map_hvp.md;
# tests/test_hessian.py keeps the repro as a test.


# ------------------------------------------------------------------------------------------ Hessian-vector

def hvp(loss_fn: LossFn, params: Params, batch, v: Params) -> Params:
    """H v for the Hessian of `loss_fn(., batch)` at `params`; forward-over-reverse (jvp of grad). Pytree in, out."""
    return jax.jvp(lambda p: jax.grad(loss_fn)(p, batch), (params,), (v,))[1]


def dataset_hvp(loss_fn: LossFn, params: Params, dataset: tuple, v: Params, batch_size: int) -> Params:
    """H v for the mean loss over a whole dataset, accumulated over minibatches of `batch_size` examples.

    `dataset` is a tuple of arrays with a leading example axis (N, ...); `loss_fn` must be a mean over the
    examples of its batch. Each minibatch's HVP is weighted by its number of examples, so a ragged last batch
    gives the full-batch result (up to rounding).
    """
    sizes = {int(a.shape[0]) for a in jax.tree.leaves(dataset)}
    if len(sizes) != 1:
        raise LLJaxError(f"dataset arrays disagree on the number of examples: {sorted(sizes)}")
    if batch_size <= 0:
        raise LLJaxError(f"batch size must be positive, got {batch_size}")
    (num_examples,) = sizes
    num_full, remainder = divmod(num_examples, batch_size)
    zero = jax.tree.map(jnp.zeros_like, v)

    def add_batch(total, batch, size):
        return jax.tree.map(lambda t, h: t + size * h, total, hvp(loss_fn, params, batch, v))

    total = zero
    if num_full:
        full = jax.tree.map(lambda a: a[:num_full * batch_size].reshape(num_full, batch_size, *a.shape[1:]),
                            dataset)
        total, _ = jax.lax.scan(lambda t, b: (add_batch(t, b, batch_size), None), zero, full)
    if remainder:
        total = add_batch(total, jax.tree.map(lambda a: a[num_full * batch_size:], dataset), remainder)
    return jax.tree.map(lambda t: t / num_examples, total)


def _flat_hvp(loss_fn: LossFn, params: Params, batch):
    """(matvec on flat vectors, flat params). Linearised once, so each product skips re-running the primal."""
    pytrees.check_params(params)
    flat, unravel = ravel_pytree(params)
    grad_flat = lambda x: ravel_pytree(jax.grad(loss_fn)(unravel(x), batch))[0]
    _, matvec = jax.linearize(grad_flat, flat)
    return matvec, flat


# ------------------------------------------------------------------------------------------------ Lanczos

class LanczosState(NamedTuple):
    """Lanczos after `step` steps on a symmetric operator of size n, run for m steps in all.

    basis (m+1, n) orthonormal rows (zero where not reached); alphas/betas (m,) the tridiagonal (betas[j] is the
    norm of the residual after step j); coupled (m,) whether betas[j] links step j to j+1 (False after a
    breakdown); valid (m,) whether step j ran on a nonzero vector; scale () running max of ||A q_j||.
    """

    basis: jax.Array
    alphas: jax.Array
    betas: jax.Array
    coupled: jax.Array
    valid: jax.Array
    scale: jax.Array
    step: jax.Array


class LanczosResult(NamedTuple):
    """Ritz values (m,) descending, their Gauss-quadrature weights (squared first components of the Ritz
    vectors, summing to 1), residual bounds (m,) (each Ritz value lies within its bound of an eigenvalue),
    num_valid (): entries from num_valid on come from masked steps (value and bound NaN, weight 0), and the
    Ritz vectors' coordinates in the Lanczos basis (m, m), column i for Ritz value i."""

    ritz_values: jax.Array
    ritz_weights: jax.Array
    residuals: jax.Array
    num_valid: jax.Array
    ritz_coordinates: jax.Array


def lanczos_init(v0: jax.Array, num_steps: int) -> LanczosState:
    """Start Lanczos from the (nonzero) vector v0 (n,)."""
    if v0.ndim != 1:
        raise LLJaxError(f"Lanczos works on flat vectors; got a start vector of shape {v0.shape}")
    if num_steps <= 0:
        raise LLJaxError(f"Lanczos needs a positive number of steps, got {num_steps}")
    basis = jnp.zeros((num_steps + 1, v0.shape[0]), v0.dtype).at[0].set(v0 / jnp.linalg.norm(v0))
    zeros = jnp.zeros((num_steps,), v0.dtype)
    false = jnp.zeros((num_steps,), bool)
    return LanczosState(basis, zeros, zeros, false, false, jnp.zeros((), v0.dtype), jnp.zeros((), jnp.int32))


def _orthogonalize(w, basis):
    # Twice is enough (Kahan/Parlett): one classical Gram-Schmidt pass leaves O(eps * cond) components.
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return w


def lanczos_step(matvec: Callable, state: LanczosState, key: jax.Array | None = None,
                 breakdown_tol: float | None = None) -> LanczosState:
    """One Lanczos step with full reorthogonalisation.

    Breakdown (the residual falls below `breakdown_tol` x ||A||: an invariant subspace is reached) decouples
    the tridiagonal there. With a `key` Lanczos restarts from a fresh random vector orthogonal to the basis
    (so repeated eigenvalues are found with their multiplicity); without one, or once the basis spans the
    whole space, the remaining steps run on the zero vector and are masked out of the result.
    """
    basis, j = state.basis, state.step
    dtype = basis.dtype
    tol = jnp.finfo(dtype).eps ** (2 / 3) if breakdown_tol is None else breakdown_tol
    q = basis[j]
    active = jnp.any(q != 0)
    w = matvec(q)
    alpha = q @ w
    scale = jnp.maximum(state.scale, jnp.linalg.norm(w))
    previous = jnp.where(j > 0, jnp.where(state.coupled[j - 1], state.betas[j - 1], 0), 0)
    w = _orthogonalize(w - alpha * q - previous * basis[jnp.maximum(j - 1, 0)], basis)
    beta = jnp.linalg.norm(w)
    broke = beta <= tol * scale
    if key is None:
        fresh, exhausted = jnp.zeros_like(w), broke
    else:
        fresh = jax.random.normal(jax.random.fold_in(key, j), w.shape, dtype)
        fresh_norm = jnp.linalg.norm(fresh)
        fresh = _orthogonalize(fresh, basis)
        restarted_norm = jnp.linalg.norm(fresh)
        exhausted = broke & (restarted_norm <= tol * fresh_norm)
        fresh = fresh / jnp.where(exhausted, 1, restarted_norm)
    following = jnp.where(broke, fresh, w / jnp.where(broke, 1, beta))
    following = jnp.where(active & ~exhausted, following, 0)
    return LanczosState(
        basis=basis.at[j + 1].set(following),
        alphas=state.alphas.at[j].set(jnp.where(active, alpha, 0)),
        betas=state.betas.at[j].set(jnp.where(active, beta, 0)),
        coupled=state.coupled.at[j].set(active & ~broke),
        valid=state.valid.at[j].set(active),
        scale=scale,
        step=j + 1,
    )


def _round_robin(m: int) -> np.ndarray:
    """(m - 1, m // 2, 2) disjoint index pairs per round, every pair of 0..m-1 exactly once (m even)."""
    players = np.arange(m)
    rounds = []
    for _ in range(m - 1):
        rounds.append(np.stack([players[:m // 2], players[::-1][:m // 2]], axis=1))
        players = np.concatenate([players[:1], np.roll(players[1:], 1)])
    return np.asarray(rounds, np.int32)


def _small_eigh(a, max_sweeps: int = 50):
    """Eigenvalues (ascending) and eigenvectors of a small symmetric matrix (m, m) by cyclic Jacobi rotations
    in round-robin order (each round rotates m/2 disjoint pairs at once), to machine precision.

    Why not `jnp.linalg.eigh`: jaxlib's CPU eigh of a batch (what vmap makes of it) splits the batch over XLA's
    intra-op thread pool and blocks waiting for it; with the pool busy (vmapped programs, several CPU devices)
    that deadlocks (jax 0.10). These matrices are tiny (Lanczos steps squared), and pure JAX also shards."""
    m = a.shape[-1]
    if m % 2:  # pad with a decoupled eigenvalue below every other one, dropped at the end
        low = jnp.min(jnp.diag(a)) - jnp.sum(jnp.abs(a)) - 1
        a = jnp.pad(a, ((0, 1), (0, 1))).at[m, m].set(low)
    n = a.shape[-1]
    schedule = jnp.asarray(_round_robin(n))
    tol = jnp.finfo(a.dtype).eps * jnp.linalg.norm(a)

    def rotate(pairs, carry):
        a, v = carry
        p, q = pairs[:, 0], pairs[:, 1]
        app, aqq, apq = a[p, p], a[q, q], a[p, q]
        nonzero = apq != 0
        tau = (aqq - app) / (2 * jnp.where(nonzero, apq, 1))
        t = jnp.where(tau >= 0, 1.0, -1.0) / (jnp.abs(tau) + jnp.sqrt(1 + tau ** 2))
        t = jnp.where(nonzero, t, 0)
        c = 1 / jnp.sqrt(1 + t ** 2)
        s = t * c
        rows_p, rows_q = a[p], a[q]
        a = a.at[p].set(c[:, None] * rows_p - s[:, None] * rows_q).at[q].set(s[:, None] * rows_p + c[:, None] * rows_q)
        cols_p, cols_q = a[:, p], a[:, q]
        a = a.at[:, p].set(cols_p * c - cols_q * s).at[:, q].set(cols_p * s + cols_q * c)
        vp, vq = v[:, p], v[:, q]
        v = v.at[:, p].set(vp * c - vq * s).at[:, q].set(vp * s + vq * c)
        return a.at[p, q].set(0).at[q, p].set(0), v

    def sweep(carry):
        a, v, k = carry
        a, v = jax.lax.fori_loop(0, n - 1, lambda r, c: rotate(schedule[r], c), (a, v))
        return a, v, k + 1

    def unfinished(carry):
        a, _, k = carry
        return (k < max_sweeps) & (jnp.linalg.norm(a - jnp.diag(jnp.diag(a))) > tol)

    a, v, _ = jax.lax.while_loop(unfinished, sweep, (a, jnp.eye(n, dtype=a.dtype), 0))
    values = jnp.diag(a)
    order = jnp.argsort(values)
    values, v = values[order], v[:, order]
    if n != m:
        values, v = values[1:], v[:m, 1:]
    return values, v


def lanczos_result(state: LanczosState) -> LanczosResult:
    """Ritz values, quadrature weights and residual bounds from the tridiagonal of a finished run."""
    valid, alphas, betas = state.valid, state.alphas, state.betas
    m = alphas.shape[0]
    offdiag = jnp.where(state.coupled[:-1] & valid[1:], betas[:-1], 0)
    # Masked steps get a diagonal value below every Gershgorin disc of the valid part, so their (exact,
    # decoupled) eigenvalues sort last and cannot mix with genuine Ritz values.
    padded = jnp.pad(jnp.abs(offdiag), 1)
    radius = padded[:-1] + padded[1:]
    size = jnp.max(jnp.where(valid, jnp.abs(alphas) + radius, 0))
    lowest = jnp.min(jnp.where(valid, alphas - radius, jnp.inf))
    diag = jnp.where(valid, alphas, lowest - 1 - size)
    tridiagonal = jnp.diag(diag) + jnp.diag(offdiag, 1) + jnp.diag(offdiag, -1)
    values, vectors = _small_eigh(tridiagonal)
    values, vectors = values[::-1], vectors[:, ::-1]
    num_valid = jnp.sum(valid)
    kept = jnp.arange(m) < num_valid
    # The residual of Ritz pair i is sum_j dropped_j s_ji q'_j over the couplings left out of the tridiagonal:
    # the last step's residual and every breakdown's (tiny) one.
    dropped = jnp.where(valid & (~state.coupled | (jnp.arange(m) == m - 1)), betas, 0)
    residuals = jnp.abs(dropped) @ jnp.abs(vectors)
    return LanczosResult(
        ritz_values=jnp.where(kept, values, jnp.nan),
        ritz_weights=jnp.where(kept, vectors[0] ** 2, 0),
        residuals=jnp.where(kept, residuals, jnp.nan),
        num_valid=num_valid,
        ritz_coordinates=jnp.where(kept[None, :], vectors, 0),
    )


def lanczos(matvec: Callable[[jax.Array], jax.Array], v0: jax.Array, num_steps: int, *,
            key: jax.Array | None = None, breakdown_tol: float | None = None) -> LanczosResult:
    """`num_steps` of Lanczos with full reorthogonalisation on a symmetric `matvec` (n,) -> (n,), from v0 (n,).

    Returns Ritz values with residual bounds and quadrature weights (`LanczosResult`). A breakdown restarts
    from a random vector when `key` is given and is masked out otherwise (see `lanczos_step`).
    """
    return lanczos_result(_lanczos_run(matvec, v0, num_steps, key, breakdown_tol))


def _lanczos_run(matvec, v0, num_steps, key=None, breakdown_tol=None) -> LanczosState:
    step = lambda _, state: lanczos_step(matvec, state, key, breakdown_tol)
    return jax.lax.fori_loop(0, num_steps, step, lanczos_init(v0, num_steps))


# ---------------------------------------------------------------------------------- top eigenvalues

class TopEigenvalues(NamedTuple):
    """The k largest (algebraic) Hessian eigenvalues (k,), descending, and bounds on their residuals (k,)."""

    eigenvalues: jax.Array
    residuals: jax.Array


def top_eigenvalues(loss_fn: LossFn, params: Params, batch, k: int = 1, *, key: jax.Array,
                    num_steps: int = 32) -> TopEigenvalues:
    """The k largest Hessian eigenvalues of `loss_fn(., batch)` at `params` by Lanczos (replacing the paper's
    power iteration): `num_steps` HVPs, capped at the parameter count, where it is exact."""
    return _top_eigenvalues(*_flat_hvp(loss_fn, params, batch), k, key, num_steps)[0]


def _top_eigenvalues(matvec, flat, k, key, num_steps) -> tuple[TopEigenvalues, LanczosState]:
    n = flat.shape[0]
    if not 1 <= k <= min(num_steps, n):
        raise LLJaxError(f"k={k} eigenvalues needs 1 <= k <= min(num_steps={num_steps}, parameters={n})")
    start_key, restart_key = jax.random.split(key)
    v0 = jax.random.normal(start_key, flat.shape, flat.dtype)
    state = _lanczos_run(matvec, v0, min(num_steps, n), restart_key)
    result = lanczos_result(state)
    return TopEigenvalues(result.ritz_values[:k], result.residuals[:k]), state


class TopEigenpairs(NamedTuple):
    """The k largest Hessian eigenvalues (k,), descending, their residual bounds (k,), and their (unit)
    eigenvectors as a pytree shaped like the parameters with a leading axis k."""

    eigenvalues: jax.Array
    residuals: jax.Array
    eigenvectors: Params


def top_eigenpairs(loss_fn: LossFn, params: Params, batch, k: int = 1, *, key: jax.Array,
                   num_steps: int = 32) -> TopEigenpairs:
    """`top_eigenvalues` with the Ritz vectors: the eigenvectors' residual ||H v - lambda v|| is bounded by the
    same residuals. Signs are arbitrary."""
    matvec, flat = _flat_hvp(loss_fn, params, batch)
    top, state = _top_eigenvalues(matvec, flat, k, key, num_steps)
    steps = state.alphas.shape[0]
    coordinates = lanczos_result(state).ritz_coordinates[:, :k]  # (m, k)
    vectors = coordinates.T @ state.basis[:steps]  # (k, n)
    unravel = ravel_pytree(params)[1]
    return TopEigenpairs(top.eigenvalues, top.residuals, jax.vmap(unravel)(vectors))


# ------------------------------------------------------------------------------------------------- blocks

class Block(NamedTuple):
    """The Hessian block of a subset of the parameters, the rest held fixed: `loss_fn(sub, batch)` on the
    selected leaves (a dict path -> leaf), `params` those leaves at the point, `merge(sub)` the full pytree."""

    loss_fn: LossFn
    params: dict
    merge: Callable


def block(loss_fn: LossFn, params: Params, select) -> Block:
    """The block of the leaves whose path ('Dense_0/kernel') `select` matches: a regular expression searched in
    the path, or a function path -> bool. Every function of this module works on `block(...).loss_fn` and
    `.params` (HVPs with the other parameters' tangent zero). A filter that matches nothing is an LLJaxError."""
    import re

    from lljax import pytrees

    match = (lambda name: re.search(select, name) is not None) if isinstance(select, str) else select
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = [pytrees.path_name(path) for path, _ in leaves]
    chosen = [name for name in names if match(name)]
    if not chosen:
        raise LLJaxError(f"the parameter filter {select!r} matches no leaf (leaves: {', '.join(names)})")
    fixed = [leaf for _, leaf in leaves]

    def merge(sub):
        return jax.tree_util.tree_unflatten(treedef, [sub.get(name, leaf) for name, leaf in zip(names, fixed)])

    sub_params = {name: leaf for name, (_, leaf) in zip(names, leaves) if name in chosen}
    return Block(lambda sub, batch: loss_fn(merge(sub), batch), sub_params, merge)


def layer_blocks(params: Params) -> dict[str, str]:
    """layer (module) name -> the regular expression selecting its leaves: one block per module holding a
    weight matrix (a leaf of at least 2 dimensions), e.g. 'Dense_0' -> kernel and bias."""
    import re

    from lljax import pytrees

    modules = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = pytrees.path_name(path)
        module = "/".join(name.split("/")[:-1])
        if np.ndim(leaf) >= 2 and module and module not in modules:
            modules.append(module)
    return {module: f"^{re.escape(module)}/[^/]+$" for module in modules}


# ------------------------------------------------------------------------------------------------- trace

class TraceEstimate(NamedTuple):
    """Hessian trace () and its standard error () (0 when exact)."""

    trace: jax.Array
    standard_error: jax.Array


def _rademacher(key, shape, dtype):
    return jax.random.rademacher(key, shape, dtype)


def _orthonormal_columns(a):
    """Orthonormal basis of the columns of a (n, k) by Gram-Schmidt with reorthogonalisation; columns that are
    (numerically) dependent on earlier ones become zero. Pure JAX: batched LAPACK QR in the same XLA:CPU program
    as the Lanczos loop's eigh was seen to deadlock the runtime (jax 0.10)."""
    tol = jnp.finfo(a.dtype).eps ** (2 / 3)

    def add_column(i, q):
        v = a[:, i]
        for _ in range(2):
            v = v - q @ (q.T @ v)
        norm = jnp.linalg.norm(v)
        keep = norm > tol * jnp.linalg.norm(a[:, i])
        return q.at[:, i].set(jnp.where(keep, v / jnp.where(keep, norm, 1), 0))

    return jax.lax.fori_loop(0, a.shape[1], add_column, jnp.zeros_like(a))


def _columns_matvec(matvec, vectors_nk):
    """H applied to each column of vectors (n, k), one column at a time: never a vmap inside the loop (see the
    note at the top of this module). Vmapping all k at once would also make every intermediate k times larger;
    on a CPU that spills the caches and halves the HVP rate (measured)."""
    return jax.lax.map(matvec, vectors_nk.T).T


def _deflated_hutchinson(matvec, probes_nk, basis_mn):
    """Hutchinson samples z'^T H z' (k,) of the probes projected off the orthonormal rows of basis (m, n)."""
    probes_nk = probes_nk - basis_mn.T @ (basis_mn @ probes_nk)
    return jnp.sum(probes_nk * _columns_matvec(matvec, probes_nk), axis=0)


def trace(loss_fn: LossFn, params: Params, batch, *, key: jax.Array | None = None, method: str = "auto",
          num_probes: int = 99, exact_max_params: int = EXACT_TRACE_MAX_PARAMS) -> TraceEstimate:
    """Trace of the Hessian of `loss_fn(., batch)` at `params`.

    method: 'exact' sums e_i^T H e_i (one HVP per parameter, batched); 'hutchinson' averages v^T H v over
    Rademacher probes (the paper's estimator, with a fixed probe count instead of its stopping rule); 'hutchpp'
    is Hutch++ (Meyer et al. 2021: a third of the probes sketch the top subspace, whose trace is exact, the rest
    are Hutchinson probes on its complement); 'krylov' is Hutch++ with a Lanczos Krylov space as the low-rank part
    (a third of the HVPs for Lanczos, whose basis's trace is the sum of its alphas at no extra cost, the rest for
    probes on its complement; `hessian_metrics` reuses its top-eigenvalue Lanczos run, so there every HVP goes to
    probes); 'auto' is 'exact' up to `exact_max_params` parameters, else 'krylov'. The standard error is that of
    the stochastic part (conditional on the low-rank part). Probes are multiplied one at a time.
    """
    if method not in TRACE_METHODS:
        raise LLJaxError(f"unknown trace method {method!r}; choose one of {', '.join(TRACE_METHODS)}")
    return _trace(*_flat_hvp(loss_fn, params, batch), key, method, num_probes, exact_max_params)


def _trace(matvec, flat, key, method, num_probes, exact_max_params,
           lanczos_state: LanczosState | None = None) -> TraceEstimate:
    n, dtype = flat.shape[0], flat.dtype
    if method == "auto":
        method = "exact" if n <= exact_max_params else "krylov"
    if method == "exact":  # one HVP per parameter, one at a time (see the note at the top of this module)
        diagonal = jax.lax.map(lambda i: matvec(jax.nn.one_hot(i, n, dtype=dtype))[i], jnp.arange(n))
        return TraceEstimate(jnp.sum(diagonal), jnp.zeros((), dtype))
    if key is None:
        raise LLJaxError(f"trace method {method!r} is stochastic: pass a key")
    if method == "hutchinson":
        if num_probes < 2:
            raise LLJaxError(f"Hutchinson needs at least 2 probes for a standard error, got {num_probes}")
        samples = _deflated_hutchinson(matvec, _rademacher(key, (n, num_probes), dtype), jnp.zeros((0, n), dtype))
        return TraceEstimate(samples.mean(), samples.std(ddof=1) / jnp.sqrt(num_probes))
    if method == "krylov":
        if lanczos_state is None:
            if num_probes < 3:
                raise LLJaxError(f"the Krylov trace needs at least 3 HVPs (Lanczos and two probes), got {num_probes}")
            start_key, restart_key, key = jax.random.split(key, 3)
            steps = min(max(num_probes // 3, 1), n)
            lanczos_state = _lanczos_run(matvec, jax.random.normal(start_key, (n,), dtype), steps, restart_key)
            num_probes = num_probes - steps
        elif num_probes < 2:
            raise LLJaxError(f"the Krylov trace needs at least 2 probes for a standard error, got {num_probes}")
        # alpha_j = q_j^T H q_j, so the trace of H on the (orthonormal) Krylov basis is the sum of the alphas;
        # rows not reached (after an exhausted breakdown) are zero and carry alpha 0.
        steps = lanczos_state.alphas.shape[0]
        samples = _deflated_hutchinson(matvec, _rademacher(key, (n, num_probes), dtype), lanczos_state.basis[:steps])
        return TraceEstimate(jnp.sum(lanczos_state.alphas) + samples.mean(),
                             samples.std(ddof=1) / jnp.sqrt(num_probes))
    if num_probes < 6:
        raise LLJaxError(f"Hutch++ needs at least 6 probes (a third to sketch, two to estimate), got {num_probes}")
    rank = min(num_probes // 3, n)
    num_hutchinson = num_probes - 2 * rank
    sketch, probes = jnp.split(_rademacher(key, (n, rank + num_hutchinson), dtype), [rank], axis=1)
    basis = _orthonormal_columns(_columns_matvec(matvec, sketch))
    exact_part = jnp.sum(basis * _columns_matvec(matvec, basis))
    samples = _deflated_hutchinson(matvec, probes, basis.T)
    return TraceEstimate(exact_part + samples.mean(), samples.std(ddof=1) / jnp.sqrt(num_hutchinson))


# -------------------------------------------------------------------------------------- spectral density

class SpectralDensity(NamedTuple):
    """Stochastic Lanczos quadrature: nodes (runs, steps) and weights (runs, steps), each run's weights summing
    to 1/runs so the total mass is 1. Masked nodes (after a Lanczos breakdown) are NaN with weight 0."""

    nodes: jax.Array
    weights: jax.Array


def spectral_density(loss_fn: LossFn, params: Params, batch, *, key: jax.Array, num_runs: int = 4,
                     num_steps: int = 64) -> SpectralDensity:
    """Hessian eigenvalue density by stochastic Lanczos quadrature (Lin et al. 2016; Ghorbani et al. 2019;
    PyHessian's `density`): `num_runs` Lanczos runs of `num_steps` steps from Rademacher starts, vmapped."""
    return _spectral_density(*_flat_hvp(loss_fn, params, batch), key, num_runs, num_steps)


def _spectral_density(matvec, flat, key, num_runs, num_steps) -> SpectralDensity:
    if num_runs <= 0:
        raise LLJaxError(f"spectral density needs a positive number of runs, got {num_runs}")

    def run(run_key):
        v0 = _rademacher(run_key, flat.shape, flat.dtype)
        result = lanczos(matvec, v0, num_steps)
        return result.ritz_values, result.ritz_weights / num_runs

    return SpectralDensity(*jax.vmap(run)(jax.random.split(key, num_runs)))


def smooth_density(nodes: jax.Array, weights: jax.Array, grid: jax.Array, sigma) -> jax.Array:
    """Density (G,) on `grid` (G,): the quadrature (nodes, weights of any matching shape) convolved with a
    Gaussian of width `sigma`. Integrates to the total weight (1 for `spectral_density`); NaN nodes are skipped."""
    nodes, weights = jnp.ravel(nodes), jnp.ravel(weights)
    present = ~jnp.isnan(nodes)
    nodes, weights = jnp.where(present, nodes, 0), jnp.where(present, weights, 0)
    z = (grid[:, None] - nodes[None, :]) / sigma
    return (jnp.exp(-0.5 * z ** 2) / (sigma * jnp.sqrt(2 * jnp.pi))) @ weights


# --------------------------------------------------------------------------------- metrics for a pipeline

@dataclasses.dataclass(frozen=True)
class HessianConfig:
    """Static settings of the Hessian metrics (hashable, so it can key compiled programs).

    num_samples     training samples the pipeline hands to `hessian_metrics` (the paper used 200; its
                    estimates are noisy at that size)
    top_k           number of top eigenvalues
    lanczos_steps   Lanczos steps (HVPs) for the top eigenvalues
    trace_method    'auto' (exact up to `exact_trace_max_params`, else 'krylov'), 'exact', 'krylov', 'hutchpp',
                    'hutchinson' (see `trace`); 'krylov' deflates the top-eigenvalue Lanczos basis here
    trace_probes    HVPs spent by a stochastic trace method (for 'krylov' all are probes: its Lanczos part is
                    the top-eigenvalue run, already paid for)
    density_runs    stochastic Lanczos quadrature runs for the spectral density (0: no density)
    density_steps   Lanczos steps per density run
    """

    num_samples: int = 1000
    top_k: int = 3
    lanczos_steps: int = 32
    trace_method: str = "auto"
    trace_probes: int = 99
    exact_trace_max_params: int = EXACT_TRACE_MAX_PARAMS
    density_runs: int = 4
    density_steps: int = 64

    def __post_init__(self):
        if self.trace_method not in TRACE_METHODS:
            raise LLJaxError(f"unknown trace method {self.trace_method!r}; choose one of {', '.join(TRACE_METHODS)}")
        for name in ("num_samples", "top_k", "lanczos_steps", "trace_probes", "density_steps"):
            if getattr(self, name) <= 0:
                raise LLJaxError(f"{name} must be positive, got {getattr(self, name)}")
        if self.density_runs < 0:
            raise LLJaxError(f"density_runs must be non-negative, got {self.density_runs}")
        if self.top_k > self.lanczos_steps:
            raise LLJaxError(f"top_k={self.top_k} needs at least as many Lanczos steps, got {self.lanczos_steps}")


class HessianMetrics(NamedTuple):
    """One model's Hessian metrics: top_eigenvalues (k,), top_residuals (k,), trace (), trace_se (),
    density_nodes (runs, steps), density_weights (runs, steps)."""

    top_eigenvalues: jax.Array
    top_residuals: jax.Array
    trace: jax.Array
    trace_se: jax.Array
    density_nodes: jax.Array
    density_weights: jax.Array


def hessian_metrics(loss_fn: LossFn, params: Params, batch, key: jax.Array,
                    config: HessianConfig = HessianConfig()) -> HessianMetrics:
    """Top-k eigenvalues, trace and spectral density of one model's loss Hessian (Yang et al. 2021's local
    metrics). For an ensemble: `jax.jit(jax.vmap(lambda p, bs, b, k: hessian_metrics(models.loss_fn(spec, bs),
    p, b, k, config)))`."""
    eig_key, trace_key, density_key = jax.random.split(key, 3)
    # One linearisation serves all three: the primal forward/backward pass runs once.
    matvec, flat = _flat_hvp(loss_fn, params, batch)
    top, lanczos_state = _top_eigenvalues(matvec, flat, config.top_k, eig_key, config.lanczos_steps)
    tr = _trace(matvec, flat, trace_key, config.trace_method, config.trace_probes, config.exact_trace_max_params,
                lanczos_state)
    if config.density_runs:
        density = _spectral_density(matvec, flat, density_key, config.density_runs, config.density_steps)
    else:
        empty = jnp.zeros((0, config.density_steps), flat.dtype)
        density = SpectralDensity(empty, empty)
    return HessianMetrics(top.eigenvalues, top.residuals, tr.trace, tr.standard_error, *density)
