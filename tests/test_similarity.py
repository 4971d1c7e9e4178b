"""Tests of lljax.similarity: CKA (linear / RBF, biased / debiased), all-pairs helpers, mixup probe, L2 distance.

Numerical checks run in float64 against independent NumPy references written from the papers' formulas:
biased HSIC as tr(K H L H) with the explicit centring matrix H, unbiased HSIC as Song et al. 2012 eq. (5).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from lljax import similarity
from lljax.errors import LLJaxError


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _rng(seed=0):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------------------------- references


def _ref_biased_hsic(k, m):
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ m @ h)


def _ref_unbiased_hsic(k, m):
    """Song et al. 2012, eq. (5): zero the diagonals, then the three-term U-statistic."""
    n = k.shape[0]
    kt, lt = k - np.diag(np.diag(k)), m - np.diag(np.diag(m))
    one = np.ones(n)
    return (np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * one @ kt @ lt @ one) / (n * (n - 3))


def _ref_cka(k, m, debiased):
    hsic = _ref_unbiased_hsic if debiased else _ref_biased_hsic
    return hsic(k, m) / np.sqrt(hsic(k, k) * hsic(m, m))


def _ref_rbf_gram(x, threshold):
    sq = np.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=-1)
    return np.exp(-sq / (2 * threshold**2 * np.median(sq)))


def _related_pair(n=40, f=6, g=9, seed=0):
    r = _rng(seed)
    x = r.normal(size=(n, f))
    y = np.tanh(x @ r.normal(size=(f, g))) + 0.3 * r.normal(size=(n, g))
    return x, y


# ----------------------------------------------------------------------------------------------- linear CKA


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("shape", [(40, 6, 9), (12, 30, 50)])  # features < examples, and features > examples
def test_linear_cka_matches_reference_in_both_forms(x64, debiased, shape):
    n, f, g = shape
    x, y = _related_pair(n, f, g)
    expected = _ref_cka(x @ x.T, y @ y.T, debiased)
    for form in ("features", "examples", "auto"):
        got = similarity.linear_cka(x, y, debiased=debiased, form=form)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, expected, rtol=1e-10, err_msg=form)


@pytest.mark.parametrize("debiased", [False, True])
def test_linear_cka_identity_symmetry_and_invariances(x64, debiased):
    x, y = _related_pair()
    r = _rng(1)
    q_x, _ = np.linalg.qr(r.normal(size=(x.shape[1], x.shape[1])))
    q_y, _ = np.linalg.qr(r.normal(size=(y.shape[1], y.shape[1])))
    base = similarity.linear_cka(x, y, debiased)
    assert 0.2 < base < 0.99  # a genuinely partial similarity, so the invariances below are not trivial
    np.testing.assert_allclose(similarity.linear_cka(x, x, debiased), 1.0, rtol=1e-12)
    np.testing.assert_allclose(similarity.linear_cka(y, x, debiased), base, rtol=1e-12)
    np.testing.assert_allclose(similarity.linear_cka(x @ q_x, y @ q_y, debiased), base, rtol=1e-10)
    np.testing.assert_allclose(similarity.linear_cka(7.5 * x, 0.01 * y, debiased), base, rtol=1e-10)
    np.testing.assert_allclose(similarity.linear_cka(x + 3.0, y - 2.0, debiased), base, rtol=1e-10)
    # not invariant to a general (non-orthogonal) linear map: the property above is not vacuous
    stretch = np.diag(np.arange(1.0, x.shape[1] + 1) ** 2)
    assert abs(similarity.linear_cka(x @ stretch, y, debiased) - base) > 1e-3


def test_linear_cka_closed_forms(x64):
    r = _rng(2)
    # one feature each: CKA is the squared Pearson correlation
    a, b = r.normal(size=30), r.normal(size=30)
    b = a + 0.7 * b
    np.testing.assert_allclose(similarity.linear_cka(a[:, None], b[:, None]), np.corrcoef(a, b)[0, 1] ** 2,
                               rtol=1e-12)
    # X = [u, v] with centred, orthogonal, equal-norm u, v and Y = [u]: ||X^T Y||^2 = |u|^4,
    # ||X^T X|| = sqrt(2)|u|^2, ||Y^T Y|| = |u|^2, so CKA = 1/sqrt(2)
    u = np.array([1.0, -1.0, 1.0, -1.0])
    v = np.array([1.0, 1.0, -1.0, -1.0])
    np.testing.assert_allclose(similarity.linear_cka(np.stack([u, v], 1), u[:, None]), 1 / np.sqrt(2), rtol=1e-12)
    # orthogonal centred features: CKA 0
    np.testing.assert_allclose(similarity.linear_cka(u[:, None], v[:, None]), 0.0, atol=1e-15)


def test_debiased_cka_of_independent_data_is_about_zero_while_biased_is_not(x64):
    r = _rng(3)
    biased, debiased = [], []
    for _ in range(5):
        x, y = r.normal(size=(200, 500)), r.normal(size=(200, 500))
        biased.append(float(similarity.linear_cka(x, y)))
        debiased.append(float(similarity.linear_cka(x, y, debiased=True)))
    # with many more features than examples the biased estimator sees structure that is not there
    assert min(biased) > 0.5
    assert max(abs(d) for d in debiased) < 0.05
    # and for data with real shared structure, the debiased value stays high
    x, y = _related_pair(200, 6, 9)
    assert similarity.linear_cka(x, y, debiased=True) > 0.5


# ----------------------------------------------------------------------------------------------- RBF CKA


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("threshold", [0.5, 1.0, 2.0])
def test_rbf_cka_matches_reference(x64, debiased, threshold):
    x, y = _related_pair(30, 4, 5)
    expected = _ref_cka(_ref_rbf_gram(x, threshold), _ref_rbf_gram(y, threshold), debiased)
    np.testing.assert_allclose(similarity.rbf_cka(x, y, threshold, debiased), expected, rtol=1e-10)


@pytest.mark.parametrize("debiased", [False, True])
def test_rbf_cka_identity_symmetry_invariances_and_wide_kernel_limit(x64, debiased):
    x, y = _related_pair(30, 4, 5)
    q, _ = np.linalg.qr(_rng(4).normal(size=(4, 4)))
    base = similarity.rbf_cka(x, y, debiased=debiased)
    assert 0.2 < base < 0.99
    np.testing.assert_allclose(similarity.rbf_cka(x, x, debiased=debiased), 1.0, rtol=1e-12)
    np.testing.assert_allclose(similarity.rbf_cka(y, x, debiased=debiased), base, rtol=1e-12)
    np.testing.assert_allclose(similarity.rbf_cka(x @ q, 4.0 * y, debiased=debiased), base, rtol=1e-10)
    # a very wide kernel is linear to first order, and centring removes the constant: RBF CKA -> linear CKA
    np.testing.assert_allclose(similarity.rbf_cka(x, y, threshold=1e3, debiased=debiased),
                               similarity.linear_cka(x, y, debiased), rtol=1e-5)


def test_rbf_cka_median_zero_falls_back_to_mean_distance(x64):
    # 8 of 10 rows identical: more than half of all squared distances are 0, so the median bandwidth would be 0
    x = np.zeros((10, 3))
    x[0], x[1] = [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]
    y = _rng(5).normal(size=(10, 2))
    sq_x = np.sum((x[:, None] - x[None]) ** 2, axis=-1)
    assert np.median(sq_x) == 0
    expected = _ref_cka(np.exp(-sq_x / (2 * np.mean(sq_x))), _ref_rbf_gram(y, 1.0), debiased=False)
    value = similarity.rbf_cka(x, y)
    assert np.isfinite(value)
    np.testing.assert_allclose(value, expected, rtol=1e-10)


# ----------------------------------------------------------------------------------------------- degenerate input


@pytest.mark.parametrize("kind", ["linear", "rbf"])
@pytest.mark.parametrize("debiased", [False, True])
def test_constant_representation_gives_zero_not_nan(kind, debiased):
    fn = similarity.linear_cka if kind == "linear" else similarity.rbf_cka
    x = _rng(5).normal(size=(32, 10)).astype(np.float32)
    # a dead network: identical logits for every input, softmax computed in float32
    dead = jax.nn.softmax(jnp.tile(jnp.array([[0.3, -1.2, 2.0] + [0.0] * 7], jnp.float32), (32, 1)))
    for constant in (dead, np.zeros((32, 10), np.float32), np.full((32, 10), 123.0, np.float32)):
        assert float(fn(x, constant, debiased=debiased)) == 0.0
        assert float(fn(constant, x, debiased=debiased)) == 0.0
        assert float(fn(constant, constant, debiased=debiased)) == 0.0
    # and float32 works for ordinary inputs
    np.testing.assert_allclose(fn(x, x, debiased=debiased), 1.0, rtol=1e-5)


def test_bad_inputs_raise_lljax_error():
    x = np.ones((10, 3))
    with pytest.raises(LLJaxError, match="same examples"):
        similarity.linear_cka(x, np.ones((9, 3)))
    with pytest.raises(LLJaxError, match="examples, features"):
        similarity.linear_cka(np.ones(10), x)
    with pytest.raises(LLJaxError, match="at least 4"):
        similarity.linear_cka(x[:3], x[:3], debiased=True)
    with pytest.raises(LLJaxError, match="threshold"):
        similarity.rbf_cka(x, x, threshold=0.0)
    with pytest.raises(LLJaxError, match="form"):
        similarity.linear_cka(x, x, form="gram")
    with pytest.raises(LLJaxError, match="kind"):
        similarity.all_pairs_cka(np.ones((2, 10, 3)), kind="cosine")
    with pytest.raises(LLJaxError, match="members, examples"):
        similarity.all_pairs_cka(np.ones((10, 3)))


def test_inputs_with_trailing_axes_are_flattened(x64):
    r = _rng(6)
    x, y = r.normal(size=(20, 3, 4)), r.normal(size=(20, 2, 5))
    np.testing.assert_allclose(similarity.linear_cka(x, y),
                               similarity.linear_cka(x.reshape(20, 12), y.reshape(20, 10)), rtol=1e-12)


# ----------------------------------------------------------------------------------------------- all pairs


@pytest.mark.parametrize("kind", ["linear", "rbf"])
@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("features", [5, 40])  # feature form and example form
def test_all_pairs_cka_equals_loop_over_pairs(x64, kind, debiased, features):
    r = _rng(7)
    shared = r.normal(size=(30, features))
    reps = np.stack([shared + s * r.normal(size=(30, features)) for s in (0.2, 0.5, 1.0, 2.0)])
    reps[3] = 1.5  # one dead member
    matrix = np.asarray(similarity.all_pairs_cka(reps, kind=kind, debiased=debiased, threshold=0.8))
    fn = similarity.linear_cka if kind == "linear" else lambda a, b, d: similarity.rbf_cka(a, b, 0.8, d)
    loop = np.array([[fn(a, b, debiased) for b in reps] for a in reps])
    np.testing.assert_allclose(matrix, loop, rtol=1e-10, atol=1e-14)
    assert np.all(np.isfinite(matrix))
    np.testing.assert_allclose(np.diag(matrix), [1.0, 1.0, 1.0, 0.0], atol=1e-12)
    assert len(np.unique(np.round(matrix[np.triu_indices(3, k=1)], 8))) == 3  # distinct pairs, not a broadcast


def test_all_pairs_output_cka_and_mean_over_pairs(x64):
    logits = _rng(8).normal(size=(3, 25, 10))
    logits[1] = logits[0] + 0.3 * logits[1]
    out = similarity.all_pairs_output_cka(logits)
    for i in range(3):
        for j in range(3):
            np.testing.assert_allclose(out["logits"][i, j], similarity.linear_cka(logits[i], logits[j]), rtol=1e-10)
            np.testing.assert_allclose(out["softmax"][i, j],
                                       similarity.linear_cka(jax.nn.softmax(logits[i]), jax.nn.softmax(logits[j])),
                                       rtol=1e-10)
    m = np.asarray(out["softmax"])
    np.testing.assert_allclose(similarity.mean_over_pairs(m), (m[0, 1] + m[0, 2] + m[1, 2]) / 3, rtol=1e-12)


def test_pairwise_nonsymmetric_evaluates_every_ordered_pair():
    values = jnp.arange(4.0)
    matrix = similarity.pairwise(lambda a, b: 10 * a + b, values, symmetric=False)
    np.testing.assert_array_equal(matrix, 10 * np.arange(4.0)[:, None] + np.arange(4.0)[None, :])


# ----------------------------------------------------------------------------------------------- mixup probe


def test_mixup_inputs_mix_two_training_inputs_with_beta_lambda():
    n, num = 1000, 768
    x = jnp.eye(n, dtype=jnp.float32)  # one-hot rows: a mixture's nonzeros reveal its two sources and lambda
    probe = np.asarray(similarity.mixup_inputs(jax.random.key(0), x, num=num, alpha=16.0))
    assert probe.shape == (num, n)
    np.testing.assert_allclose(probe.sum(1), 1.0, rtol=1e-6)
    assert np.all((probe > 0).sum(1) <= 2)
    first_sources = np.argmax(probe, axis=1)  # not used for uniqueness: max picks either source
    assert len(np.unique(first_sources)) > num // 2
    larger = probe.max(1)[(probe > 0).sum(1) == 2]
    beta = scipy.stats.beta(16, 16)
    # max(lambda, 1 - lambda) has CDF F(t) - F(1 - t) for t >= 1/2
    assert scipy.stats.kstest(larger, lambda t: beta.cdf(t) - beta.cdf(1 - t)).pvalue > 1e-3
    # the same key gives the same probe, another key another
    np.testing.assert_array_equal(probe, similarity.mixup_inputs(jax.random.key(0), x, num=num))
    assert not np.array_equal(probe, similarity.mixup_inputs(jax.random.key(1), x, num=num))


def test_mixup_inputs_keeps_trailing_shape_and_rejects_bad_num():
    x = _rng(9).normal(size=(50, 2, 3)).astype(np.float32)
    assert similarity.mixup_inputs(jax.random.key(0), x, num=7).shape == (7, 2, 3)
    with pytest.raises(LLJaxError, match="num"):
        similarity.mixup_inputs(jax.random.key(0), x, num=51)


# ----------------------------------------------------------------------------------------------- L2 distance


def _params(r, scale=1.0):
    return {"dense": {"kernel": scale * r.normal(size=(3, 4)), "bias": r.normal(size=(4,))},
            "out": [r.normal(size=(4, 2))]}


def test_l2_distance_matches_numpy(x64):
    r = _rng(10)
    a, b = _params(r), _params(r)
    flat = lambda p: np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(p)])  # noqa: E731
    np.testing.assert_allclose(similarity.l2_distance(a, b), np.linalg.norm(flat(a) - flat(b)), rtol=1e-12)
    assert float(similarity.l2_distance(a, a)) == 0.0


def test_all_pairs_l2_equals_loop(x64):
    r = _rng(11)
    members = [_params(r, scale) for scale in (0.5, 1.0, 2.0, 4.0, 8.0)]
    stacked = jax.tree.map(lambda *leaves: np.stack(leaves), *members)
    matrix = np.asarray(similarity.all_pairs_l2(stacked))
    loop = np.array([[similarity.l2_distance(a, b) for b in members] for a in members])
    np.testing.assert_allclose(matrix, loop, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(np.diag(matrix), 0.0)


def test_l2_distance_rejects_mismatched_trees():
    r = _rng(12)
    a = _params(r)
    with pytest.raises(LLJaxError, match="structure"):
        similarity.l2_distance(a, {"dense": a["dense"]})
    b = jax.tree.map(lambda leaf: leaf, a)
    b["out"] = [np.ones((2, 4))]
    with pytest.raises(LLJaxError, match="shapes"):
        similarity.l2_distance(a, b)
    with pytest.raises(LLJaxError, match="leading member axis"):
        similarity.all_pairs_l2({"a": np.ones((3, 2)), "b": np.ones((4, 2))})


def test_neural_collapse_of_a_simplex_etf_is_zero_and_of_noise_is_not():
    with jax.enable_x64(True):
        K, d = 5, 8
        etf = np.sqrt(K / (K - 1)) * (np.eye(K) - 1 / K)
        means = np.zeros((K, d))
        means[:, :K] = 2.5 * etf
        labels = np.repeat(np.arange(K), 6)
        h = means[labels] + 0.7  # every example at its class mean (a shift of the global mean changes nothing)
        logits = h @ means.T - 1.0  # a classifier aligned with the means (self-duality)
        nc = similarity.neural_collapse(h, labels, logits, K)
        np.testing.assert_allclose(np.asarray(nc), 0.0, atol=1e-12)
        rng = np.random.default_rng(0)
        noisy = similarity.neural_collapse(rng.normal(size=(30, d)), labels, rng.normal(size=(30, K)), K)
        assert all(float(v) > 0.05 for v in noisy)
        # NC1 against NumPy with the pseudo-inverse; weights leave examples out
        hr, w = rng.normal(size=(30, d)), np.r_[np.ones(25), np.zeros(5)]
        kept, y = hr[:25], labels[:25]
        mu = np.stack([kept[y == c].mean(0) for c in range(K)])
        sw = sum(np.outer(x - mu[c], x - mu[c]) for x, c in zip(kept, y)) / 25
        sb = sum(np.outer(m - kept.mean(0), m - kept.mean(0)) for m in mu) / K
        got = similarity.neural_collapse(hr, labels, rng.normal(size=(30, K)), K, w)
        np.testing.assert_allclose(got.nc1, np.trace(sw @ np.linalg.pinv(sb)) / K, rtol=1e-9)
