import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lljax import losses, models, pytrees, train
from lljax.errors import LLJaxError


def small_problem(n=96, d=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y)


def hyper(lrs, wd=5e-4, momentum=0.9, fraction=1.0, noise=0.0):
    m = len(lrs)
    full = lambda v: jnp.broadcast_to(jnp.asarray(v, jnp.float32), (m,))
    return train.Hyper(jnp.asarray(lrs, jnp.float32), full(wd), full(momentum), full(fraction), full(noise))


def spec_for(x, width=5, batch=16, epochs=3, schedule="step", model="mlp"):
    return train.TrainSpec(models.ModelSpec(model, width, num_classes=3), batch, epochs, x.shape[0], schedule)


def trained(spec, h, keys, x, y, first=0, last=None):
    state, member = train.init_ensemble(spec, keys, h, y, x.shape[1:])
    return train.train_ensemble(spec, state, member, x, first, spec.epochs if last is None else last), member


def test_vmapped_ensemble_equals_loop_of_single_members():
    x, y = small_problem()
    spec = spec_for(x)
    h = hyper([0.05, 0.2, 0.1], wd=[0.0, 1e-3, 5e-4], momentum=[0.9, 0.5, 0.0], fraction=[1.0, 0.5, 0.8],
              noise=[0.0, 0.3, 0.1])
    keys = jax.random.split(jax.random.key(0), 3)
    state, _ = trained(spec, h, keys, x, y)
    for i in range(3):
        single, _ = trained(spec, pytrees.member(h, slice(i, i + 1)), keys[i:i + 1], x, y)
        for a, b in zip(jax.tree.leaves(pytrees.member(state, i)), jax.tree.leaves(pytrees.member(single, 0))):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_single_member_step_matches_torch_sgd_semantics():
    """Two steps by hand: d = g + wd*w; buf = m*buf + d; w -= lr(step)*buf (torch.optim.SGD)."""
    x, y = small_problem(n=16)
    spec = spec_for(x, batch=16, epochs=4, schedule="constant")
    h = pytrees.member(hyper([0.1], wd=0.01, momentum=0.9), 0)
    state, member = train.init_member(spec, jax.random.key(1), h, y, x.shape[1:])
    loss = lambda p: losses.softmax_cross_entropy(models.apply(spec.model, p, {}, x)[0], y).mean()
    w, buf = state.params, None
    for step in range(2):
        state, _ = train.train_step(spec, member, state, x, y, step)
        d = jax.tree.map(lambda g, p: g + 0.01 * p, jax.grad(loss)(w), w)
        buf = d if buf is None else jax.tree.map(lambda b, g: 0.9 * b + g, buf, d)
        w = jax.tree.map(lambda p, b: p - 0.1 * b, w, buf)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(w)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_schedules():
    x, _ = small_problem()
    spec = spec_for(x, epochs=4)  # 6 steps per epoch, 24 steps
    lr = lambda s, step: float(train.learning_rate(s, 0.2, step))
    assert lr(spec, 0) == pytest.approx(0.2) and lr(spec, 17) == pytest.approx(0.2)
    assert lr(spec, 18) == pytest.approx(0.02)
    cosine = spec_for(x, epochs=4, schedule="cosine")
    assert lr(cosine, 0) == pytest.approx(0.2) and lr(cosine, 12) == pytest.approx(0.1)
    assert lr(spec_for(x, schedule="constant"), 17) == pytest.approx(0.2)


def test_second_call_with_same_shapes_does_not_recompile():
    x, y = small_problem()
    spec = spec_for(x, width=7)
    keys = jax.random.split(jax.random.key(0), 2)
    trained(spec, hyper([0.1, 0.2]), keys, x, y)
    sizes = train.init_program()._cache_size(), train.train_ensemble._cache_size()
    # another group of the same shapes (other hyperparameters, seeds and epoch range) reuses both programs
    trained(spec, hyper([0.3, 0.01], wd=0.0, noise=0.2), jax.random.split(jax.random.key(5), 2), x, y, 1, 2)
    assert (train.init_program()._cache_size(), train.train_ensemble._cache_size()) == sizes
    trained(spec_for(x, width=9), hyper([0.1, 0.2]), keys, x, y)  # a new width is a new program
    assert train.train_ensemble._cache_size() == sizes[1] + 1


