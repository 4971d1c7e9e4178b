import jax
import jax.numpy as jnp
import numpy as np
import pytest
from unittest import mock

from lljax import models
from lljax.errors import LLJaxError

apply = jax.jit(models.apply, static_argnums=0, static_argnames="train")


@pytest.fixture(scope="module")
def resnet():
    spec = models.ModelSpec("resnet18", 2)
    return (spec, *models.init(spec, jax.random.key(0), (8, 8, 3)))


@pytest.mark.parametrize("name,width,shape", [("mlp", 7, (40,)), ("cnn", 5, (40,)), ("cnn", 3, (12, 12, 1)),
                                              ("resnet18", 2, (8, 8, 3))])
def test_models_give_logits(name, width, shape):
    spec = models.ModelSpec(name, width, num_classes=7)
    params, batch_stats = models.init(spec, jax.random.key(0), shape)
    logits, _ = apply(spec, params, batch_stats, jnp.ones((3, *shape)))
    assert logits.shape == (3, 7) and bool(jnp.isfinite(logits).all())
    assert (len(jax.tree.leaves(batch_stats)) > 0) == (name == "resnet18")


def test_parameter_counts_match_the_reference_architectures():
    count = lambda spec, shape: models.count_params(jax.eval_shape(models.init, spec, jax.random.key(0), shape)[0])
    # MLP: 40 -> w -> w -> 10 with biases
    w = 100
    assert count(models.ModelSpec("mlp", w), (40,)) == 40 * w + w + w * w + w + w * 10 + 10
    # the MNIST-1D baseline CNN (25 channels, 125 features before the read-out)
    assert count(models.ModelSpec("cnn", 25), (40,)) == (5 * 25 + 25) + 2 * (3 * 25 * 25 + 25) + 125 * 10 + 10
    # the standard CIFAR ResNet18 (k = 64) has 11,173,962 parameters
    assert count(models.ModelSpec("resnet18", 64), (32, 32, 3)) == 11_173_962


def test_cpu_and_accelerator_convolutions_agree(resnet):
    spec, params, stats = resnet
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    cpu, _ = apply(spec, params, stats, x)
    with mock.patch("jax.default_backend", lambda: "gpu"):
        other, _ = models.apply(spec, params, stats, x)  # not jitted: the backend is read at trace time
    np.testing.assert_allclose(cpu, other, rtol=1e-4, atol=1e-5)


def test_batchnorm_train_mode_updates_running_statistics(resnet):
    spec, params, stats = resnet
    x = 3.0 + jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
    _, new_stats = apply(spec, params, stats, x, train=True)
    stem = new_stats["BatchNorm_0"]["mean"]
    assert not np.allclose(stem, stats["BatchNorm_0"]["mean"])
    # inference mode leaves them alone
    _, same = apply(spec, params, stats, x, train=False)
    np.testing.assert_array_equal(same["BatchNorm_0"]["mean"], stats["BatchNorm_0"]["mean"])


def test_loss_fn_is_mean_cross_entropy():
    spec = models.ModelSpec("mlp", 4, num_classes=3)
    params, stats = models.init(spec, jax.random.key(0), (5,))
    x, y = jax.random.normal(jax.random.key(1), (6, 5)), jnp.array([0, 1, 2, 0, 1, 2])
    logits, _ = apply(spec, params, stats, x)
    expected = -np.mean(np.asarray(jax.nn.log_softmax(logits))[np.arange(6), np.asarray(y)])
    np.testing.assert_allclose(models.loss_fn(spec, stats)(params, (x, y)), expected, rtol=1e-6)


@pytest.mark.parametrize("kwargs,match", [(dict(model="mlp", width=0), "width"),
                                          (dict(model="mlp", width=-3), "width"),
                                          (dict(model="mlp", width=4, depth=0), "depth")])
def test_bad_specs(kwargs, match):
    with pytest.raises(LLJaxError, match=match):
        models.ModelSpec(**kwargs)


# ------------------------------------------------------------------------------------------ the registry

