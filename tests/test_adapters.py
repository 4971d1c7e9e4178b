"""Flax NNX and Equinox models through the whole pipeline (`lljax.adapters`): the same study with a linen model and
with the NNX / Equinox model of the same architecture and the same initial weights gives the same numbers; their
BatchNorm, Dropout, features and weight layouts behave as in their own frameworks; bad models are one-line errors
before anything is written. (Every family vmapped == looped on these models: tests/test_families.py.)"""
import csv
import math

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lljax import curves, data, grid, models, pipeline, spectra, surfaces
from lljax.config import Config
from lljax.errors import LLJaxError


# ------------------------------------------------------------------------ one architecture in three frameworks

class LinenNet(nn.Module):
    """Dense -> BatchNorm (or LayerNorm) -> ReLU -> Dropout -> Dense, the read-out's inputs sown."""

    width: int
    num_classes: int
    batch_norm: bool = True
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Dense(self.width, name="hidden")(x.reshape(x.shape[0], -1))
        if self.batch_norm:
            h = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="norm")(h)
        else:
            h = nn.LayerNorm(epsilon=1e-5, name="norm")(h)
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(h))
        self.sow("intermediates", "features", h)
        return nn.Dense(self.num_classes, name="out")(h)


class NNXNet(nnx.Module):
    def __init__(self, width, num_classes, *, rngs, input_shape, batch_norm=True, dropout=0.0):
        self.hidden = nnx.Linear(math.prod(input_shape), width, rngs=rngs)
        self.norm = nnx.BatchNorm(width, momentum=0.9, rngs=rngs) if batch_norm else \
            nnx.LayerNorm(width, epsilon=1e-5, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.out = nnx.Linear(width, num_classes, rngs=rngs)

    def __call__(self, x):
        h = self.dropout(jax.nn.relu(self.norm(self.hidden(x.reshape(x.shape[0], -1)))))
        self.sow(nnx.Intermediate, "features", h)
        return self.out(h)


class EqxNet(eqx.Module):
    """One example at a time; with BatchNorm `__call__(x, state, *, key)` returns (outputs, state)."""

    hidden: eqx.nn.Linear
    norm: eqx.Module
    dropout: eqx.nn.Dropout
    out: eqx.nn.Linear

    def __init__(self, width, num_classes, *, key, input_shape, batch_norm=False, dropout=0.0):
        k1, k2 = jax.random.split(key)
        self.hidden = eqx.nn.Linear(math.prod(input_shape), width, key=k1)
        self.norm = eqx.nn.BatchNorm(width, "batch", momentum=0.9, mode="batch") if batch_norm else \
            eqx.nn.LayerNorm(width, eps=1e-5)
        self.dropout = eqx.nn.Dropout(dropout)
        self.out = eqx.nn.Linear(width, num_classes, key=k2)

    def features(self, x, state=None, *, key=None):
        h = self.hidden(x.reshape(-1))
        h, state = (self.norm(h), None) if state is None else self.norm(h, state)
        h = self.dropout(jax.nn.relu(h), key=key)
        return h if state is None else (h, state)

    def __call__(self, x, state=None, *, key=None):
        if state is None:
            return self.out(self.features(x, key=key))
        h, state = self.features(x, state, key=key)
        return self.out(h), state


def linen_bn(width, num_classes):
    return LinenNet(width, num_classes, batch_norm=True)


def linen_ln(width, num_classes):
    return LinenNet(width, num_classes, batch_norm=False)


def _linen_params(width, num_classes, key, input_shape, batch_norm):
    """The linen model's initial parameters for `key`: lljax initialises a linen model with the member's key and
    passes an NNX factory nnx.Rngs(that key), an Equinox factory that key."""
    return LinenNet(width, num_classes, batch_norm).init(key, jnp.zeros((1, *input_shape)))["params"]


def nnx_bn(width, num_classes, *, rngs, input_shape):
    """NNXNet with BatchNorm holding the linen model's initial weights for the same key."""
    net = NNXNet(width, num_classes, rngs=rngs, input_shape=input_shape, batch_norm=True)
    p = _linen_params(width, num_classes, rngs.default.key[...], input_shape, True)
    for name in ("hidden", "out"):
        getattr(net, name).kernel[...] = p[name]["kernel"]
        getattr(net, name).bias[...] = p[name]["bias"]
    return net


def eqx_ln(width, num_classes, *, key, input_shape):
    """EqxNet with LayerNorm holding the linen model's initial weights (transposed: (out, in)) for the same key."""
    net = EqxNet(width, num_classes, key=key, input_shape=input_shape)
    p = _linen_params(width, num_classes, key, input_shape, False)
    return eqx.tree_at(lambda m: (m.hidden.weight, m.hidden.bias, m.out.weight, m.out.bias), net,
                       (p["hidden"]["kernel"].T, p["hidden"]["bias"], p["out"]["kernel"].T, p["out"]["bias"]))


def nnx_bn_dropout(width, num_classes, *, rngs, input_shape):  # tests/test_families.py
    return NNXNet(width, num_classes, rngs=rngs, input_shape=input_shape, batch_norm=True, dropout=0.1)


def eqx_bn_dropout(width, num_classes, *, key, input_shape):  # tests/test_families.py
    return EqxNet(width, num_classes, key=key, input_shape=input_shape, batch_norm=True, dropout=0.1)


def tiny_dataset():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6)).astype(np.float32)
    y = ((x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0).astype(np.int32))
    return data.Dataset.from_arrays("tiny", x[:64], y[:64], x[64:], y[64:])


