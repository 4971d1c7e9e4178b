"""Loss surfaces around ONE model, for any loss(params, batch): filter-normalised random directions (Li et al.
2018, "Visualizing the loss landscape of neural nets", the tomgoldstein/loss-landscape code), 1-D slices and 2-D
surfaces evaluated in compiled batches of points, the plane through three models, the PCA plane of a training
trajectory, and the sharpness summary the pipeline's 'slices' family reports.

Directions are pytrees shaped like the parameters. Filter normalisation, as loss-landscape's
`normalize_directions_for_weights(norm='filter')`: every filter of a direction (one output unit: in Flax the LAST
axis of a Dense or conv kernel of any rank, torch's first; (heads, head_dim) of an attention query, key or value
kernel; a token's row of an embedding: `lljax.layers`) is rescaled to d_f ||theta_f|| / (||d_f|| + 1e-10), the
norms over all the filter's other axes; 1-D leaves (biases, normalisation scales) are zeroed (`biasbn='zero'`,
loss-landscape's `ignore='biasbn'`, the default of `create_random_direction` and the setting its README uses) or
set equal to the weights (`biasbn='keep'`, `ignore=''`, plot_surface.py's flag default). BatchNorm running
statistics are not part of a direction (loss-landscape's default `dir_type='weights'` takes `net.parameters()`)
and the loss is evaluated with them stored (its `eval_loss` runs `net.eval()`), unless the caller recomputes
them. Against loss-landscape's own code on a 2-D CNN with BatchNorm, both modes: equal to float32 rounding
(benchmarks/surfaces.py). Functions are for one model; `jax.vmap` them over members.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from lljax import layers, pytrees
from lljax.errors import LLJaxError

BIASBN = ("zero", "keep")
LossFn = Callable[[Any, Any], jax.Array]


def filter_normalize(direction: Any, params: Any, biasbn: str = "zero") -> Any:
    """`direction` with every filter scaled to its weight filter's norm (module docstring)."""
    if biasbn not in BIASBN:
        raise LLJaxError(f"biasbn must be 'zero' or 'keep', got {biasbn!r}")

    def one(path, d, w):
        kind = layers.kind(path, d.shape)
        if kind == "vector":
            return jnp.zeros_like(d) if biasbn == "zero" else w.astype(d.dtype)
        filters = layers.filter_axes(kind, d.ndim)
        axes = tuple(a for a in range(d.ndim) if a not in filters)  # every axis but the filters'
        # one axis: the vector norm (the published Dense slices); several: the norm over all of them
        norm = (lambda a: jnp.linalg.norm(a, axis=axes, keepdims=True)) if len(axes) == 1 else \
            (lambda a: jnp.sqrt(jnp.sum(jnp.square(a), axis=axes, keepdims=True)))
        return d * (norm(w) / (norm(d) + 1e-10))

    return jax.tree_util.tree_map_with_path(one, direction, params)


def random_direction(key: jax.Array, params: Any, biasbn: str = "zero") -> Any:
    """A Gaussian direction shaped like `params`, filter-normalised."""
    pytrees.check_params(params)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    noise = treedef.unflatten([jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)])
    return filter_normalize(noise, params, biasbn)


def _dot(a, b) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def orthogonalize(first: Any, second: Any) -> Any:
    """`second` less its component along `first` (Gram-Schmidt), so the two span the same plane at right angles."""
    coefficient = _dot(second, first) / _dot(first, first)
    return jax.tree.map(lambda s, f: s - coefficient * f, second, first)


def along(params: Any, directions: tuple, coefficients) -> Any:
    """theta + sum_i c_i d_i for coefficients (k,) and k directions."""
    coefficients = jnp.asarray(coefficients)
    out = params
    for i, d in enumerate(directions):
        out = jax.tree.map(lambda p, x: p + coefficients[i].astype(p.dtype) * x, out, d)
    return out


def evaluate_points(loss_fn: LossFn, params: Any, batch, directions: tuple, points, chunk: int = 64) -> jax.Array:
    """(P,) losses at theta + sum_i points[p, i] d_i for points (P, k), `chunk` points per compiled batch
    (vmapped within a chunk, chunks one after another: memory stays bounded)."""
    points = jnp.asarray(points)
    if points.ndim != 2 or points.shape[1] != len(directions) or points.shape[0] == 0:
        raise LLJaxError(f"points must be (P > 0, {len(directions)}), got shape {tuple(points.shape)}")
    p = points.shape[0]
    chunk = max(1, min(int(chunk), p))
    pad = -p % chunk
    padded = jnp.concatenate([points, jnp.repeat(points[-1:], pad, axis=0)]) if pad else points
    at = lambda c: loss_fn(along(params, directions, c), batch)
    values = jax.lax.map(jax.vmap(at), padded.reshape(-1, chunk, points.shape[1]))
    return values.reshape(-1)[:p]


