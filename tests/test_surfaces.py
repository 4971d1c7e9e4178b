"""lljax.surfaces in float64: filter normalisation, slices and surfaces against closed forms and loops, the planes
through three models and through a trajectory, vmapped == looped."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from lljax import surfaces
from lljax.errors import LLJaxError


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def params(key=0):
    k = jax.random.split(jax.random.key(key), 4)
    return {"Dense_0": {"kernel": jax.random.normal(k[0], (5, 4)), "bias": jax.random.normal(k[1], (4,))},
            "Conv_0": {"kernel": jax.random.normal(k[2], (3, 2, 6))}, "BatchNorm_0": {"scale": jnp.ones(6) * 2}}


def test_every_filter_gets_its_weight_filters_norm_and_1d_leaves_follow_biasbn():
    p = params()
    d = surfaces.random_direction(jax.random.key(1), p)
    for name in ("Dense_0", "Conv_0"):
        w, x = np.asarray(p[name]["kernel"]), np.asarray(d[name]["kernel"])
        axes = tuple(range(w.ndim - 1))
        np.testing.assert_allclose(np.linalg.norm(x, axis=axes), np.linalg.norm(w, axis=axes), rtol=1e-9)
    assert not np.any(d["Dense_0"]["bias"]) and not np.any(d["BatchNorm_0"]["scale"])
    kept = surfaces.random_direction(jax.random.key(1), p, biasbn="keep")
    np.testing.assert_array_equal(kept["Dense_0"]["bias"], p["Dense_0"]["bias"])
    with pytest.raises(LLJaxError, match="biasbn"):
        surfaces.random_direction(jax.random.key(1), p, biasbn="drop")


def quadratic(n, seed=0):
    a = np.random.default_rng(seed).normal(size=(n, n))
    matrix = jnp.asarray(a @ a.T)
    return lambda p, batch: 0.5 * ravel_pytree(p)[0] @ matrix @ ravel_pytree(p)[0], matrix


def test_slices_and_surfaces_equal_the_closed_form_of_a_quadratic():
    p = params()
    loss, matrix = quadratic(ravel_pytree(p)[0].size)
    d1 = surfaces.random_direction(jax.random.key(2), p, biasbn="keep")
    d2 = surfaces.orthogonalize(d1, surfaces.random_direction(jax.random.key(3), p, biasbn="keep"))
    theta, u, v = (ravel_pytree(t)[0] for t in (p, d1, d2))
    assert abs(float(u @ v)) < 1e-10 * float(u @ u)
    alphas = jnp.linspace(-1, 1, 7)
    exact = [0.5 * (theta + a * u) @ matrix @ (theta + a * u) for a in alphas]
    line = surfaces.slice_1d(loss, p, None, d1, alphas, chunk=3)
    np.testing.assert_allclose(line, exact, rtol=1e-12)
    np.testing.assert_allclose(line[3], loss(p, None), rtol=1e-14)  # the slice at the origin is the model's loss
    xs, ys = jnp.linspace(-1, 1, 5), jnp.linspace(-0.5, 1.5, 4)
    surface = surfaces.surface_2d(loss, p, None, d1, d2, xs, ys, chunk=4)
    assert surface.shape == (4, 5)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            point = theta + x * u + y * v
            np.testing.assert_allclose(surface[i, j], 0.5 * point @ matrix @ point, rtol=1e-12)
    with pytest.raises(LLJaxError, match="points on both axes"):
        surfaces.surface_2d(loss, p, None, d1, d2, jnp.zeros(0), ys)


def test_the_plane_through_three_models_holds_them():
    w0, w1, w2 = params(0), params(1), params(2)
    plane = surfaces.three_model_plane(w0, w1, w2)
    for (x, y), w in zip(np.asarray(plane.coordinates), (w0, w1, w2)):
        rebuilt = surfaces.along(plane.origin, (plane.u, plane.v), jnp.asarray([x, y]))
        np.testing.assert_allclose(ravel_pytree(rebuilt)[0], ravel_pytree(w)[0], rtol=1e-10, atol=1e-12)


def test_the_pca_plane_of_a_planar_trajectory_reconstructs_it():
    final = params(0)
    a, b = surfaces.random_direction(jax.random.key(5), final, "keep"), params(6)
    coefficients = np.array([[3.0, 1.0], [2.0, -0.5], [1.0, 0.7], [0.5, -0.2], [0.1, 0.05]])
    snaps = jax.tree.map(lambda *x: jnp.stack(x), *[surfaces.along(final, (a, b), c) for c in coefficients])
    plane, explained = surfaces.pca_plane(snaps, final)
    np.testing.assert_allclose(float(explained.sum()), 1.0, rtol=1e-9)
    for k, (x, y) in enumerate(np.asarray(plane.coordinates)):
        rebuilt = surfaces.along(final, (plane.u, plane.v), jnp.asarray([x, y]))
        np.testing.assert_allclose(ravel_pytree(rebuilt)[0], ravel_pytree(jax.tree.map(lambda s: s[k], snaps))[0],
                                   rtol=1e-9, atol=1e-9)
    u, v = ravel_pytree(plane.u)[0], ravel_pytree(plane.v)[0]
    np.testing.assert_allclose([u @ u, v @ v, u @ v], [1, 1, 0], atol=1e-9)


def test_vmapped_over_members_equals_a_loop():
    members = jax.tree.map(lambda *x: jnp.stack(x), *[params(k) for k in range(3)])
    loss = lambda p, batch: sum(jnp.sum(jnp.tanh(x) ** 2) for x in jax.tree.leaves(p)) * batch
    keys = jax.random.split(jax.random.key(7), 3)
    run = lambda p, k: surfaces.sharpness(loss, p, 1.5, k, radius=0.3, num_directions=3)
    together = jax.jit(jax.vmap(run))(members, keys)
    for i in range(3):
        single = jax.jit(run)(jax.tree.map(lambda x: x[i], members), keys[i])
        for a, b in zip(together, single):
            np.testing.assert_allclose(a[i], b, rtol=1e-12)
    assert np.all(np.asarray(together.max_increase) >= np.asarray(together.mean_increase))


def torch_layout_normalize(w, d):
    """loss-landscape's filter normalisation written out in torch's layout (filters on axis 0): every row of d scaled
    to ||w_row|| / (||d_row|| + 1e-10), the norms over all of the filter's other axes."""
    norm = lambda a: np.sqrt(np.sum(np.square(a.reshape(a.shape[0], -1)), axis=1))
    return d * (norm(w) / (norm(d) + 1e-10)).reshape(-1, *[1] * (d.ndim - 1))