# ------------------------------------------------------------------------------ the same study, same numbers

STUDY = dict(widths=(8,), lrs=(0.1,), batch_sizes=(16,), seeds=2, epochs=2,
             metrics=("loss", "hessian", "curves", "cka", "l2", "spectra", "collapse"), hessian_samples=32,
             hessian_top_k=1, hessian_lanczos_steps=16, hessian_density_runs=1, hessian_density_steps=4,
             curve_epochs=2, curve_points=3, curve_batch_size=16, cka_samples=16, spectra_bootstrap=0,
             spectra_min_evals=4, track_epochs=(1,))


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def numbers(rows):
    out = {}
    for i, row in enumerate(rows):
        for k, v in row.items():
            try:
                out[(i, k)] = float(v)
            except (TypeError, ValueError):
                pass
    return out


@pytest.mark.slow
@pytest.mark.parametrize("linen, other", [(linen_bn, nnx_bn), (linen_ln, eqx_ln)], ids=["nnx", "equinox"])
def test_the_same_study_with_linen_and_nnx_or_equinox_gives_the_same_numbers(tmp_path, linen, other):
    """Training (SGD; BatchNorm for NNX, LayerNorm for Equinox, whose BatchNorm debiases its statistics as linen's
    does not), the families of the paper, spectra and collapse, and the tracked families on a snapshot after the
    first epoch (kept by orbax): the same numbers to float32 rounding. (The
    random directions of the slices and surfaces families are drawn in each parameter's own layout, torch's
    (out, in) for Equinox: other draws, not other definitions; every family on these models: test_families.)"""
    config = Config.from_dict(STUDY)
    for name, factory in (("linen", linen), ("other", other)):
        pipeline.run(config, tmp_path / name, model=factory, dataset=tiny_dataset(), progress=False)
    for table in ("members", "pairs", "grid", "trajectory", "pair_trajectory"):
        a, b = (numbers(read_csv(tmp_path / name / f"{table}.csv")) for name in ("linen", "other"))
        assert a.keys() == b.keys() and len(a) > 10, table
        for key in a:
            np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-6, err_msg=f"{table} {key}")
    members = read_csv(tmp_path / "other" / "members.csv")
    assert {"hessian_top_eig", "hessian_trace", "alpha", "nc1", "train_loss"} <= set(members[0])
    assert {"mc", "cka_softmax", "l2"} <= set(read_csv(tmp_path / "other" / "pairs.csv")[0])


# ------------------------------------------------------------------------------------------ the primitives