def test_chunked_training_equals_one_run():
    x, y = small_problem()
    spec = spec_for(x, epochs=4)
    keys = jax.random.split(jax.random.key(2), 2)
    whole, _ = trained(spec, hyper([0.1, 0.05]), keys, x, y)
    state, member = train.init_ensemble(spec, keys, hyper([0.1, 0.05]), y, x.shape[1:])
    for first, last in [(0, 1), (1, 3), (3, 4)]:
        state = train.train_ensemble(spec, state, member, x, first, last)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(state)):
        np.testing.assert_array_equal(a, b)


def test_training_in_sequential_passes_equals_one_pass():
    """Member i trained in slice i % passes gives member i's numbers, whatever the number of slices."""
    x, y = small_problem()
    spec = spec_for(x)
    h = hyper([0.05, 0.2, 0.1, 0.3, 0.02, 0.15], wd=[0.0, 1e-3, 5e-4, 0.0, 1e-4, 5e-4],
              fraction=[1.0, 0.5, 0.8, 1.0, 0.7, 0.9], noise=[0.0, 0.3, 0.1, 0.0, 0.2, 0.0])
    keys = jax.random.split(jax.random.key(3), 6)
    one, _ = trained(spec, h, keys, x, y)
    for passes in (2, 3, 6):
        state, member = train.init_ensemble(spec, keys, h, y, x.shape[1:])
        sliced = train.train_ensemble(spec, state, member, x, 0, spec.epochs, passes)
        for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(sliced)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    state, member = train.init_ensemble(spec, keys, h, y, x.shape[1:])
    with pytest.raises(LLJaxError, match="divisor of the 6 members"):
        train.train_ensemble(spec, state, member, x, 0, 1, 4)