def test_filter_normalize_matches_a_torch_layout_computation_for_conv_dense_attention_and_embedding():
    shapes = {"Conv_0": {"kernel": (3, 3, 2, 4), "bias": (4,)}, "BatchNorm_0": {"scale": (4,), "bias": (4,)},
              "Dense_0": {"kernel": (4, 5), "bias": (5,)}, "attention": {"query": {"kernel": (6, 2, 3)}},
              "embed": {"embedding": (7, 6)}}
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda s: isinstance(s, tuple))
    draw = lambda key: treedef.unflatten([jax.random.normal(k, s) * (1 + i) for i, (k, s) in enumerate(
        zip(jax.random.split(jax.random.key(key), len(leaves)), leaves))])
    p, d = draw(20), draw(21)
    # Flax layout -> torch layout (filters on axis 0) and back, per leaf
    layouts = {("Conv_0", "kernel"): (lambda a: a.transpose(3, 2, 0, 1), lambda t: t.transpose(2, 3, 1, 0)),
               ("Dense_0", "kernel"): (lambda a: a.T, lambda t: t.T),  # torch Linear (out, in)
               ("attention", "query", "kernel"): (lambda a: a.reshape(6, 6).T, lambda t: t.T.reshape(6, 2, 3)),
               ("embed", "embedding"): (lambda a: a, lambda t: t)}  # torch nn.Embedding (V, d): rows
    for biasbn in ("zero", "keep"):
        out = surfaces.filter_normalize(d, p, biasbn)
        for path, (to_torch, back) in layouts.items():
            def get(tree, path=path):
                for k in path:
                    tree = tree[k]
                return np.asarray(tree)
            expected = back(torch_layout_normalize(to_torch(get(p)), to_torch(get(d))))
            np.testing.assert_allclose(get(out), expected, rtol=1e-12, atol=1e-14)
            assert get(out).dtype == np.float64
        for module, leaf in (("Conv_0", "bias"), ("BatchNorm_0", "scale"), ("BatchNorm_0", "bias"),
                             ("Dense_0", "bias")):
            expected = np.zeros(p[module][leaf].shape) if biasbn == "zero" else np.asarray(p[module][leaf])
            np.testing.assert_array_equal(out[module][leaf], expected)
    # each (head, dim) of the query kernel is a filter: its norm over the input axis equals the weight's (up to the
    # 1e-10 in the denominator); each token's row of the embedding likewise
    out = surfaces.filter_normalize(d, p)
    np.testing.assert_allclose(np.linalg.norm(out["attention"]["query"]["kernel"], axis=0),
                               np.linalg.norm(p["attention"]["query"]["kernel"], axis=0), rtol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(out["embed"]["embedding"], axis=1),
                               np.linalg.norm(p["embed"]["embedding"], axis=1), rtol=1e-9)