@pytest.fixture(scope="module")
def x():
    return jax.random.normal(jax.random.key(1), (10, 6)) + 1.0


def test_nnx_and_linen_agree_in_training_inference_and_recomputed_batchnorm(x):
    linen, nnx_ = models.ModelSpec(linen_bn, 8, 3), models.ModelSpec(nnx_bn, 8, 3)
    (lp, ls), (np_, ns) = (models.init(s, jax.random.key(0), (6,)) for s in (linen, nnx_))
    assert jax.tree.structure(lp) == jax.tree.structure(np_) and set(ns["norm"]) == {"mean", "var"}
    jax.tree.map(np.testing.assert_array_equal, (lp["hidden"], lp["out"], ls), (np_["hidden"], np_["out"], ns))
    for train in (False, True):
        (a, a_stats), (b, b_stats) = (models.apply(s, p, st, x, train=train)
                                      for s, p, st in ((linen, lp, ls), (nnx_, np_, ns)))
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)
        jax.tree.map(lambda u, v: np.testing.assert_allclose(v, u, rtol=1e-6, atol=1e-7), a_stats, b_stats)
    (a, a_h), (b, b_h) = (models.features(s, p, st, x) for s, p, st in ((linen, lp, ls), (nnx_, np_, ns)))
    np.testing.assert_allclose(b_h, a_h, rtol=1e-6, atol=1e-7)
    # nnx.BatchNorm stops the gradient of its running averages; the adapter gives curves' jvp recompute m back
    exact = curves.recompute_batch_stats(linen, lp, ls, x)
    got = curves.recompute_batch_stats(nnx_, np_, ns, x)
    h = x @ lp["hidden"]["kernel"] + lp["hidden"]["bias"]
    np.testing.assert_allclose(got["norm"]["mean"], h.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["norm"]["var"], h.var(0), rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(v, u, rtol=1e-6, atol=1e-7), exact, got)


def test_equinox_batchnorm_through_lljax_equals_equinox_itself(x):
    """Three training steps of an eqx.nn.BatchNorm(mode='batch') model through `models.apply` (its state as
    batch statistics with decay = momentum ** steps) and through Equinox's own stateful loop: the same running
    statistics, and inference with Equinox's debiasing (statistics / (1 - momentum ** steps))."""
    spec = models.ModelSpec(eqx_bn_dropout, 8, 3)
    params, stats = models.init(spec, jax.random.key(0), (6,))
    assert set(stats["norm"]) == {"mean", "var", "decay"} and float(stats["norm"]["decay"]) == 1.0
    model, state = eqx.nn.make_with_state(eqx_bn_dropout)(8, 3, key=jax.random.key(0), input_shape=(6,))
    own_hidden = {"weight": model.hidden.weight, "bias": model.hidden.bias}
    jax.tree.map(np.testing.assert_array_equal, params["hidden"], own_hidden)
    inference = eqx.nn.inference_mode(model)
    own = lambda m, s, xs: jax.vmap(lambda x_: m(x_, s), axis_name="batch", out_axes=(0, None))(xs)
    np.testing.assert_allclose(models.apply(spec, params, stats, x)[0], own(inference, state, x)[0], rtol=1e-6)
    no_dropout = eqx.tree_at(lambda m: m.dropout, model, eqx.nn.Dropout(0.0))
    for step in range(3):
        xs = x + step
        stats = models.apply(spec, params, stats, xs, train=True, rng=jax.random.key(step))[1]
        _, state = own(no_dropout, state, xs)  # BatchNorm sits before the Dropout: the same statistics
    np.testing.assert_allclose(float(stats["norm"]["decay"]), 0.9 ** 3, rtol=1e-6)
    np.testing.assert_allclose(models.apply(spec, params, stats, x)[0], own(inference, state, x)[0], rtol=1e-5,
                               atol=1e-6)
    # recomputed statistics: the population mean and variance, used as they are (decay 0)
    got = curves.recompute_batch_stats(spec, params, stats, x)
    h = x @ params["hidden"]["weight"].T + params["hidden"]["bias"]
    np.testing.assert_allclose(got["norm"]["mean"], h.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["norm"]["var"], h.var(0), rtol=1e-5, atol=1e-6)
    assert float(got["norm"]["decay"]) == 0.0
    np.testing.assert_allclose(models.apply(spec, params, got, x)[0], own(no_dropout, state, x)[0], rtol=1e-4,
                               atol=1e-5)  # inference with them == Equinox's training mode on x