def slice_1d(loss_fn: LossFn, params: Any, batch, direction: Any, alphas=None, chunk: int = 64) -> jax.Array:
    """(A,) loss along theta + a d at every a of `alphas` (default 51 points on [-1, 1])."""
    alphas = jnp.linspace(-1, 1, 51) if alphas is None else jnp.asarray(alphas)
    return evaluate_points(loss_fn, params, batch, (direction,), alphas[:, None], chunk)


def surface_2d(loss_fn: LossFn, params: Any, batch, first: Any, second: Any, xs=None, ys=None, chunk: int = 64
               ) -> jax.Array:
    """(len(ys), len(xs)) loss at theta + x d1 + y d2 (default 51 x 51 points on [-1, 1]^2, as loss-landscape)."""
    xs = jnp.linspace(-1, 1, 51) if xs is None else jnp.asarray(xs)
    ys = jnp.linspace(-1, 1, 51) if ys is None else jnp.asarray(ys)
    if xs.size == 0 or ys.size == 0:
        raise LLJaxError(f"a surface needs points on both axes, got {xs.size} x {ys.size}")
    grid = jnp.stack(jnp.meshgrid(xs, ys), -1).reshape(-1, 2)  # row-major over (y, x)
    return evaluate_points(loss_fn, params, batch, (first, second), grid, chunk).reshape(ys.size, xs.size)


class Plane(NamedTuple):
    """A plane in parameter space: origin + x u + y v, and the coordinates (K, 2) of the models that define it."""

    origin: Any
    u: Any
    v: Any
    coordinates: jax.Array


def three_model_plane(w0: Any, w1: Any, w2: Any) -> Plane:
    """The plane through three models (e.g. two seeds and the bend of their curve): origin w0, u = w1 - w0, v the
    part of w2 - w0 orthogonal to u, scaled to ||u||; the three models sit at (0, 0), (1, 0) and (a, b)."""
    u = jax.tree.map(lambda a, b: b - a, w0, w1)
    rest = jax.tree.map(lambda a, c: c - a, w0, w2)
    norm_u = jnp.sqrt(_dot(u, u))
    a = _dot(rest, u) / norm_u ** 2
    perpendicular = jax.tree.map(lambda r, x: r - a * x, rest, u)
    norm_p = jnp.sqrt(_dot(perpendicular, perpendicular))
    v = jax.tree.map(lambda p: p * (norm_u / jnp.where(norm_p > 0, norm_p, 1)), perpendicular)
    coordinates = jnp.stack([jnp.zeros(2), jnp.asarray([1.0, 0.0]), jnp.stack([a, norm_p / norm_u])])
    return Plane(w0, u, v, coordinates)


def pca_plane(snapshots: Any, final: Any) -> tuple[Plane, jax.Array]:
    """The PCA plane of a training trajectory (loss-landscape's trajectory plot): origin the final model, u and v
    the two leading principal directions (unit norm) of the snapshots' differences from it (snapshots: a pytree
    with a leading axis K); returns the plane, with every snapshot's projection as coordinates (K, 2), and the
    fraction of the differences' variance each direction explains (2,)."""
    from lljax.hessian import _small_eigh  # pure JAX: no LAPACK under vmap

    flat_final, unravel = ravel_pytree(final)
    diffs = jax.vmap(lambda s: ravel_pytree(s)[0] - flat_final)(snapshots)  # (K, n)
    if diffs.shape[0] < 2:
        raise LLJaxError(f"a trajectory plane needs at least 2 snapshots, got {diffs.shape[0]}")
    centred = diffs - diffs.mean(0, keepdims=True)
    values, vectors = _small_eigh(centred @ centred.T)  # (K, K): the Gram matrix of the K snapshots
    order = jnp.argsort(-values)
    values, vectors = values[order], vectors[:, order]
    components = (vectors[:, :2].T @ centred) / jnp.sqrt(jnp.maximum(values[:2], 1e-30))[:, None]  # (2, n) unit
    coordinates = diffs @ components.T
    explained = values[:2] / jnp.maximum(jnp.sum(jnp.maximum(values, 0)), 1e-30)
    return Plane(final, unravel(components[0]), unravel(components[1]), coordinates), explained


class Sharpness(NamedTuple):
    """The loss increase at filter-normalised radius r along D random directions (both signs): mean and worst
    over the 2D points, and the loss at the model."""

    mean_increase: jax.Array
    max_increase: jax.Array
    loss: jax.Array


def sharpness(loss_fn: LossFn, params: Any, batch, key: jax.Array, radius: float = 0.5, num_directions: int = 8,
              biasbn: str = "zero") -> Sharpness:
    """`Sharpness` of one model: L(theta +- r d) - L(theta) over `num_directions` filter-normalised directions
    (one key each, from `jax.random.split(key, num_directions)`), the directions vmapped."""
    base = loss_fn(params, batch)
    at = jnp.asarray([-radius, radius], jax.tree.leaves(params)[0].dtype)
    line = lambda k: slice_1d(loss_fn, params, batch, random_direction(k, params, biasbn), at, chunk=2)
    increase = jax.vmap(line)(jax.random.split(key, num_directions)) - base  # (D, 2)
    return Sharpness(increase.mean(), increase.max(), base)
