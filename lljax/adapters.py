"""Flax NNX and Equinox models as lljax models: the same pure contract as a linen model, so that training, every
metric family, checkpoints and resume treat all three alike.

lljax's contract (`lljax.models`): `init(key) -> (params, batch_stats)`, two pytrees of float arrays (nested dicts
with string keys: what orbax checkpoints and what the metrics walk), and `apply(params, batch_stats, x, train,
rng) -> (outputs (B, ...), batch_stats)`, updated when training a model with BatchNorm, whose running averages
follow new = m * old + (1 - m) * batch (so curves recompute them by a jvp: `curves.recompute_batch_stats`).
The adapters below give that contract to an NNX module and to an Equinox module; their static part (the NNX
graph definition, the Equinox tree without its arrays) is built once per model specification from abstract
shapes (`nnx.eval_shape`, `eqx.filter_eval_shape`: nothing is initialised) and reused by every traced call.

**Flax NNX** (`factory(width, num_classes, *, rngs)`, the factory names `rngs`): lljax calls it with
`nnx.Rngs(key)`, key the member's initialisation key, and splits the module with `nnx.split(module, nnx.Param,
nnx.BatchStat, ...)`: `nnx.Param` is trained, `nnx.BatchStat` is the batch statistics, the rest must be RNG
state (the streams of `nnx.Dropout(rate, rngs=rngs)` or of an `nnx.Rngs` kept on the module), which lljax
reseeds at every call: stream i gets `fold_in(rng, i)` (rng the per-step 'dropout' key), counts at zero.
Training and evaluation are switched the NNX way, `module.train()` / `module.eval()` (`deterministic` and
`use_running_average` of every submodule that has them); a `__call__` that names `train` also receives it.
Features for neural collapse: `self.sow(nnx.Intermediate, 'features', h)` before the read-out, collected with
`nnx.capture`.

**Equinox** (`factory(width, num_classes, *, key)`, the factory names `key`): the parameters are
`eqx.partition(model, eqx.is_inexact_array)`'s; the model is applied per example, vmapped over the batch with
the axis name its `eqx.nn.BatchNorm`s name ('batch' when none), `eqx.nn.inference_mode` for evaluation and a key
per example (the step's rng split) for Dropout when `__call__` takes `key`. BatchNorm goes through
`eqx.nn.State`: `__call__(self, x, state, *, key=None) -> (outputs, state)`, `eqx.nn.BatchNorm(...,
axis_name='batch', mode='batch')` only. Its state (hidden mean and var, a step counter c) is kept as float
batch statistics {'mean', 'var', 'decay'}, decay = momentum ** c (an average of zeros, 1 at the start), so
inference reproduces Equinox's debiasing (the running statistics divided by 1 - momentum ** c) and the jvp
recompute holds (decay 0: the recomputed statistics are used as they are). Features: a method `features(self,
x[, state], *, key=None)` giving the penultimate features of one example (called as `__call__` is).
"""
from __future__ import annotations

import functools
import importlib
import inspect
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp

from lljax import pytrees
from lljax.errors import LLJaxError