@pytest.mark.parametrize("factory", [nnx_bn_dropout, eqx_bn_dropout], ids=["nnx", "equinox"])
def test_dropout_gets_the_step_key_in_training_only(factory, x):
    spec = models.ModelSpec(factory, 32, 3)
    params, stats = models.init(spec, jax.random.key(0), (6,))
    inference = models.apply(spec, params, stats, x)[0]
    np.testing.assert_array_equal(inference, models.apply(spec, params, stats, x, rng=jax.random.key(5))[0])
    a, b, a_again = (models.apply(spec, params, stats, x, train=True, rng=jax.random.key(k))[0] for k in (2, 3, 2))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, a_again)
    # an ensemble: every member draws its own masks
    keys = jax.random.split(jax.random.key(0), 3)
    stacked = jax.vmap(lambda k: models.init(spec, k, (6,)))(keys)
    outs = jax.jit(jax.vmap(lambda p, s, k: models.apply(spec, p, s, x, True, k)[0]))(*stacked, keys)
    for i in range(3):
        one = models.apply(spec, *jax.tree.map(lambda a: a[i], stacked), x, True, keys[i])[0]
        np.testing.assert_allclose(outs[i], one, rtol=1e-6, atol=1e-6)


def test_features_hooks(x):
    for factory in (nnx_bn_dropout, eqx_bn_dropout):
        spec = models.ModelSpec(factory, 8, 3)
        params, stats = models.init(spec, jax.random.key(0), (6,))
        outputs, h = models.features(spec, params, stats, x)
        assert h.shape == (10, 8) and np.allclose(outputs, models.apply(spec, params, stats, x)[0])


# ------------------------------------------------------------------------------------------ weight layouts

def _leaf(params, path):
    return dict(jax.tree_util.tree_flatten_with_path(params)[0])[path]


class LinenLayers(nn.Module):
    @nn.compact
    def __call__(self, tokens, train=False):
        h = nn.Embed(24, 16, name="embed")(tokens)
        h = nn.Conv(12, (3,), name="conv")(h)
        h = nn.MultiHeadDotProductAttention(2, qkv_features=12, out_features=12, name="attention")(h, h)
        return nn.Dense(5, name="readout")(h[:, -1])