def test_divergence_is_isolated():
    x, y = small_problem()
    spec = spec_for(x)
    keys = jax.random.split(jax.random.key(3), 3)
    state, _ = trained(spec, hyper([0.1, 1e6, 0.05]), keys, x, y)
    assert state.diverged.tolist() == [False, True, False]
    assert all(bool(jnp.isfinite(leaf[1]).all()) for leaf in jax.tree.leaves(state.params))  # frozen, not NaN
    healthy, _ = trained(spec, hyper([0.1, 0.05]), keys[jnp.array([0, 2])], x, y)
    for a, b in zip(jax.tree.leaves(pytrees.member(state, jnp.array([0, 2]))), jax.tree.leaves(healthy)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_training_learns_and_uses_the_member_view():
    x, y = small_problem(n=192)
    spec = spec_for(x, width=16, epochs=30)
    state, member = trained(spec, hyper([0.1, 0.1], noise=[0.0, 1.0]), jax.random.split(jax.random.key(4), 2),
                            x, y)
    _, acc_own = train.evaluate_ensemble(spec.model, state.params, state.batch_stats, x, member.view.labels,
                                         member.view.mask)
    _, acc_clean = train.evaluate_ensemble(spec.model, state.params, state.batch_stats, x,
                                           jnp.broadcast_to(y, (2, len(y))))
    assert acc_clean[0] > 0.9  # clean member learns the rule
    assert acc_own[1] > acc_clean[1] + 0.2  # the all-noise member fits its own random labels, not the rule


def test_evaluate_handles_ragged_chunks_and_weights():
    x, y = small_problem(n=50)
    spec = models.ModelSpec("mlp", 4, num_classes=3)
    params, stats = models.init(spec, jax.random.key(0), (6,))
    w = jnp.asarray(np.random.default_rng(0).integers(0, 2, 50), jnp.float32)
    loss, acc = train.evaluate(spec, params, stats, x, y, w, batch_size=16)
    logits, _ = models.apply(spec, params, stats, x)
    ce = losses.softmax_cross_entropy(logits, y)
    np.testing.assert_allclose(loss, (w * ce).sum() / w.sum(), rtol=1e-6)
    np.testing.assert_allclose(acc, (w * (logits.argmax(-1) == y)).sum() / w.sum(), rtol=1e-6)


def test_bad_train_specs():
    spec = models.ModelSpec("mlp", 4)
    with pytest.raises(LLJaxError, match="larger than the training set"):
        train.TrainSpec(spec, 200, 1, 100)
    with pytest.raises(LLJaxError, match="schedule"):
        train.TrainSpec(spec, 10, 1, 100, "warmup")


# ------------------------------------------------------------------- sharpness-aware minimisation (Foret et al.)

def sam_hyper(rhos, lr=0.1, wd=0.01, momentum=0.9):
    return hyper([lr] * len(rhos), wd=wd, momentum=momentum)._replace(sam_rho=jnp.asarray(rhos, jnp.float32))


def test_sam_step_equals_a_hand_written_two_pass_step():
    """SAM by hand (the usual PyTorch two-pass step): g at w; eps = rho g / ||g||; g' at w + eps; SGD from w with
    d = g' + wd*w, buf = m*buf + d, w -= lr*buf."""
    x, y = small_problem(n=16)
    spec = spec_for(x, batch=16, epochs=4, schedule="constant")
    rho, lr, wd, m = 0.2, 0.1, 0.01, 0.9
    state, member = train.init_member(spec, jax.random.key(1), pytrees.member(sam_hyper([rho]), 0), y, x.shape[1:])
    loss = lambda p: losses.softmax_cross_entropy(models.apply(spec.model, p, {}, x)[0], y).mean()
    w, buf = state.params, None
    for step in range(2):
        state, _ = train.train_step(spec, member, state, x, y, step)
        g = jax.grad(loss)(w)
        norm = np.sqrt(sum(float(jnp.sum(leaf ** 2)) for leaf in jax.tree.leaves(g)))
        g_sam = jax.grad(loss)(jax.tree.map(lambda p, gi: p + rho * gi / norm, w, g))
        d = jax.tree.map(lambda gi, p: gi + wd * p, g_sam, w)
        buf = d if buf is None else jax.tree.map(lambda b, di: m * b + di, buf, d)
        w = jax.tree.map(lambda p, b: p - lr * b, w, buf)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(w)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    plain, _ = train.train_step(spec, member._replace(hyper=member.hyper._replace(sam_rho=None)),
                                train.init_member(spec, jax.random.key(1), pytrees.member(hyper([lr]), 0), y,
                                                  x.shape[1:])[0], x, y, 0)
    assert not np.allclose(jax.tree.leaves(plain.params)[0], jax.tree.leaves(state.params)[0])


def test_sam_perturbation_is_rho_over_the_gradient_norm_and_zero_for_a_zero_gradient():
    grads = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([[4.0]])}
    eps = train.sam_perturbation(grads, 0.5)
    np.testing.assert_allclose(eps["a"], [0.3, 0.0], rtol=1e-6)
    np.testing.assert_allclose(eps["b"], [[0.4]], rtol=1e-6)
    zero = train.sam_perturbation(jax.tree.map(jnp.zeros_like, grads), 0.5)
    assert all(np.all(leaf == 0) for leaf in jax.tree.leaves(zero))


class _BatchNormMLP:
    """A factory of a tiny MLP with BatchNorm (its statistics must come from the unperturbed pass)."""

    def __call__(self, width, num_classes):
        import flax.linen as nn

        class Net(nn.Module):
            @nn.compact
            def __call__(self, x, train=False):
                h = nn.Dense(width)(x)
                h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(h))
                return nn.Dense(num_classes)(h)

        return Net()


def test_sam_updates_batchnorm_statistics_from_the_unperturbed_pass():
    x, y = small_problem(n=16)
    spec = train.TrainSpec(models.ModelSpec(_BatchNormMLP(), 5, num_classes=3), 16, 2, 16, "constant")
    state, member = train.init_member(spec, jax.random.key(2), pytrees.member(sam_hyper([0.5]), 0), y, x.shape[1:])
    sam, _ = train.train_step(spec, member, state, x, y, 0)
    plain, _ = train.train_step(spec, member._replace(hyper=member.hyper._replace(sam_rho=None)), state, x, y, 0)
    for a, b in zip(jax.tree.leaves(sam.batch_stats), jax.tree.leaves(plain.batch_stats)):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(jax.tree.leaves(sam.params)[0], jax.tree.leaves(plain.params)[0])