USER_MODULE = """
import flax.linen as nn

class Net(nn.Module):
    width: int
    num_classes: int

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.LayerNorm()(nn.relu(nn.Dense(self.width)(x.reshape(x.shape[0], -1))))
        x = nn.Dropout(0.5, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)

def factory(width, num_classes):
    return Net(width, num_classes)

def not_a_module(width, num_classes):
    return "a string"

NOT_CALLABLE = 3
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_nets.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    models.registry.import_object.cache_clear()
    yield "user_nets"
    models.registry.import_object.cache_clear()


def test_registered_names_and_import_paths_give_the_same_kind_of_factory(user_module):
    assert models.factory("mlp") is models.MODELS["mlp"]
    spec = models.ModelSpec(f"{user_module}:factory", 6, num_classes=4)
    params, stats = models.init(spec, jax.random.key(0), (5,))
    assert stats == {} and set(params) == {"Dense_0", "LayerNorm_0", "Dense_1"}
    assert spec.name == f"{user_module}:factory"
    assert models.ModelSpec(models.mlp, 4).name == "lljax.models:mlp"


@pytest.mark.parametrize("path,match", [
    ("no_such_module_anywhere:factory", "does not import"),
    ("{m}:missing", "has no attribute 'missing'"),
    ("{m}:NOT_CALLABLE", "not a callable factory"),
    ("{m}:not_a_module", "returned a str, not a flax.linen.Module"),
    ("vgg", "unknown model 'vgg'"),
])
def test_bad_models_are_one_line_errors(user_module, path, match):
    with pytest.raises(LLJaxError, match=match) as error:
        models.build(models.ModelSpec(path.format(m=user_module), 4))
    assert len(str(error.value).splitlines()) == 1


def test_depth_reaches_factories_that_take_it_and_only_those(user_module):
    params, _ = models.init(models.ModelSpec("mlp", 4, depth=3), jax.random.key(0), (5,))
    assert len(params) == 4  # three hidden layers and the read-out
    with pytest.raises(LLJaxError, match="takes no depth"):
        models.build(models.ModelSpec(f"{user_module}:factory", 4, depth=3))


def test_dropout_is_on_in_training_without_batchnorm(user_module):
    """train=True reaches a model with Dropout and no BatchNorm; the 'dropout' rng decides the mask."""
    spec = models.ModelSpec(f"{user_module}:factory", 32, num_classes=3)
    params, stats = models.init(spec, jax.random.key(0), (5,))
    x = jax.random.normal(jax.random.key(1), (8, 5))
    inference = models.apply(spec, params, stats, x)[0]
    np.testing.assert_array_equal(inference, models.apply(spec, params, stats, x, train=False)[0])
    a, b, a_again = (models.apply(spec, params, stats, x, train=True, rng=jax.random.key(k))[0] for k in (2, 3, 2))
    assert not np.allclose(a, inference) and not np.allclose(a, b)
    np.testing.assert_array_equal(a, a_again)


# ------------------------------------------------------------------------------------------ the built-in Transformer

def reference_transformer(p, tokens, heads, layer_norm=True, per_token=False):
    """The built-in Transformer's forward pass written out in numpy (float64) from its parameters."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)

    def norm(x, q):
        if not layer_norm:
            return x
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-6) * q["scale"] + q["bias"]

    dense = lambda x, q: x @ q["kernel"] + q["bias"]
    t = tokens.shape[1]
    x = p["embed"]["embedding"][tokens] + p["positions"]["embedding"][:t][None]
    causal = np.tril(np.ones((t, t), bool))
    for i in range(sum(k.startswith("block_") for k in p)):
        b = p[f"block_{i}"]
        norms = iter([b[k] for k in sorted(k for k in b if k.startswith("LayerNorm"))] or [None, None])
        h = norm(x, next(norms))
        a = b["attention"]
        q, k, v = (np.einsum("btd,dhe->bthe", h, a[n]["kernel"]) + a[n]["bias"] for n in ("query", "key", "value"))
        logits = np.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(q.shape[-1])
        logits = np.where(causal, logits, -np.inf)
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        out = np.einsum("bhqk,bkhe->bqhe", weights, v)
        x = x + np.einsum("bqhe,hed->bqd", out, a["out"]["kernel"]) + a["out"]["bias"]
        h = norm(x, next(norms))
        x = x + dense(np.maximum(dense(h, b["mlp_in"]), 0), b["mlp_out"])
    if layer_norm:
        x = norm(x, p["final_norm"])
    return dense(x if per_token else x[:, -1], p["readout"])


@pytest.mark.parametrize("depth, layer_norm, per_token", [(1, True, False), (2, False, True), (2, True, True)])
def test_transformer_matches_a_hand_written_forward_pass(depth, layer_norm, per_token):
    extras = (("layer_norm", layer_norm), ("per_token", per_token), ("seq_len", 6), ("vocab_size", 11))
    spec = models.ModelSpec("transformer", 64, num_classes=7, depth=depth, extras=extras)
    params, stats = models.init(spec, jax.random.key(3), (6,), "int32")
    assert not stats and params["block_0"]["attention"]["query"]["kernel"].shape == (64, 2, 32)  # 2 heads of 32
    params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(4), a.shape), params)  # biases too
    tokens = np.asarray(jax.random.randint(jax.random.key(5), (4, 6), 0, 11))
    with jax.enable_x64(True):
        got, _ = models.apply(spec, jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params), {}, tokens)
    want = reference_transformer(params, tokens, 2, layer_norm, per_token)
    assert got.shape == ((4, 6, 7) if per_token else (4, 7))
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_transformer_heads_mlp_and_positions():
    assert [models.default_heads(w) for w in (16, 64, 128, 96, 100)] == [1, 2, 4, 3, 2]
    extras = (("heads", 4), ("mlp_width", 20), ("seq_len", 3), ("vocab_size", 9))
    module = models.build(models.ModelSpec("transformer", 48, 5, extras=extras))
    assert (module.heads, module.mlp_width, module.max_len, module.vocab_size, module.depth) == (4, 20, 3, 9, 1)
    with pytest.raises(LLJaxError, match="not divisible by its 5 heads"):
        models.build(models.ModelSpec("transformer", 48, 5, extras=(("heads", 5), ("seq_len", 3))))


@pytest.mark.parametrize("inputs, match", [(jnp.ones((2, 4)), "embeds integer tokens"),
                                           (jnp.ones((2, 9), jnp.int32), r"length <= 4")])
def test_transformer_bad_inputs_are_one_line_errors(inputs, match):
    spec = models.ModelSpec("transformer", 16, 3, extras=(("seq_len", 4), ("vocab_size", 5)))
    params, _ = models.init(spec, jax.random.key(0), (4,), "int32")
    with pytest.raises(LLJaxError, match=match):
        models.apply(spec, params, {}, inputs)