class NNXLayers(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Embed(24, 16, rngs=rngs)
        self.conv = nnx.Conv(16, 12, (3,), rngs=rngs)
        self.attention = nnx.MultiHeadAttention(2, 12, 12, 12, decode=False, rngs=rngs)
        self.readout = nnx.Linear(12, 5, rngs=rngs)


class EqxLayers(eqx.Module):
    embed: eqx.nn.Embedding
    conv: eqx.nn.Conv1d
    readout: eqx.nn.Linear

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.embed = eqx.nn.Embedding(24, 16, key=k1)
        self.conv = eqx.nn.Conv1d(16, 12, 3, key=k2)
        self.readout = eqx.nn.Linear(12, 5, key=k3)


def test_weight_spectra_and_filter_normalisation_read_nnx_and_equinox_layers_as_linens():
    """nnx.Linear, nnx.Conv, nnx.Embed and nnx.MultiHeadAttention hold the linen layers' weights in the same
    layout; Equinox's Linear (out, in), Conv (out, in, k) and Embedding hold them in torch's: the same spectra
    per layer and the same filter-normalised directions as the linen model with the same weights."""
    linen = LinenLayers().init(jax.random.key(0), jnp.zeros((1, 6), jnp.int32))["params"]
    nnx_params = nnx.to_pure_dict(nnx.state(NNXLayers(nnx.Rngs(0)), nnx.Param))
    # the same names and shapes: lljax.layers reads every leaf as linen's (spectra, filter normalisation)
    assert jax.tree.map(jnp.shape, nnx_params) == jax.tree.map(jnp.shape, linen)
    nnx_params = jax.tree.map(lambda _, w: w, nnx_params, linen)
    eqx_model = EqxLayers(jax.random.key(1))
    eqx_model = eqx.tree_at(lambda m: (m.embed.weight, m.conv.weight, m.conv.bias, m.readout.weight), eqx_model,
                            (linen["embed"]["embedding"], jnp.transpose(linen["conv"]["kernel"], (2, 1, 0)),
                             linen["conv"]["bias"][:, None], linen["readout"]["kernel"].T))
    eqx_params = eqx.filter(eqx_model, eqx.is_inexact_array)
    # a layer's spectrum metrics are functions of its eigenvalues and shape: compare those
    layers = lambda params: {layer.name: (layer, spectra.eigenvalues(_leaf(params, layer.path), layer))
                             for layer in spectra.weight_layers(params, min_evals=4)[0]}
    want = layers(linen)
    assert set(want) == {"embed", "conv", "attention/query", "attention/key", "attention/value", "attention/out",
                         "readout"}
    for params, names in ((nnx_params, set(want)), (eqx_params, {"embed", "conv", "readout"})):
        got = layers(params)
        assert set(got) == names
        for name in names:
            (a, a_evals), (b, b_evals) = want[name], got[name]
            assert (a.N, a.M, a.rf, a.conv, a.num_evals) == (b.N, b.M, b.rf, b.conv, b.num_evals), name
            np.testing.assert_allclose(b_evals, a_evals, rtol=1e-5, atol=1e-7, err_msg=name)
    # filter normalisation: the same directions, transposed
    d = jax.tree.map(lambda a: jnp.cos(jnp.arange(a.size, dtype=jnp.float32).reshape(a.shape)), linen)
    want = surfaces.filter_normalize(d, linen)
    d_eqx = eqx.tree_at(lambda m: (m.embed.weight, m.conv.weight, m.conv.bias, m.readout.weight, m.readout.bias),
                        eqx_params, (d["embed"]["embedding"], jnp.transpose(d["conv"]["kernel"], (2, 1, 0)),
                                     d["conv"]["bias"][:, None], d["readout"]["kernel"].T, d["readout"]["bias"]))
    got = surfaces.filter_normalize(d_eqx, eqx_params)
    np.testing.assert_allclose(got.embed.weight, want["embed"]["embedding"], rtol=1e-6)
    np.testing.assert_allclose(got.conv.weight, jnp.transpose(want["conv"]["kernel"], (2, 1, 0)), rtol=1e-6)
    np.testing.assert_allclose(got.readout.weight, want["readout"]["kernel"].T, rtol=1e-6)
    assert not np.any(got.conv.bias) and not np.any(got.readout.bias)  # biases zeroed, as linen's


# ------------------------------------------------------------------------------------ checkpoints and resume

@pytest.mark.parametrize("factory", ["test_adapters:nnx_bn_dropout", "test_adapters:eqx_bn_dropout"],
                         ids=["nnx", "equinox"])
def test_training_resumed_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path, factory):
    values = dict(model=factory, widths=(6,), lrs=(0.1,), batch_sizes=(16,), seeds=2, schedule="constant")
    members = grid.grid_members(Config.from_dict({**values, "epochs": 3}).knob_values(), 2)
    group = grid.group_members(members)[0]
    train = lambda epochs, folder: pipeline.train_group(Config.from_dict({**values, "epochs": epochs}),
                                                        tiny_dataset(), group, members, folder)
    train(1, tmp_path / "ckpt")  # stopped after one epoch: its checkpoint
    resumed, whole = train(3, tmp_path / "ckpt"), train(3, None)
    for a, b in zip(jax.tree.leaves((resumed.state.params, resumed.state.batch_stats)),
                    jax.tree.leaves((whole.state.params, whole.state.batch_stats))):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------------ bad input