class _Deferred:
    """A module imported on its first use: flax.nnx and equinox take ~0.5 s to import, and a study of linen
    models never uses them."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self._name), attr)


eqx = _Deferred("equinox")
nnx = _Deferred("flax.nnx")


def _instance(obj: Any, module: str) -> bool:
    """`obj` is a `module`.Module (False while that framework is not imported: nothing can be one of its modules)."""
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(obj, loaded.Module)


FEATURES = "features"
DEFAULT_AXIS = "batch"


def framework(factory: Callable) -> str:
    """'nnx' for a factory naming `rngs`, 'equinox' for one naming `key`, else 'linen'."""
    try:
        names = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return "linen"
    return "nnx" if "rngs" in names else "equinox" if "key" in names else "linen"


def is_module(obj: Any) -> bool:
    """An NNX or Equinox module (an instance, not a factory)."""
    return _instance(obj, "flax.nnx") or _instance(obj, "equinox")


def not_a_model(name: str, obj: Any, expected: str = "linen") -> LLJaxError:
    """The one-line error for a factory that returned `obj`, having the signature of an `expected` factory."""
    if expected == "linen" and _instance(obj, "flax.nnx"):
        return LLJaxError(f"model factory {name!r} returned an nnx.Module ({type(obj).__name__}) but takes no rngs: "
                          "lljax initialises every member from its own key; an NNX factory is factory(width, "
                          "num_classes, *, rngs)")
    if expected == "linen" and _instance(obj, "equinox"):
        return LLJaxError(f"model factory {name!r} returned an eqx.Module ({type(obj).__name__}) but takes no key: "
                          "lljax initialises every member from its own key; an Equinox factory is factory(width, "
                          "num_classes, *, key)")
    takes = {"nnx": " (it takes rngs: an NNX factory)", "equinox": " (it takes key: an Equinox factory)"}
    return LLJaxError(f"model factory {name!r}{takes.get(expected, '')} returned a {type(obj).__name__}, not a "
                      "flax.linen.Module, flax.nnx.Module or equinox.Module")


def _keys(path) -> tuple[str, ...]:
    return tuple(pytrees.path_name((k,)) if not isinstance(k, (str, int)) else str(k) for k in path)


def _nest(items) -> dict:
    """A nested dict with string keys from (path of string keys, value) pairs."""
    out: dict = {}
    for keys, value in items:
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return out


def _get(tree: dict, keys: tuple[str, ...]):
    for k in keys:
        tree = tree[k]
    return tree


def _required(method, skip: int = 1) -> list[str]:
    """The parameters of `method` beyond its first `skip` positional ones that have no default."""
    try:
        params = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        return []
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    rest = [p for p in params if p not in positional[:skip]]
    return [p.name for p in rest if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _names(method) -> set[str]:
    try:
        return set(inspect.signature(method).parameters)
    except (TypeError, ValueError):
        return set()


# ------------------------------------------------------------------------------------------------------ NNX

class NNXModel:
    """An NNX module as an lljax model (module docstring). `make(rngs)` builds the module."""

    framework = "nnx"

    def __init__(self, name: str, make: Callable[..., Any]):
        self.name, self._make = name, make

        def abstract():
            module = make(rngs=nnx.Rngs(0))
            if not isinstance(module, nnx.Module):
                raise not_a_model(name, module, "nnx")
            return module

        module = nnx.eval_shape(abstract)
        call = type(module).__call__
        needs = [n for n in _required(call, skip=2) if n != "train"]
        if needs:
            raise LLJaxError(f"model {name!r}: its __call__ needs {', '.join(needs)}, which lljax cannot give: lljax "
                             "calls model(x) after model.train() / model.eval() and reseeds the RNG streams the "
                             "module holds (build Dropout as nnx.Dropout(rate, rngs=rngs))")
        self._takes_train = "train" in _names(call)
        module.train()
        self._train, params, stats, rest = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
        module.eval()
        self._eval = nnx.graphdef(module)
        self._params = list(nnx.to_flat_state(params))
        self._stats = list(nnx.to_flat_state(stats))
        self._rest = list(nnx.to_flat_state(rest))
        for path, var in self._rest:
            if not isinstance(var, (nnx.RngKey, nnx.RngCount)):
                what = type(var).__name__ if isinstance(var, nnx.Variable) else "a bare array"
                raise LLJaxError(f"model {name!r} holds {what} at {'/'.join(_keys(path))!r}: lljax trains nnx.Param, "
                                 "keeps nnx.BatchStat and reseeds RNG streams; other state is not supported")
        streams = [p for p, v in self._rest if isinstance(v, nnx.RngKey)]
        owners = dict(nnx.iter_modules(module))
        self._momenta = []  # of the module holding each BatchStat (`apply`)
        for path, _ in self._stats:
            momentum = getattr(owners.get(tuple(path[:-1])), "momentum", None)
            if not isinstance(momentum, (int, float)):
                raise LLJaxError(f"model {name!r} holds nnx.BatchStat {'/'.join(_keys(path))!r} in a module with no "
                                 "float momentum: lljax keeps running averages new = momentum * old + (1 - momentum) "
                                 "* batch (nnx.BatchNorm's)")
            self._momenta.append(float(momentum))
        for path, sub in owners.items():
            if isinstance(sub, nnx.Dropout) and sub.rate > 0 and sub.rngs is None and not streams:
                raise LLJaxError(f"model {name!r}: its nnx.Dropout at {'/'.join(_keys(path)) or '<root>'!r} holds no "
                                 "rngs and the module no RNG stream, so lljax cannot give it its per-step key: "
                                 "build it as nnx.Dropout(rate, rngs=rngs)")

    def init(self, key: jax.Array):
        module = self._make(rngs=nnx.Rngs(key))
        _, params, stats, _ = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
        return _pure(params), _pure(stats)

    def _module(self, params, batch_stats, train: bool, rng):
        rng = jax.random.key(0) if rng is None else rng
        rest = []
        for i, (path, var) in enumerate(self._rest):
            if isinstance(var, nnx.RngKey):
                key = jax.random.fold_in(rng, i)
                value = jax.random.split(key, var.shape) if var.shape else key
            else:
                value = jnp.zeros(var.shape, var.dtype)
            rest.append((path, var.replace(value)))
        state = lambda flat, tree: nnx.from_flat_state([(p, v.replace(_get(tree, _keys(p)))) for p, v in flat])
        return nnx.merge(self._train if train else self._eval, state(self._params, params),
                         state(self._stats, batch_stats), nnx.from_flat_state(rest))

    def _kwargs(self, train: bool) -> dict:
        return {"train": train} if self._takes_train else {}

    def apply(self, params, batch_stats, x, train: bool = False, rng=None):
        module = self._module(params, batch_stats, train, rng)
        outputs = nnx.capture(module)(x, **self._kwargs(train))  # capture: a `sow` outside it is deprecated
        if not (train and self._stats):
            return outputs, batch_stats
        # nnx.BatchNorm stops the gradient of its running averages; adding m * (old - stop_gradient(old)) (zero)
        # gives back d new / d old = m, which `curves.recompute_batch_stats` reads by a jvp
        new = _pure(nnx.state(module, nnx.BatchStat))
        return outputs, _nest((keys, _get(new, keys) + m * (old - jax.lax.stop_gradient(old)))
                              for keys, m, old in ((_keys(p), m, _get(batch_stats, _keys(p)))
                                                   for (p, _), m in zip(self._stats, self._momenta)))

    def features(self, params, batch_stats, x):
        module = self._module(params, batch_stats, False, None)
        outputs, captured = nnx.capture(module, nnx.Intermediate)(x, **self._kwargs(False))
        found = [v for path, v in nnx.to_flat_state(captured) if str(path[-1]) == FEATURES]
        if len(found) != 1:
            raise LLJaxError(f"model {self.name!r} sows {len(found)} 'features' (penultimate activations), not one: "
                             "add self.sow(nnx.Intermediate, 'features', h) before its read-out to use the collapse "
                             "family")
        h = found[0].get_value() if isinstance(found[0], nnx.Variable) else found[0]
        return outputs, h[0] if isinstance(h, tuple) else h


def _pure(state) -> dict:
    """An NNX state as a nested dict with string keys."""
    return _nest((_keys(path), var.get_value() if isinstance(var, nnx.Variable) else var)
                 for path, var in nnx.to_flat_state(state))


# -------------------------------------------------------------------------------------------------- Equinox

def _is_index(x) -> bool:
    return isinstance(x, eqx.nn.StateIndex)


def _is_norm(x) -> bool:
    return isinstance(x, eqx.nn.BatchNorm)


class EqxModel:
    """An Equinox module as an lljax model (module docstring). `make(key)` builds the module."""

    framework = "equinox"

    def __init__(self, name: str, make: Callable[..., Any]):
        self.name, self._make = name, make
        model = eqx.filter_eval_shape(lambda: make(key=jax.random.key(0)))
        if not isinstance(model, eqx.Module):
            raise not_a_model(name, model, "equinox")
        model = _marked(model)
        self._norms = []  # (keys, momentum, counter marker, statistics marker)
        owned = set()
        for path, norm in jax.tree_util.tree_flatten_with_path(model, is_leaf=_is_norm)[0]:
            if not _is_norm(norm):
                continue
            where = "/".join(_keys(path)) or "<root>"
            if norm.mode != "batch":
                raise LLJaxError(f"model {name!r}: its eqx.nn.BatchNorm at {where!r} has mode={norm.mode!r}, whose "
                                 "training outputs depend on its running statistics; lljax supports mode='batch'")
            self._norms.append((_keys(path), norm.momentum, norm.batch_counter.marker, norm.batch_state_index.marker))
            owned |= {norm.batch_counter.marker, norm.batch_state_index.marker}
        leaves, self._treedef = jax.tree_util.tree_flatten_with_path(model, is_leaf=_is_index)
        self._leaves, self._params = [], []  # static leaves (None where a parameter goes); parameter positions
        for i, (path, leaf) in enumerate(leaves):
            if _is_index(leaf):
                if leaf.marker not in owned:
                    raise LLJaxError(f"model {name!r} holds state (an eqx.nn.StateIndex at {leaf.marker!r}) other "
                                     "than eqx.nn.BatchNorm's; lljax keeps BatchNorm statistics only")
                self._leaves.append(eqx.nn.delete_init_state(leaf))
            elif isinstance(leaf, jax.ShapeDtypeStruct):
                if not jnp.issubdtype(leaf.dtype, jnp.inexact):
                    raise LLJaxError(f"model {name!r} holds a {leaf.dtype} array at {'/'.join(_keys(path))!r}: lljax "
                                     "trains the float arrays (eqx.is_inexact_array) and keeps no other arrays")
                self._leaves.append(None)
                self._params.append((i, _keys(path)))
            else:
                self._leaves.append(leaf)
        self._stateful = bool(self._norms)
        call = type(model).__call__
        if self._stateful and "state" not in _names(call):
            raise LLJaxError(f"model {name!r} holds eqx.nn.BatchNorm but its __call__ takes no state: write "
                             "__call__(self, x, state, *, key=None) -> (outputs, state), passing the state through "
                             "its BatchNorm layers")
        needs = [n for n in _required(call, skip=2) if n != "state"]
        if needs:
            raise LLJaxError(f"model {name!r}: its __call__ needs {', '.join(needs)}, which lljax cannot give: lljax "
                             "calls model(x[, state], key=...) on one example")
        self._takes_key = "key" in _names(call)
        axes = {repr(n.axis_name): n.axis_name for n in jax.tree.leaves(model, is_leaf=_is_norm) if _is_norm(n)}
        if len(axes) > 1:
            raise LLJaxError(f"model {name!r}: its eqx.nn.BatchNorm layers name different axes ({', '.join(axes)}); "
                             "lljax vmaps the batch over one")
        self._axis = next(iter(axes.values())) if axes else DEFAULT_AXIS

    def init(self, key: jax.Array):
        model = _marked(self._make(key=key))
        state = eqx.nn.State(model)
        leaves = jax.tree_util.tree_flatten(model, is_leaf=_is_index)[0]
        params = _nest((keys, leaves[i]) for i, keys in self._params)
        stats = _nest((keys, {"mean": state.get(_index(stat))[0], "var": state.get(_index(stat))[1],
                              "decay": jnp.ones((), state.get(_index(stat))[0].dtype)})
                      for keys, _, _, stat in self._norms)
        return params, stats

    def _model(self, params, train: bool):
        leaves = list(self._leaves)
        for i, keys in self._params:
            leaves[i] = _get(params, keys)
        return eqx.nn.inference_mode(jax.tree_util.tree_unflatten(self._treedef, leaves), value=not train)

    def _state(self, batch_stats, train: bool):
        """An eqx.nn.State from the batch statistics, its counters at zero: in inference the running statistics
        are divided by 1 - decay as Equinox divides them by 1 - momentum ** counter (not when decay is 1)."""
        markers, values = [], []
        for keys, _, counter, stat in self._norms:
            s = _get(batch_stats, keys)
            scale = 1.0 if train else jnp.where(s["decay"] == 1, 1, 1 - s["decay"]).astype(s["mean"].dtype)
            markers += [counter, stat]
            values += [jnp.zeros((), jnp.int32), (s["mean"] / scale, s["var"] / scale)]
        return eqx.nn.State.tree_unflatten(tuple(markers), tuple(values))

    def _call(self, method, x, state, rng):
        """`method` (the model, or its features) of every example, vmapped over the batch with its axis name; a
        key per example, split from `rng`, where the model takes `key`."""
        keys = None if rng is None or not self._takes_key else jax.random.split(rng, x.shape[0])
        kwargs = lambda k: {"key": k} if self._takes_key else {}
        if self._stateful:
            one = lambda x_, k: method(x_, state, **kwargs(k))
            return jax.vmap(one, in_axes=(0, None if keys is None else 0), out_axes=(0, None),
                            axis_name=self._axis)(x, keys)
        one = lambda x_, k: method(x_, **kwargs(k))
        return jax.vmap(one, in_axes=(0, None if keys is None else 0), axis_name=self._axis)(x, keys)

    def apply(self, params, batch_stats, x, train: bool = False, rng=None):
        model = self._model(params, train)
        rng = jax.random.key(0) if train and rng is None else rng  # training without a key: BatchNorm recompute
        if not self._stateful:
            return self._call(model, x, None, rng), batch_stats
        outputs, state = self._call(model, x, self._state(batch_stats, train), rng)
        if not train:
            return outputs, batch_stats
        stats = _nest((keys, {"mean": state.get(_index(stat))[0], "var": state.get(_index(stat))[1],
                              "decay": _get(batch_stats, keys)["decay"] * momentum})
                      for keys, momentum, _, stat in self._norms)
        return outputs, stats

    def features(self, params, batch_stats, x):
        model = self._model(params, False)
        if not hasattr(model, FEATURES):
            raise LLJaxError(f"model {self.name!r} has no features method: add features(self, x[, state], *, "
                             "key=None) giving the penultimate features of one example to use the collapse family")
        state = self._state(batch_stats, False) if self._stateful else None
        outputs = self._call(model, x, state, None)
        h = self._call(getattr(model, FEATURES), x, state, None)
        if self._stateful:
            outputs, h = outputs[0], h[0] if isinstance(h, tuple) else h
        return outputs, h


def _index(marker: str) -> eqx.nn.StateIndex:
    """A StateIndex to look `marker` up in a State."""
    index = eqx.nn.StateIndex(None)
    object.__setattr__(index, "marker", marker)
    return index


def _marked(model):
    """`model` with every StateIndex marked by its path (as `eqx.nn.make_with_state` does), so that the abstract
    model, every initialised one and every state agree on the markers."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(model, is_leaf=_is_index)
    marked = []
    for path, leaf in leaves:
        if _is_index(leaf):
            leaf = eqx.nn.StateIndex(leaf.init)
            object.__setattr__(leaf, "marker", "/".join(_keys(path)))
        marked.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, marked)


ADAPTERS = {"nnx": NNXModel, "equinox": EqxModel}
Adapter = NNXModel | EqxModel


@functools.lru_cache(maxsize=None)
def adapt(factory: Callable[..., Any], name: str, args: tuple, kwargs: tuple[tuple[str, Any], ...]) -> Adapter:
    """The adapter of an NNX or Equinox factory called as `factory(*args, **dict(kwargs), rngs=... | key=...)`
    (`framework` says which), built once per factory and arguments (hashable)."""
    return ADAPTERS[framework(factory)](name, functools.partial(factory, *args, **dict(kwargs)))
