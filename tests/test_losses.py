"""lljax.losses: the per-example losses against closed forms, and the one chunked evaluator."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lljax import losses
from lljax.errors import LLJaxError


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def test_cross_entropy_and_error_closed_forms():
    logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 0.0, 3.0]])
    labels = jnp.array([0, 1])
    log_softmax = np.asarray(logits) - np.log(np.exp(np.asarray(logits)).sum(1, keepdims=True))
    np.testing.assert_allclose(losses.cross_entropy.per_example(logits, labels), -log_softmax[[0, 1], [0, 1]],
                               rtol=1e-12)
    np.testing.assert_array_equal(losses.cross_entropy.error(logits, labels), [0.0, 1.0])
    np.testing.assert_allclose(losses.cross_entropy.mean(logits, labels, jnp.array([1.0, 0.0])),
                               -log_softmax[0, 0], rtol=1e-12)


def test_mse_over_targets_of_any_shape():
    outputs = jnp.arange(12.0).reshape(2, 6)
    targets = jnp.ones((2, 2, 3))
    np.testing.assert_allclose(losses.mse.per_example(outputs, targets),
                               ((np.arange(12.0).reshape(2, 6) - 1) ** 2).mean(1), rtol=1e-12)
    assert losses.mse.error is None and not losses.mse.classification
    np.testing.assert_allclose(losses.mse.per_example(jnp.array([[1.0], [3.0]]), jnp.array([0.0, 1.0])), [1.0, 4.0])


@pytest.mark.parametrize("batch_size", [1, 4, 7, 50])
def test_chunked_evaluation_equals_direct_sums(batch_size):
    x = jax.random.normal(jax.random.key(0), (23, 5))
    w = jax.random.normal(jax.random.key(1), (5, 3))
    y = jax.random.randint(jax.random.key(2), (23,), 0, 3)
    weights = jax.random.uniform(jax.random.key(3), (23,))
    predict = lambda x_: x_ @ w
    total = losses.evaluate(predict, x, y, losses.cross_entropy, weights, batch_size, jnp.float64)
    ce = losses.softmax_cross_entropy(x @ w, y)
    wrong = (jnp.argmax(x @ w, -1) != y)
    np.testing.assert_allclose(total, [jnp.sum(weights * ce), jnp.sum(weights * wrong), weights.sum()], rtol=1e-12)
    rows = jnp.array([5, 3, 3, 20, 0, 11])  # a subset in its own order, gathered chunk by chunk
    subset = losses.evaluate(predict, x, y, losses.cross_entropy, None, batch_size, jnp.float64, rows)
    direct = losses.evaluate(predict, x[rows], y[rows], losses.cross_entropy, None, batch_size, jnp.float64)
    np.testing.assert_allclose(subset, direct, rtol=1e-12)


def test_losses_by_name_and_import_path():
    assert losses.resolve("mse") is losses.mse and losses.resolve(losses.cross_entropy) is losses.cross_entropy
    assert losses.resolve("lljax.losses:mse") is losses.mse
    with pytest.raises(LLJaxError, match="unknown loss 'hinge'"):
        losses.resolve("hinge")
    with pytest.raises(LLJaxError, match="is a function, not an lljax.losses.Loss"):
        losses.resolve("lljax.losses:squared_error")


def test_per_token_means_are_over_the_labelled_positions():
    """Targets (B, T) with ignored positions: every mean is the sum over labelled positions / their number, as
    torch's cross_entropy(ignore_index=-1); weights weight each example's positions."""
    logits = jax.random.normal(jax.random.key(0), (3, 4, 5))
    targets = jnp.array([[1, -1, 2, 0], [-1, -1, 4, 4], [3, 3, -1, 1]])
    log_p = jax.nn.log_softmax(logits)
    labelled = np.asarray(targets) != -1
    nll = -np.take_along_axis(np.asarray(log_p), np.maximum(np.asarray(targets), 0)[..., None], -1)[..., 0]
    np.testing.assert_allclose(losses.cross_entropy.mean(logits, targets), nll[labelled].mean(), rtol=1e-12)
    w = jnp.array([1.0, 0.0, 2.0])
    expected = (nll * labelled * np.asarray(w)[:, None]).sum() / (labelled * np.asarray(w)[:, None]).sum()
    np.testing.assert_allclose(losses.cross_entropy.mean(logits, targets, w), expected, rtol=1e-12)
    values, wrong, counts = losses.cross_entropy.totals(logits, targets)
    np.testing.assert_allclose(values, (nll * labelled).sum(1), rtol=1e-12)
    np.testing.assert_array_equal(counts, labelled.sum(1))
    miss = (np.asarray(logits).argmax(-1) != np.asarray(targets)) & labelled
    np.testing.assert_array_equal(wrong, miss.sum(1))
    total = losses.evaluate(lambda x: x, logits, targets, losses.cross_entropy, w, 2, jnp.float64)
    np.testing.assert_allclose(total[0] / total[2], expected, rtol=1e-12)
    np.testing.assert_allclose(total[1] / total[2], (miss * np.asarray(w)[:, None]).sum() / total[2], rtol=1e-12)


def test_one_label_per_example_means_are_unchanged_by_the_per_token_path():
    logits = jax.random.normal(jax.random.key(1), (6, 3))
    labels = jnp.array([0, 2, 1, 1, 0, 2])
    np.testing.assert_array_equal(losses.cross_entropy.mean(logits, labels),
                                  losses.softmax_cross_entropy(logits, labels).mean())
    per_token = losses.cross_entropy.mean(logits[:, None], labels[:, None])  # T = 1: the same numbers
    np.testing.assert_allclose(per_token, losses.softmax_cross_entropy(logits, labels).mean(), rtol=1e-12)


# ------------------------------------------------------------------- the losses of Zhou et al. 2022 (NeurIPS)

LOGITS = [[2.0, 0.5, -1.0, 0.3], [0.0, 0.0, 3.0, -2.0], [-1.0, 4.0, 0.5, 0.5]]
LABELS = [0, 1, 1]


def _log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    return logits - np.log(np.exp(logits).sum(1, keepdims=True))


def test_label_smoothing_focal_and_scaled_mse_closed_forms():
    logits, labels = jnp.asarray(LOGITS), jnp.asarray(LABELS)
    logp = _log_softmax(LOGITS)
    nll = -logp[np.arange(3), LABELS]
    a, gamma, scale = 0.1, 2.5, 15.0
    np.testing.assert_allclose(losses.label_smoothing(a).per_example(logits, labels),
                               (1 - a) * nll + a * (-logp).mean(1), rtol=1e-12)
    p_y = np.exp(-nll)
    np.testing.assert_allclose(losses.focal(gamma).per_example(logits, labels), -(1 - p_y) ** gamma * np.log(p_y),
                               rtol=1e-12)
    onehot = np.eye(4)[LABELS]
    np.testing.assert_allclose(losses.mse_onehot(scale).per_example(logits, labels),
                               ((np.asarray(LOGITS) - scale * onehot) ** 2).mean(1), rtol=1e-12)
    for loss in (losses.label_smoothing(a), losses.focal(gamma), losses.mse_onehot(scale)):
        assert loss.classification
        np.testing.assert_array_equal(loss.error(logits, labels), [0.0, 1.0, 0.0])


def test_focal_gamma_0_and_label_smoothing_0_are_cross_entropy():
    logits, labels = jnp.asarray(LOGITS), jnp.asarray(LABELS)
    ce = losses.cross_entropy.per_example(logits, labels)
    np.testing.assert_allclose(losses.focal(0.0).per_example(logits, labels), ce, rtol=1e-12)
    np.testing.assert_allclose(losses.label_smoothing(0.0).per_example(logits, labels), ce, rtol=1e-12)
    # their gradients too (focal's (1 - p)^gamma factor drops out exactly at gamma 0)
    grad = lambda loss: jax.grad(lambda z: loss.mean(z, labels))(logits)
    np.testing.assert_allclose(grad(losses.focal(0.0)), grad(losses.cross_entropy), rtol=1e-12)
    np.testing.assert_allclose(grad(losses.label_smoothing(0.0)), grad(losses.cross_entropy), rtol=1e-12)


def test_focal_gradient_is_finite_where_the_model_is_certain():
    """0 < gamma < 1: (1 - p_y)^gamma has an infinite derivative at p_y = 1, reached in float32 by a confident
    model; the loss's gradient must stay finite there (and equal the closed form where p_y < 1)."""
    logits = jnp.asarray([[40.0, 0.0, 0.0], [1.0, 0.5, 0.0]], jnp.float32)
    labels = jnp.asarray([0, 0])
    for gamma in (0.5, 1.0, 3.0):
        g = jax.grad(lambda z: losses.focal(gamma).mean(z, labels))(logits)
        assert np.all(np.isfinite(g)), (gamma, g)


def test_build_uses_parameters_and_rejects_bad_ones():
    assert losses.build("focal", focal_gamma=1.5) == losses.focal(1.5)  # equal parameters: equal (hashable) losses
    assert losses.build("cross_entropy") is losses.cross_entropy
    for kwargs, message in ((dict(focal_gamma=-0.5), "focal gamma"), (dict(label_smoothing=1.0), "label smoothing"),
                            (dict(label_smoothing=-0.1), "label smoothing"), (dict(mse_scale=0.0), "mse scale")):
        with pytest.raises(LLJaxError, match=message):
            losses.build("focal", **kwargs)