class NeedsRngs(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(6, 3, rngs=rngs)
        self.dropout = nnx.Dropout(0.5)

    def __call__(self, x, rngs):
        return self.dropout(self.linear(x), rngs=rngs)


class NoRngsDropout(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(6, 3, rngs=rngs)
        self.dropout = nnx.Dropout(0.5)

    def __call__(self, x):
        return self.dropout(self.linear(x))


class Cached(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(6, 3, rngs=rngs)
        self.calls = nnx.Variable(jnp.zeros(()))

    def __call__(self, x):
        return self.linear(x)


class StatelessBatchNorm(eqx.Module):
    linear: eqx.nn.Linear
    norm: eqx.nn.BatchNorm

    def __init__(self, key, mode="batch"):
        self.linear = eqx.nn.Linear(6, 3, key=key)
        self.norm = eqx.nn.BatchNorm(3, "batch", mode=mode)

    def __call__(self, x, *, key=None):
        return self.linear(x)


class EmaBatchNorm(StatelessBatchNorm):
    def __init__(self, key):
        super().__init__(key, mode="ema")

    def __call__(self, x, state, *, key=None):
        return self.norm(self.linear(x), state)


def nothing(width, num_classes, *, rngs):
    return "not a model"


BAD = {  # name -> (factory, the one-line error)
    "neither": (nothing, r"returned a str, not a flax.linen.Module, flax.nnx.Module or equinox.Module"),
    "linen-signature-nnx": (lambda width, num_classes: NoRngsDropout(nnx.Rngs(0)),
                            r"returned an nnx.Module \(NoRngsDropout\) but takes no rngs"),
    "linen-signature-eqx": (lambda width, num_classes: EqxNet(4, 3, key=jax.random.key(0), input_shape=(6,)),
                            r"returned an eqx.Module \(EqxNet\) but takes no key"),
    "an-instance": (NNXNet(4, 3, rngs=nnx.Rngs(0), input_shape=(6,)), r"is a NNXNet, not a callable factory"),
    "nnx-call-needs-rngs": (lambda width, num_classes, *, rngs: NeedsRngs(rngs),
                            r"its __call__ needs rngs, which lljax cannot give"),
    "nnx-dropout-without-rngs": (lambda width, num_classes, *, rngs: NoRngsDropout(rngs),
                                 r"its nnx.Dropout at 'dropout' holds no rngs"),
    "nnx-other-state": (lambda width, num_classes, *, rngs: Cached(rngs), r"holds Variable at 'calls'"),
    "eqx-batchnorm-without-state": (lambda width, num_classes, *, key: StatelessBatchNorm(key),
                                    r"holds eqx.nn.BatchNorm but its __call__ takes no state"),
    "eqx-ema-batchnorm": (lambda width, num_classes, *, key: EmaBatchNorm(key), r"has mode='ema'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_models_are_one_line_errors_before_anything_is_written(tmp_path, case):
    factory, match = BAD[case]
    config = Config.from_dict(dict(widths=(4,), lrs=(0.1,), batch_sizes=(16,), seeds=2, epochs=1))
    with pytest.raises(LLJaxError, match=match) as error:
        pipeline.run(config, tmp_path / "out", model=factory, dataset=tiny_dataset(), progress=False)
    assert len(str(error.value).splitlines()) == 1 and "model" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_collapse_needs_the_features_hooks(tmp_path):
    class NoHook(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(6, 3, rngs=rngs)

        def __call__(self, x):
            return self.linear(x)

    config = Config.from_dict(dict(widths=(4,), lrs=(0.1,), batch_sizes=(16,), seeds=2, epochs=1,
                                   metrics=("loss", "collapse")))
    for factory, match in ((lambda w, c, *, rngs: NoHook(rngs), r"self.sow\(nnx.Intermediate, 'features', h\)"),
                           (lambda w, c, *, key: eqx.nn.Linear(6, c, key=key), "has no features method")):
        with pytest.raises(LLJaxError, match=match) as error:
            pipeline.run(config, tmp_path / "out", model=factory, dataset=tiny_dataset(), progress=False)
        assert len(str(error.value).splitlines()) == 1 and not (tmp_path / "out").exists()
