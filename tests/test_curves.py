"""Tests of lljax.curves: curve geometry, fitting (vmapped == loop), exact BatchNorm statistics, mode
connectivity. Numerical checks run in float64 against independent NumPy computations."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lljax import curves, losses, models
from lljax.errors import LLJaxError

X64 = jax.enable_x64(True)


def to64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


def bits(a):
    a = np.asarray(a)
    return a.view({4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def random_params(key, dtype=jnp.float64):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"dense": {"kernel": jax.random.normal(k1, (4, 3), dtype), "bias": jax.random.normal(k2, (3,), dtype)},
            "scale": jax.random.normal(k3, (2, 2, 2), dtype)}


def toy_data(key, n=64, d=6, classes=3):
    kx, ky = jax.random.split(key)
    x = jax.random.normal(kx, (n, d), jnp.float64)
    w = jax.random.normal(ky, (d, classes), jnp.float64)
    return x, jnp.argmax(x @ w + 0.5 * jax.random.gumbel(ky, (n, classes), jnp.float64), -1).astype(jnp.int32)


# A small model with BatchNorm (momentum 0.7, unlike the ResNet's 0.9) written directly in flax.
class BNNet(nn.Module):
    @nn.compact
    def __call__(self, x, train):
        for width in (6, 5):
            x = nn.Dense(width)(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.7, epsilon=1e-5)(x))
        return nn.Dense(3)(x)


def bn_init(key, d=6):
    variables = BNNet().init(key, jnp.zeros((1, d)), False)
    return to64(variables["params"]), to64(variables["batch_stats"])


def linear_apply(variables, x, train=False, mutable=False, rngs=None):
    """Multinomial logistic regression, as a Flax-style apply: the loss is convex in the parameters."""
    return x @ variables["params"]["w"] + variables["params"]["b"]


# ----------------------------------------------------------------------------------------------- geometry

@pytest.mark.parametrize("num_bends", [0, 1, 2, 5])
def test_coefficients_sum_to_one_and_match_closed_forms(num_bends):
    with X64:
        ts = jnp.linspace(0, 1, 101)
        for coefficients in (curves.bezier_coefficients, curves.polychain_coefficients):
            c = coefficients(ts, num_bends)
            assert c.shape == (101, num_bends + 2)
            np.testing.assert_allclose(c.sum(-1), 1.0, rtol=0, atol=1e-14)
            assert (c >= 0).all()
            np.testing.assert_array_equal(c[0], np.eye(num_bends + 2)[0])
            np.testing.assert_array_equal(c[-1], np.eye(num_bends + 2)[-1])
        t = np.asarray(ts)
        if num_bends == 1:  # the paper's quadratic Bezier
            expected = np.stack([(1 - t) ** 2, 2 * t * (1 - t), t ** 2], -1)
            np.testing.assert_allclose(curves.bezier_coefficients(ts, 1), expected, rtol=1e-13, atol=1e-15)
        # the chain passes through its control points at the knots i / (num_bends + 1)
        knots = np.arange(num_bends + 2) / (num_bends + 1)
        np.testing.assert_allclose(curves.polychain_coefficients(knots, num_bends), np.eye(num_bends + 2),
                                   atol=1e-15)


@pytest.mark.parametrize("kind,num_bends", [("bezier", 1), ("bezier", 3), ("polychain", 2)])
def test_endpoints_are_exact_bitwise(kind, num_bends):
    with X64:
        start, end = random_params(jax.random.key(0)), random_params(jax.random.key(1))
        # negative zeros: 1 * (-0.) + 0 * x can lose the sign, the curve point must not
        start["dense"]["bias"] = start["dense"]["bias"].at[0].set(-0.0)
        curve = curves.init_curve(start, end, num_bends, kind, init="random", key=jax.random.key(2))
        for t, endpoint in ((0.0, start), (1.0, end)):
            for point in (curves.curve_point(curve, t), jax.jit(curves.curve_point)(curve, t)):
                for a, b in zip(jax.tree.leaves(point), jax.tree.leaves(endpoint)):
                    np.testing.assert_array_equal(bits(a), bits(b))


@pytest.mark.parametrize("kind,num_bends", [("bezier", 1), ("bezier", 4), ("polychain", 1), ("polychain", 3)])
def test_linear_initialisation_is_the_straight_segment(kind, num_bends):
    with X64:
        start, end = random_params(jax.random.key(3)), random_params(jax.random.key(4))
        curve = curves.init_curve(start, end, num_bends, kind)
        for t in np.linspace(0, 1, 13):
            point = curves.curve_point(curve, t)
            for w, a, b in zip(*(jax.tree.leaves(p) for p in (point, start, end))):
                np.testing.assert_allclose(w, (1 - t) * np.asarray(a) + t * np.asarray(b), rtol=1e-12, atol=1e-14)
        # a random initialisation leaves the segment
        random = curves.init_curve(start, end, num_bends, kind, init="random", key=jax.random.key(5))
        mid = jax.tree.leaves(curves.curve_point(random, 0.5))[0]
        assert not np.allclose(mid, 0.5 * (jax.tree.leaves(start)[0] + jax.tree.leaves(end)[0]))


def test_bad_input_raises():
    a = random_params(jax.random.key(0), jnp.float32)
    b = dict(a, scale=a["scale"][:1])
    with pytest.raises(LLJaxError, match="differ"):
        curves.init_curve(a, b)
    with pytest.raises(LLJaxError, match="kind"):
        curves.init_curve(a, a, kind="spline")
    with pytest.raises(LLJaxError, match="key"):
        curves.init_curve(a, a, init="random")
    with pytest.raises(LLJaxError, match="num_bends"):
        curves.init_curve(a, a, num_bends=-1)
    with pytest.raises(LLJaxError, match="batch size"):
        curves.fit_curve(linear_apply, curves.init_curve(a, a), jnp.zeros((8, 4)), jnp.zeros(8, jnp.int32),
                         jax.random.key(0), epochs=1, batch_size=9)
    with pytest.raises(LLJaxError, match="labels"):
        curves.fit_curve(linear_apply, curves.init_curve(a, a), jnp.zeros((8, 4)), jnp.zeros(7, jnp.int32),
                         jax.random.key(0), epochs=1, batch_size=4)
    with pytest.raises(LLJaxError, match=">= 2"):
        curves.mode_connectivity(np.zeros(1))


# ------------------------------------------------------------------------------------------ mode connectivity

def test_mode_connectivity_on_hand_made_curves():
    cases = {  # errors along t -> m - e(t*)
        "barrier": ([0.1, 0.3, 0.5, 0.3, 0.1], -0.4),
        "bump (better than the ends)": ([0.3, 0.2, 0.1, 0.2, 0.3], 0.2),
        "flat": ([0.2, 0.2, 0.2, 0.2, 0.2], 0.0),
        "uneven ends, barrier": ([0.1, 0.6, 0.3], 0.2 - 0.6),
        # a monotone curve: the two ends tie as farthest from m, the first wins (numpy's argmax rule)
        "uneven ends, monotone up": ([0.1, 0.15, 0.3], 0.2 - 0.1),
        "uneven ends, monotone down": ([0.3, 0.15, 0.1], 0.2 - 0.3),
    }
    for name, (errors, expected) in cases.items():
        np.testing.assert_allclose(curves.mode_connectivity(np.array(errors)), expected, atol=1e-7, err_msg=name)
    same_length = [case for case in cases.values() if len(case[0]) == 5]
    batch = np.array([errors for errors, _ in same_length])
    np.testing.assert_allclose(curves.mode_connectivity(batch), [e for _, e in same_length], atol=1e-7)

    # (pairs, T) random errors against a NumPy loop over pairs
    e = np.random.default_rng(0).uniform(size=(6, 21))
    expected = []
    for row in e:
        m = (row[0] + row[-1]) / 2
        expected.append(m - row[np.argmax(np.abs(row - m))])
    np.testing.assert_allclose(curves.mode_connectivity(e), expected, rtol=1e-6)


def test_mode_connectivity_is_about_zero_on_a_convex_problem():
    """Logistic regression is convex and its minima form an affine set (softmax ignores a shift of all
    logits), so two minimisers reached from different starts are distinct yet connected by a flat path:
    fitting a curve from a random (barrier-ridden) initialisation must find mc ~ 0."""
    with X64:
        x, y = toy_data(jax.random.key(7), n=96, d=5, classes=3)
        loss = lambda p: losses.softmax_cross_entropy(models.apply(linear_apply, p, {}, x)[0], y).mean()

        def minimise(key):
            kw, kb = jax.random.split(key)
            p = {"w": 3 * jax.random.normal(kw, (5, 3), jnp.float64), "b": 3 * jax.random.normal(kb, (3,))}
            return jax.lax.fori_loop(0, 3000, lambda _, p: jax.tree.map(
                lambda a, g: a - 1.0 * g, p, jax.grad(loss)(p)), p)

        both = jax.jit(jax.vmap(minimise))(jax.random.split(jax.random.key(8)))
        start, end = (jax.tree.map(lambda a: a[i], both) for i in (0, 1))
        assert float(jnp.sqrt(sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(start),
                                                                        jax.tree.leaves(end))))) > 1.0
        np.testing.assert_allclose(loss(start), loss(end), rtol=1e-8)

        random = curves.init_curve(start, end, 1, init="random", key=jax.random.key(9))
        before = curves.evaluate_curve(linear_apply, random, {}, x, y, x, y)
        fitted, epoch_losses = jax.jit(curves.fit_curve, static_argnums=0,
                                       static_argnames=("epochs", "batch_size"))(
            linear_apply, random, x, y, jax.random.key(10), epochs=400, batch_size=32, lr=0.5, weight_decay=0.0)
        after = curves.evaluate_curve(linear_apply, fitted, {}, x, y, x, y)
        assert epoch_losses[-1] < epoch_losses[0]
        assert curves.mode_connectivity(before.train_loss) < -0.1  # the unfitted curve has a barrier
        assert abs(curves.mode_connectivity(after.train_loss)) < 2e-3 * float(loss(start))
        assert abs(curves.mode_connectivity(after.train_err)) <= 2 / x.shape[0]
        # the straight line between two minimisers of a convex loss is flat
        barrier, segment = curves.linear_barrier(linear_apply, start, end, {}, x, y, x, y)
        np.testing.assert_allclose(segment.train_loss, loss(start), rtol=1e-8)
        assert barrier == curves.mode_connectivity(segment.train_err) == 0.0
        linear = curves.evaluate_curve(linear_apply, curves.init_curve(start, end, 1), {}, x, y, x, y)
        np.testing.assert_allclose(segment.train_loss, linear.train_loss, rtol=1e-12)


# -------------------------------------------------------------------------------------------------- fitting

def test_vmapped_fitting_equals_a_loop_and_keeps_endpoints():
    with X64:
        spec = models.ModelSpec("mlp", 8, num_classes=3, depth=1)
        apply_fn = spec
        x, y = toy_data(jax.random.key(11))
        keys = jax.random.split(jax.random.key(12), 6)
        members = [to64(models.init(spec, k, (6,))[0]) for k in keys]
        stack = lambda trees: jax.tree.map(lambda *a: jnp.stack(a), *trees)
        starts, ends = stack(members[:3]), stack(members[3:])
        lrs = jnp.array([0.05, 0.1, 0.2])
        labels = jnp.stack([y, y, (y + 1) % 3])  # per-pair labels, e.g. different label noise
        curves_ = curves.init_curves(starts, ends, 1)
        fit_keys = jax.random.split(jax.random.key(13), 3)
        kwargs = dict(epochs=3, batch_size=16, weight_decay=1e-3)
        fitted, losses = curves.fit_curves(apply_fn, curves_, x, labels, fit_keys, lr=lrs, **kwargs)
        assert losses.shape == (3, 3)

        single = jax.jit(curves.fit_curve, static_argnums=0, static_argnames=("epochs", "batch_size"))
        for i in range(3):
            curve_i = curves.init_curve(members[i], members[3 + i], 1)
            fitted_i, losses_i = single(apply_fn, curve_i, x, labels[i], fit_keys[i], lr=lrs[i], **kwargs)
            np.testing.assert_allclose(losses[i], losses_i, rtol=1e-10)
            for a, b in zip(jax.tree.leaves(jax.tree.map(lambda a: a[i], fitted.bends)),
                            jax.tree.leaves(fitted_i.bends)):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
            moved = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.abs(a - b).max(), fitted_i.bends, curve_i.bends))
            assert max(moved) > 1e-3
            for t, endpoint in ((0.0, members[i]), (1.0, members[3 + i])):
                for a, b in zip(jax.tree.leaves(curves.curve_point(fitted_i, t)), jax.tree.leaves(endpoint)):
                    np.testing.assert_array_equal(bits(a), bits(b))
        for a, b in zip(jax.tree.leaves((fitted.start, fitted.end)), jax.tree.leaves((starts, ends))):
            np.testing.assert_array_equal(bits(a), bits(b))

        # same shapes, other values: no recompilation
        size = curves.fit_curves._cache_size()
        curves.fit_curves(spec, curves_, x, labels, fit_keys[::-1], lr=lrs[::-1], **kwargs)
        assert curves.fit_curves._cache_size() == size


def test_fit_curve_follows_its_minibatch_plan():
    """fit_curve == a Python loop of fit_step over minibatch_plan's (t, minibatch) with the lr schedule."""
    with X64:
        x, y = toy_data(jax.random.key(14), n=50, d=4)
        start, end = ({"w": jax.random.normal(k, (4, 3), jnp.float64), "b": jnp.zeros(3)}
                      for k in jax.random.split(jax.random.key(15)))
        curve = curves.init_curve(start, end, 2)
        key, lr, wd, momentum = jax.random.key(16), 0.3, 1e-2, 0.8
        fitted, losses = jax.jit(curves.fit_curve, static_argnums=0, static_argnames=("epochs", "batch_size"))(
            linear_apply, curve, x, y, key, epochs=4, batch_size=16, lr=lr, weight_decay=wd, momentum=momentum)
        ts, idx = curves.minibatch_plan(key, 50, 16, 4, jnp.float64)
        assert ts.shape == (12,) and idx.shape == (12, 16)
        for epoch in range(4):  # every epoch: distinct examples, last partial batch dropped
            assert len(np.unique(idx[3 * epoch:3 * epoch + 3])) == 48
        optimizer = curves.curve_optimizer(lr, momentum, 12, jnp.float64)
        state, step_losses = curves.fit_init(curve, optimizer), []
        step = jax.jit(curves.fit_step, static_argnums=(0, 1))
        for s in range(12):
            state, loss = step(linear_apply, optimizer, state, {}, x[idx[s]], y[idx[s]], ts[s], wd)
            step_losses.append(loss)
        # the optimiser is SGD with momentum (PyTorch convention) at lr * lr_factor(step / steps): by hand
        bends, velocity = curve.bends, jax.tree.map(jnp.zeros_like, curve.bends)
        for s in range(12):
            grads = jax.grad(lambda b: curves.curve_loss(linear_apply, curve._replace(bends=b), {}, x[idx[s]],
                                                         y[idx[s]], ts[s], wd))(bends)
            velocity = jax.tree.map(lambda v, g: momentum * v + g, velocity, grads)
            bends = jax.tree.map(lambda p, v: p - lr * curves.lr_factor(s / 12) * v, bends, velocity)
        for a, b in zip(jax.tree.leaves(bends), jax.tree.leaves(state.curve.bends)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(losses, np.reshape(step_losses, (4, 3)).mean(1), rtol=1e-12)
        for a, b in zip(jax.tree.leaves(fitted.bends), jax.tree.leaves(state.curve.bends)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(curves.lr_factor(np.array([0.0, 0.5, 0.7, 0.9, 1.0])),
                                   [1.0, 1.0, 1.0 - 0.2 / 0.4 * 0.99, 0.01, 0.01], rtol=1e-12)


# --------------------------------------------------------------------------------------- BatchNorm statistics

def np_batchnorm_layer1(params, x):
    h = np.asarray(x) @ np.asarray(params["Dense_0"]["kernel"]) + np.asarray(params["Dense_0"]["bias"])
    return h.mean(0), h.var(0)


def test_batch_stats_recomputed_exactly():
    with X64:
        params, template = bn_init(jax.random.key(20))
        x = jax.random.normal(jax.random.key(21), (50, 6), jnp.float64) * 2 + 1
        apply_fn = BNNet()
        # chunks of 16 (+ a remainder of 2): the first layer's statistics are the population ones
        chunked = curves.recompute_batch_stats(apply_fn, params, template, x, chunk_size=16)
        mean, var = np_batchnorm_layer1(params, x)
        np.testing.assert_allclose(chunked["BatchNorm_0"]["mean"], mean, rtol=1e-12)
        np.testing.assert_allclose(chunked["BatchNorm_0"]["var"], var, rtol=1e-12)
        # one pass over everything: every layer consistent, inference reproduces full-batch train mode
        full = curves.recompute_batch_stats(apply_fn, params, template, x)
        np.testing.assert_allclose(full["BatchNorm_0"]["mean"], mean, rtol=1e-12)
        np.testing.assert_allclose(full["BatchNorm_0"]["var"], var, rtol=1e-12)
        np.testing.assert_allclose(models.apply(apply_fn, params, full, x)[0],
                                   models.apply(apply_fn, params, template, x, train=True)[0], rtol=1e-10, atol=1e-12)
        # no BatchNorm: nothing to do
        assert curves.recompute_batch_stats(linear_apply, {"w": 1}, {}, x) == {}


@pytest.mark.slow
def test_batch_stats_recomputed_exactly_on_resnet18():
    spec = models.ModelSpec("resnet18", 2)
    with X64:
        params, template = to64(models.init(spec, jax.random.key(30), (8, 8, 3)))
        x = jax.random.normal(jax.random.key(31), (24, 8, 8, 3), jnp.float64)
        # one pass over all 24 examples (the chunked path is checked on the smaller model above)
        stats = jax.jit(curves.recompute_batch_stats, static_argnums=0)(spec, params, template, x)
        kernel = np.asarray(params["Conv_0"]["kernel"])  # stem: 3x3 conv, padding 1, no bias
        padded = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
        h = sum(padded[:, i:i + 8, j:j + 8, :] @ kernel[i, j] for i in range(3) for j in range(3))
        np.testing.assert_allclose(stats["BatchNorm_0"]["mean"], h.mean((0, 1, 2)), rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(stats["BatchNorm_0"]["var"], h.var((0, 1, 2)), rtol=1e-10)


# ------------------------------------------------------------------------------------------------ evaluation

def test_vmapped_evaluation_with_batchnorm_equals_a_loop():
    with X64:
        x, y = toy_data(jax.random.key(40), n=40)
        x_test, y_test = toy_data(jax.random.key(41), n=30)
        members = [bn_init(k) for k in jax.random.split(jax.random.key(42), 4)]
        stack = lambda trees: jax.tree.map(lambda *a: jnp.stack(a), *trees)
        starts, ends = stack([m[0] for m in members[:2]]), stack([m[0] for m in members[2:]])
        template = stack([m[1] for m in members[:2]])
        curves_ = curves.init_curves(starts, ends, 1, init="random", keys=jax.random.split(jax.random.key(43), 2))
        ts = np.linspace(0, 1, 3)
        metrics = curves.evaluate_curves(BNNet(), curves_, template, x, y, x_test, y_test, ts, bn_chunk_size=16,
                                         eval_batch_size=16)
        assert metrics.train_err.shape == (2, 3)

        @jax.jit
        def reference(curve, t, template):  # one pair, one t, written out directly
            w = curves.curve_point(curve, t)
            stats = curves.recompute_batch_stats(BNNet(), w, template, x, chunk_size=16)
            return models.apply(BNNet(), w, stats, x)[0], models.apply(BNNet(), w, stats, x_test)[0]

        for i in range(2):
            curve_i = jax.tree.map(lambda a: a[i], curves_)
            for j, t in enumerate(ts):
                for logits, labels, name in zip(reference(curve_i, t, members[i][1]), (y, y_test),
                                                ("train", "test")):
                    ce = np.asarray(losses.softmax_cross_entropy(logits, labels)).mean()
                    err = (np.asarray(logits).argmax(-1) != np.asarray(labels)).mean()
                    np.testing.assert_allclose(getattr(metrics, f"{name}_loss")[i, j], ce, rtol=1e-10)
                    np.testing.assert_allclose(getattr(metrics, f"{name}_err")[i, j], err, atol=1e-12)
        assert ((metrics.train_err >= 0) & (metrics.train_err <= 1)).all()


# ------------------------------------------------------------------------------------------------ surfaces

def four_models(key, make=random_params):
    return [make(k) for k in jax.random.split(key, 4)]


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_surface_corners_are_the_four_models_bitwise(degree):
    with X64:
        w = four_models(jax.random.key(50))
        surface = curves.init_surface(*w, degree=degree)
        assert surface.degree == degree
        perturbed = curves.Surface(jax.tree.map(lambda c: c + 0.3, surface.controls))  # corners moved too
        for (u, v), model in zip(((0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)), w):
            for s in (surface, perturbed):
                point = jax.jit(curves.surface_point)(s, u, v)
                expected = model if s is surface else jax.tree.map(lambda x: x + 0.3, model)
                for a, b in zip(jax.tree.leaves(point), jax.tree.leaves(expected)):
                    np.testing.assert_array_equal(bits(a), bits(b))


@pytest.mark.parametrize("degree", [1, 2])
def test_an_initial_surface_is_bilinear_interpolation(degree):
    """degree 1 is bilinear interpolation by definition; higher degrees start on it (Bernstein polynomials
    reproduce linear functions)."""
    with X64:
        w00, w0n, wn0, wnn = four_models(jax.random.key(51))
        surface = curves.init_surface(w00, w0n, wn0, wnn, degree=degree)
        for u, v in np.random.default_rng(0).uniform(size=(5, 2)):
            expected = jax.tree.map(lambda a, b, c, d: (1 - u) * (1 - v) * a + (1 - u) * v * b + u * (1 - v) * c
                                    + u * v * d, w00, w0n, wn0, wnn)
            for a, b in zip(jax.tree.leaves(curves.surface_point(surface, u, v)), jax.tree.leaves(expected)):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_a_degree_n_surface_is_the_tensor_product_of_bernstein_polynomials():
    from math import comb

    with X64:
        surface = curves.Surface(jax.tree.map(lambda c: c + jax.random.normal(jax.random.key(1), c.shape),
                                              curves.init_surface(*four_models(jax.random.key(52)), 3).controls))
        u, v = 0.3, 0.8
        b = lambda t, i: comb(3, i) * t ** i * (1 - t) ** (3 - i)
        expected = jax.tree.map(lambda c: sum(b(u, i) * b(v, j) * c[i, j] for i in range(4) for j in range(4)),
                                surface.controls)
        for a, e in zip(jax.tree.leaves(curves.surface_point(surface, u, v)), jax.tree.leaves(expected)):
            np.testing.assert_allclose(a, e, rtol=1e-12)


def test_surface_bad_input_raises():
    w = four_models(jax.random.key(53), lambda k: random_params(k, jnp.float32))
    with pytest.raises(LLJaxError, match="degree of at least 1"):
        curves.init_surface(*w, degree=0)
    with pytest.raises(LLJaxError, match="structure|shape"):
        curves.init_surface(w[0], w[1], w[2], {"other": jnp.zeros(3)})
    with pytest.raises(LLJaxError, match="at least 2 x 2"):
        curves.evaluate_surface(linear_apply, curves.init_surface(*w), {}, jnp.zeros((4, 6)), jnp.zeros(4, int),
                                jnp.zeros((4, 6)), jnp.zeros(4, int), grid_size=1)


def test_surface_connectivity_on_hand_made_grids():
    e = np.full((3, 3), 0.2)
    assert float(curves.surface_connectivity(e)) == pytest.approx(0.0)
    e[1, 2] = 0.5  # a barrier off the corners
    assert float(curves.surface_connectivity(e)) == pytest.approx(-0.3)
    e[0, 1] = 0.05  # a smaller dip elsewhere: the farthest point wins
    assert float(curves.surface_connectivity(e)) == pytest.approx(-0.3)
    stacked = np.stack([e, np.full((3, 3), 0.1)])
    np.testing.assert_allclose(curves.surface_connectivity(stacked), [-0.3, 0.0], atol=1e-12)


@pytest.mark.parametrize("boundary_first", [False, True])
def test_fitting_a_surface_keeps_its_corners_vmapped_equals_a_loop(boundary_first):
    with X64:
        spec = models.ModelSpec("mlp", 6, num_classes=3, depth=1)
        x, y = toy_data(jax.random.key(54), n=48)
        quads = [[to64(models.init(spec, k, (6,))[0]) for k in jax.random.split(key, 4)]
                 for key in jax.random.split(jax.random.key(55), 2)]
        surfaces_ = [curves.init_surface(*q) for q in quads]
        keys = jax.random.split(jax.random.key(56), 2)
        lrs = jnp.array([0.05, 0.2])
        epochs = 4 if boundary_first else 2  # every edge drawn at least once in 12 steps of 4 edges
        fit = lambda s, k, lr: curves.fit_surface(spec, s, x, y, k, epochs=epochs, batch_size=16, lr=lr,
                                                  boundary_first=boundary_first)
        together, losses_ = jax.jit(jax.vmap(fit))(jax.tree.map(lambda *a: jnp.stack(a), *surfaces_), keys, lrs)
        assert losses_.shape == (2, 2 * epochs if boundary_first else epochs)
        for i in range(2):
            single, single_losses = jax.jit(fit)(surfaces_[i], keys[i], lrs[i])
            np.testing.assert_allclose(losses_[i], single_losses, rtol=1e-10)
            for a, b in zip(jax.tree.leaves(jax.tree.map(lambda c: c[i], together.controls)),
                            jax.tree.leaves(single.controls)):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
            moved = jax.tree.map(lambda a, b: jnp.abs(a - b).max((2, 3) if a.ndim == 4 else 2),
                                 single.controls, surfaces_[i].controls)
            change = np.max(np.stack([np.asarray(m) for m in jax.tree.leaves(moved)]), 0)  # (3, 3)
            assert change[0, 0] == change[0, 2] == change[2, 0] == change[2, 2] == 0.0  # corners fixed
            assert (np.delete(change.ravel(), [0, 2, 6, 8]) > 1e-4).all()  # every other point trained
            for (u, v), model in zip(((0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)), quads[i]):
                for a, b in zip(jax.tree.leaves(curves.surface_point(single, u, v)), jax.tree.leaves(model)):
                    np.testing.assert_array_equal(bits(a), bits(b))


def test_boundary_first_trains_the_edges_on_the_edges_only():
    """Stage one (the edges) alone leaves the interior control point where it started."""
    masks = {b: curves._trainable_mask(2, b) for b in (None, True, False)}
    np.testing.assert_array_equal(masks[True], [[0, 1, 0], [1, 0, 1], [0, 1, 0]])
    np.testing.assert_array_equal(masks[False], [[0, 0, 0], [0, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(masks[None], masks[True] | masks[False])


def test_vmapped_surface_evaluation_equals_a_loop_over_grid_points():
    with X64:
        x, y = toy_data(jax.random.key(57), n=40)
        x_test, y_test = toy_data(jax.random.key(58), n=30)
        members = [bn_init(k) for k in jax.random.split(jax.random.key(59), 4)]
        surface = curves.Surface(jax.tree.map(
            lambda c: c + 0.1 * jax.random.normal(jax.random.key(60), c.shape, c.dtype),
            curves.init_surface(*[m[0] for m in members]).controls))
        m = curves.evaluate_surface(BNNet(), surface, members[0][1], x, y, x_test, y_test, grid_size=3,
                                    bn_chunk_size=16, eval_batch_size=16)
        assert m.train_err.shape == (3, 3)
        ticks = np.linspace(0, 1, 3)
        probabilities, train_losses = [], []
        for i, u in enumerate(ticks):
            for j, v in enumerate(ticks):
                w = curves.surface_point(surface, u, v)
                stats = curves.recompute_batch_stats(BNNet(), w, members[0][1], x, chunk_size=16)
                for xs, ys, name in ((x, y, "train"), (x_test, y_test, "test")):
                    logits = models.apply(BNNet(), w, stats, xs)[0]
                    ce = np.asarray(losses.softmax_cross_entropy(logits, ys)).mean()
                    err = (np.asarray(logits).argmax(-1) != np.asarray(ys)).mean()
                    np.testing.assert_allclose(getattr(m, f"{name}_loss")[i, j], ce, rtol=1e-10)
                    np.testing.assert_allclose(getattr(m, f"{name}_err")[i, j], err, atol=1e-12)
                    if name == "test":
                        probabilities.append(np.asarray(jax.nn.softmax(logits)))
                    else:
                        train_losses.append(ce)
        ensemble = (np.mean(probabilities, 0).argmax(-1) == np.asarray(y_test)).mean()
        np.testing.assert_allclose(m.ensemble_test_acc, ensemble, atol=1e-12)
        np.testing.assert_allclose(m.best_test_acc, 1 - m.test_err.ravel()[np.argmin(train_losses)], atol=1e-12)
