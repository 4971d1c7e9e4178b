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