def test_per_member_sam_radius_vmapped_equals_a_loop_and_radius_0_is_plain_training():
    x, y = small_problem()
    spec = spec_for(x, epochs=2)
    rhos = [0.0, 0.05, 0.3]
    keys = jax.random.split(jax.random.key(3), 3)
    state, _ = trained(spec, sam_hyper(rhos), keys, x, y)
    for i in range(3):
        single, _ = trained(spec, pytrees.member(sam_hyper(rhos), slice(i, i + 1)), keys[i:i + 1], x, y)
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(single.params)):
            np.testing.assert_allclose(a[i], b[0], rtol=1e-5, atol=1e-6)
    plain, _ = trained(spec, hyper([0.1] * 3, wd=0.01), keys, x, y)  # no SAM in the program at all
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(plain.params)):
        np.testing.assert_allclose(a[0], b[0], rtol=1e-6, atol=1e-7)
        assert not np.allclose(a[2], b[2])


def _exact(tree):
    """Leaves as numpy arrays, PRNG keys as their key data (for exact comparison)."""
    data = lambda a: jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a
    return [np.asarray(data(a)) for a in jax.tree.leaves(tree)]


def _init_factories():
    from test_adapters import eqx_bn_dropout, eqx_ln, nnx_bn, nnx_bn_dropout
    return {"nnx_bn": nnx_bn, "nnx_bn_dropout": nnx_bn_dropout, "eqx_ln": eqx_ln, "eqx_bn_dropout": eqx_bn_dropout}


@pytest.mark.parametrize("model", ["mlp", "cnn", "transformer", "nnx_bn", "nnx_bn_dropout", "eqx_ln", "eqx_bn_dropout",
                                   pytest.param("resnet18", marks=pytest.mark.slow)])
def test_initialisation_is_bit_identical_to_the_default_compiler_options(model):
    """`init_ensemble` compiles with `INIT_COMPILER_OPTIONS` (quicker); its weights, optimiser state and views
    equal those of the same program compiled with XLA's defaults (the initialisation before that cut), bit for
    bit. (Compiled at LLVM level 0 the MLP's kernels differ in the last bit: this test fails.)"""
    shapes = {"mlp": (40,), "cnn": (12, 12, 3), "resnet18": (8, 8, 3), "transformer": (12,)}
    shape = shapes.get(model, (6,))
    extras = (("seq_len", 12),) if model == "transformer" else ()
    factory = _init_factories().get(model, model)
    width = {"mlp": 64, "cnn": 8, "resnet18": 4, "transformer": 16}.get(model, 8)
    spec = train.TrainSpec(models.ModelSpec(factory, width, 3, extras=extras), 8, 2, 64,
                           input_dtype="int32" if model == "transformer" else "float32")
    count = 4
    h = train.Hyper(*(jnp.linspace(0.1, 0.5, count) for _ in range(5)))
    keys = jax.random.split(jax.random.key(3), count)
    labels = jax.random.randint(jax.random.key(1), (64,), 0, 3)
    new = train.init_ensemble(spec, keys, h, labels, shape, keys[::-1])
    default = jax.jit(train.init_members, static_argnames=("spec", "input_shape"))
    old = default(spec, keys, h, labels, shape, keys[::-1])
    assert jax.tree.structure(new) == jax.tree.structure(old)
    for a, b in zip(_exact(new), _exact(old), strict=True):
        np.testing.assert_array_equal(a, b)


def test_initialisation_inside_another_trace_uses_the_default_program():
    """Only a top-level jit takes compiler options: `init_ensemble` under `eval_shape` or `jit` still works and
    gives what it gives on its own."""
    x, y = small_problem()
    spec, h, keys = spec_for(x), hyper([0.1, 0.2]), jax.random.split(jax.random.key(4), 2)
    alone = train.init_ensemble(spec, keys, h, y, x.shape[1:])
    shapes = jax.eval_shape(lambda k: train.init_ensemble(spec, k, h, y, x.shape[1:]), keys)
    inside = jax.jit(lambda k: train.init_ensemble(spec, k, h, y, x.shape[1:]))(keys)
    assert [a.shape for a in jax.tree.leaves(shapes)] == [a.shape for a in jax.tree.leaves(alone)]
    for a, b in zip(_exact(inside), _exact(alone), strict=True):
        np.testing.assert_array_equal(a, b)
