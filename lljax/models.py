"""Width-parametrised Flax (linen) models and the pure functions that apply them.

`mlp`      hidden layers of `width` units (default 2), ReLU; flattens its input.
`cnn`      the MNIST-1D baseline conv net (Greydanus 2020): 3 convs (kernel 5/3/3, stride 2) of `width` channels,
           ReLU, then a linear read-out. Convolutions are 1-D on (L,) or (L, C) inputs, 2-D on (H, W, C).
`resnet18` the paper's CIFAR ResNet18(k) (Nakkiran et al. 2019; Yang et al. 2021): 3x3 stem, stages of k, 2k,
           4k, 8k channels, BasicBlocks [2, 2, 2, 2], BatchNorm, no max-pool; k = 64 is the standard network.
`transformer` a decoder-only Transformer over integer tokens (`Transformer`): width = d_model, `depth` blocks
           (default 1) of causal multi-head self-attention and a ReLU MLP, learned positions, pre-LayerNorm (or
           none); reads out at the last position, or at every position for per-token targets.

A model is any `factory(width, num_classes) -> flax.linen.Module` whose `__call__(x, train)` returns outputs
(logits); BatchNorm (the 'batch_stats' collection), Dropout (a 'dropout' rng, used only when `train=True`),
LayerNorm, or none of them. A factory naming `rngs`, `factory(width, num_classes, *, rngs) -> nnx.Module`, gives
a Flax NNX model, and one naming `key`, `factory(width, num_classes, *, key) -> eqx.Module`, an Equinox model:
`lljax.adapters` gives them the same (params, batch_stats) contract, so everything downstream treats the three
alike. The built-in models are entries of the same registry (`MODELS`); a user's model is
a factory passed in Python or an import path `package.module:factory`. A factory may take more keyword
arguments, each passed when the factory's signature names it (`FACTORY_ARGUMENTS`): `depth` (--depth), `conv`
(--conv), the Transformer's `heads`, `mlp_width`, `layer_norm`, `max_len` (--transformer-...), and what the
data says: `vocab_size` (token inputs), `seq_len` (their length), `per_token` (per-token targets) and
`input_shape` (one example's shape, for NNX and Equinox layers that need their input size). Every
model's variables are {'params': ..., 'batch_stats': ...}; models without BatchNorm have empty batch_stats, so
all code handles both the same way. Inputs are float32 or int32 tokens (`init`'s `input_dtype`).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from lljax import adapters, conv, losses, options, precision, registry
from lljax.errors import LLJaxError, one_line

Params = Any
BatchStats = Any
Factory = Callable[..., nn.Module]


class Conv(nn.Module):
    """`nn.Conv` with the same parameters ('kernel' (*window, C_in, C_out), optional 'bias') and 'SAME'-style
    explicit padding, computed by the convolution strategy's kernel (`conv.convolve`: im2col on a CPU and
    `lax.conv_general_dilated` elsewhere for 'auto')."""

    features: int
    window: tuple[int, ...]
    strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    use_bias: bool = True
    strategy: str = "auto"

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (*self.window, x.shape[-1], self.features), jnp.float32)
        y = conv.convolve(x, kernel.astype(x.dtype), self.strides, self.padding, self.strategy)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(x.dtype)
        return y


def _conv(features, kernel, stride, nd, use_bias=True, strategy="auto"):
    return Conv(features, (kernel,) * nd, (stride,) * nd, ((kernel // 2, kernel // 2),) * nd, use_bias, strategy)


class MLP(nn.Module):
    width: int
    depth: int = 2
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[0], -1)
        for _ in range(self.depth):
            x = nn.relu(nn.Dense(self.width)(x))
        self.sow("intermediates", "features", x)  # the penultimate features (neural collapse)
        return nn.Dense(self.num_classes)(x)


def _as_image(x):
    """Add a channel axis to (B, L) signals so convolutions see (B, *spatial, C)."""
    return x[..., None] if x.ndim == 2 else x


class CNN(nn.Module):
    width: int
    num_classes: int = 10
    conv: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = _as_image(x)
        nd = x.ndim - 2
        for kernel in (5, 3, 3):  # padding 1 throughout, as the MNIST-1D baseline
            x = nn.relu(Conv(self.width, (kernel,) * nd, (2,) * nd, ((1, 1),) * nd, strategy=self.conv)(x))
        x = x.reshape(x.shape[0], -1)
        self.sow("intermediates", "features", x)
        return nn.Dense(self.num_classes)(x)


class BasicBlock(nn.Module):
    channels: int
    stride: int
    conv: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool):
        nd = x.ndim - 2
        conv = lambda c, k, s: _conv(c, k, s, nd, use_bias=False, strategy=self.conv)
        norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)
        y = nn.relu(norm()(conv(self.channels, 3, self.stride)(x)))
        y = norm()(conv(self.channels, 3, 1)(y))
        if self.stride != 1 or x.shape[-1] != self.channels:
            x = norm()(conv(self.channels, 1, self.stride)(x))
        return nn.relu(x + y)


class ResNet18(nn.Module):
    width: int
    num_classes: int = 10
    conv: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = _as_image(x)
        nd = x.ndim - 2
        x = _conv(self.width, 3, 1, nd, use_bias=False, strategy=self.conv)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x))
        for stage, stride in enumerate((1, 2, 2, 2)):
            for block in range(2):
                x = BasicBlock(self.width * 2 ** stage, stride if block == 0 else 1, self.conv)(x, train)
        x = x.mean(axis=tuple(range(1, 1 + nd)))
        self.sow("intermediates", "features", x)
        return nn.Dense(self.num_classes)(x)


def mlp(width: int, num_classes: int, depth: int = 2) -> nn.Module:
    return MLP(width, depth, num_classes)


def cnn(width: int, num_classes: int, conv: str = "auto") -> nn.Module:
    return CNN(width, num_classes, conv)


def resnet18(width: int, num_classes: int, conv: str = "auto") -> nn.Module:
    return ResNet18(width, num_classes, conv)


class Block(nn.Module):
    """One pre-LayerNorm Transformer block: x + attention(LN(x)), then x + MLP(LN(x)) (ReLU, `mlp_width`
    hidden units); LayerNorm left out with `layer_norm=False`."""

    width: int
    heads: int
    mlp_width: int
    layer_norm: bool = True

    @nn.compact
    def __call__(self, x, mask):
        norm = (lambda h: nn.LayerNorm()(h)) if self.layer_norm else (lambda h: h)
        h = norm(x)
        x = x + nn.MultiHeadDotProductAttention(self.heads, qkv_features=self.width, out_features=self.width,
                                                name="attention")(h, h, mask=mask)
        h = norm(x)
        return x + nn.Dense(self.width, name="mlp_out")(nn.relu(nn.Dense(self.mlp_width, name="mlp_in")(h)))


class Transformer(nn.Module):
    """A decoder-only Transformer on token inputs (B, T) int: token embedding (vocab_size, width) + learned
    position embedding (max_len, width), `depth` `Block`s with causal self-attention, a final LayerNorm (when
    `layer_norm`) and a linear read-out to `num_classes` logits: (B, C) at the last position, or (B, T, C) at
    every position when `per_token`. Sows its features (the read-out's inputs) for neural collapse."""

    width: int
    num_classes: int
    vocab_size: int
    max_len: int
    depth: int = 1
    heads: int = 1
    mlp_width: int = 4
    layer_norm: bool = True
    per_token: bool = False

    @nn.compact
    def __call__(self, tokens, train: bool = False):
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise LLJaxError(f"the transformer embeds integer tokens; its inputs are {tokens.dtype} (give integer "
                             "inputs, e.g. an .npz with integer x_train)")
        if tokens.ndim != 2 or tokens.shape[1] > self.max_len:
            raise LLJaxError(f"the transformer takes (batch, length <= {self.max_len}) tokens (its positions, "
                             f"--transformer-max-len), got inputs of shape {tokens.shape[1:]}")
        length = tokens.shape[1]
        x = nn.Embed(self.vocab_size, self.width, name="embed")(tokens)
        x = x + nn.Embed(self.max_len, self.width, name="positions")(jnp.arange(length))[None]
        mask = nn.make_causal_mask(jnp.ones((1, length), jnp.int32))
        for i in range(self.depth):
            x = Block(self.width, self.heads, self.mlp_width, self.layer_norm, name=f"block_{i}")(x, mask)
        if self.layer_norm:
            x = nn.LayerNorm(name="final_norm")(x)
        x = x if self.per_token else x[:, -1]
        self.sow("intermediates", "features", x)
        return nn.Dense(self.num_classes, name="readout")(x)


@dataclasses.dataclass(frozen=True)
class TransformerOptions:
    """Options of the built-in Transformer (and of any factory taking the same argument names): the
    configuration's `transformer` section, flags --transformer-<field>. Only values that differ from these
    defaults are passed, and a factory that does not take a set one is an error."""

    heads: int | None = options.option(None, "attention heads (default: width // 32, at least 1, lowered to a divisor "
                                             "of the width)", low=1)
    mlp_width: int | None = options.option(None, "hidden units of each block's MLP (default: 4 x width)", low=1)
    layer_norm: bool = options.option(True, "pre-LayerNorm in every block and before the read-out; "
                                            "--no-transformer-layer-norm leaves it out (as the grokking literature's "
                                            "one-layer Transformer)")
    max_len: int | None = options.option(None, "positions the model embeds (default: the data's sequence length)",
                                         low=1)

    def extras(self) -> tuple[tuple[str, Any], ...]:
        """(name, value) of every option set to other than its default."""
        defaults = TransformerOptions()
        return tuple((f.name, getattr(self, f.name)) for f in dataclasses.fields(self)
                     if getattr(self, f.name) != getattr(defaults, f.name))


def default_heads(width: int) -> int:
    """Heads of the built-in Transformer when not set: width // 32 (head dimension 32, as Nanda et al.'s 4 heads
    at d_model 128), at least 1, lowered to a divisor of the width."""
    heads = max(1, width // 32)
    while width % heads:
        heads -= 1
    return heads


def transformer(width: int, num_classes: int, depth: int = 1, vocab_size: int | None = None,
                seq_len: int | None = None, per_token: bool = False, heads: int | None = None,
                mlp_width: int | None = None, layer_norm: bool = True, max_len: int | None = None) -> nn.Module:
    """The built-in Transformer: d_model = width, heads = `default_heads(width)` and an MLP of 4 x width unless
    set, positions for `max_len` tokens (default: the data's length `seq_len`), `vocab_size` input tokens
    (default: num_classes)."""
    heads = default_heads(width) if heads is None else heads
    if heads < 1 or width % heads:
        raise LLJaxError(f"the transformer's width {width} is not divisible by its {heads} heads")
    max_len = max_len or seq_len
    if max_len is None:
        raise LLJaxError("the transformer embeds integer tokens: give it token inputs (their length sets its "
                         "positions) or --transformer-max-len")
    return Transformer(width, num_classes, vocab_size or num_classes, max_len, depth, heads,
                       mlp_width or 4 * width, layer_norm, per_token)


MODELS: dict[str, Factory] = {"mlp": mlp, "cnn": cnn, "resnet18": resnet18, "transformer": transformer}
# keyword arguments lljax passes to a factory whose signature names them (ModelSpec.extras)
FACTORY_ARGUMENTS = ("depth", "conv", "heads", "mlp_width", "layer_norm", "max_len", "vocab_size", "seq_len",
                     "per_token", "input_shape")


def factory(model: str | Factory) -> Factory:
    """The factory of a registered name, an import path `package.module:factory`, or a factory itself."""
    found = registry.resolve(model, MODELS, "model")
    if not callable(found) or isinstance(found, nn.Module) or adapters.is_module(found):
        raise LLJaxError(f"model {registry.describe(model)!r} is a {type(found).__name__}, not a callable "
                         "factory(width, num_classes) -> flax.linen.Module (or an nnx.Module built with rngs, an "
                         "eqx.Module built with key)")
    return found


def takes(model: str | Factory, argument: str) -> bool:
    """Whether the model's factory takes `argument` (depth, conv)."""
    try:
        return argument in inspect.signature(factory(model)).parameters
    except (TypeError, ValueError):
        return False


def takes_depth(model: str | Factory) -> bool:
    return takes(model, "depth")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Static description of one architecture: hashable, so it can key compiled programs. `model` is a
    registered name, an import path or a factory; `depth` is passed to factories that take one (None: the
    factory's default); `conv` (a `conv.STRATEGIES` name) is passed to factories that take one (the built-in
    cnn and resnet18)."""

    model: str | Factory
    width: int
    num_classes: int = 10
    depth: int | None = None
    conv: str = "auto"
    extras: tuple[tuple[str, Any], ...] = ()  # further factory arguments (name, value), passed where taken

    def __post_init__(self):
        if int(self.width) != self.width or self.width <= 0:
            raise LLJaxError(f"width must be a positive integer, got {self.width}")
        if self.depth is not None and (int(self.depth) != self.depth or self.depth <= 0):
            raise LLJaxError(f"depth must be a positive integer, got {self.depth}")
        conv.check(self.conv)

    @property
    def name(self) -> str:
        return registry.describe(self.model)

    def module(self) -> nn.Module:
        return build(self)


def build(spec: ModelSpec, input_shape: tuple[int, ...] | None = None) -> nn.Module | adapters.Adapter:
    """The Flax module of a spec, or the `adapters` model of an NNX or Equinox factory (built from abstract shapes,
    once per spec); `input_shape` (one example's) reaches factories that name it. A one-line LLJaxError when the
    factory fails or returns something else."""
    make = factory(spec.model)
    kwargs = {}
    if spec.depth is not None:
        if not takes_depth(spec.model):
            raise LLJaxError(f"model {spec.name!r} takes no depth argument; leave --depth unset")
        kwargs["depth"] = spec.depth
    if spec.conv != "auto" and takes(spec.model, "conv"):
        kwargs["conv"] = spec.conv
    kwargs.update({name: value for name, value in spec.extras if takes(spec.model, name)})
    if input_shape is not None and takes(spec.model, "input_shape"):
        kwargs["input_shape"] = tuple(int(d) for d in input_shape)
    with one_line(f"model factory {spec.name!r} failed for width {spec.width}, {spec.num_classes} outputs"):
        if adapters.framework(make) != "linen":
            return adapters.adapt(make, spec.name, (spec.width, spec.num_classes), tuple(sorted(kwargs.items())))
        module = make(spec.width, spec.num_classes, **kwargs)
    if not isinstance(module, nn.Module):
        raise adapters.not_a_model(spec.name, module)
    return module


Model = ModelSpec | nn.Module | adapters.Adapter | Callable


def _adapted(model: Model, input_shape: tuple[int, ...]) -> adapters.Adapter | nn.Module | Callable:
    """The adapter (NNX, Equinox) or the linen module (or apply function) of a spec, a module or an apply
    function."""
    return build(model, input_shape) if isinstance(model, ModelSpec) else model


def _flax_apply(model) -> Callable:
    """Flax's `apply(variables, x, train=..., mutable=..., rngs=...)` of a linen module or an apply function."""
    return model.apply if isinstance(model, nn.Module) else model


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def init(spec: Model, key: jax.Array, input_shape: tuple[int, ...], input_dtype: str = "float32"
         ) -> tuple[Params, BatchStats]:
    """Fresh (params, batch_stats) for one model taking inputs of shape `input_shape` (no batch axis) and dtype
    `input_dtype` (float32, or int32 for tokens)."""
    module = _adapted(spec, input_shape)
    if isinstance(module, adapters.Adapter):
        return module.init(key)
    variables = module.init(key, jnp.zeros((1, *input_shape), input_dtype), train=False)
    extra = sorted(set(variables) - {"params", "batch_stats"})
    if extra:
        raise LLJaxError(f"model {getattr(spec, 'name', type(spec).__name__)!r} has variable collections "
                         f"{', '.join(extra)}; lljax trains 'params' and keeps 'batch_stats' only")
    return variables["params"], variables.get("batch_stats", {})


def apply(model: Model, params: Params, batch_stats: BatchStats, x_BX: jax.Array, train: bool = False,
          rng: jax.Array | None = None, policy: str = "float32"):
    """Outputs (B, ...) and batch_stats, the latter updated when `train=True` and the model has BatchNorm.
    `train` always reaches the module (Dropout sees it even without BatchNorm); `rng` is its 'dropout' stream.
    `model` is a `ModelSpec`, a Flax module, an NNX or Equinox `adapters` model, or a Flax-style
    `apply(variables, x, train=, mutable=, rngs=)`. `policy` is the `precision` policy (float32 outputs and
    statistics under every policy)."""
    module = _adapted(model, x_BX.shape[1:])
    x_BX = precision.compute(policy, x_BX)
    if isinstance(module, adapters.Adapter):
        with precision.scope(policy):
            outputs, updated = module.apply(precision.compute(policy, params), batch_stats, x_BX, train, rng)
        return _float32(outputs), precision.restore(batch_stats, updated)
    module_apply = _flax_apply(module)
    variables = {"params": precision.compute(policy, params), "batch_stats": batch_stats}
    rngs = None if rng is None else {"dropout": rng}
    with precision.scope(policy):
        if train and jax.tree.leaves(batch_stats):
            outputs, updates = module_apply(variables, x_BX, train=True, mutable=["batch_stats"], rngs=rngs)
            return _float32(outputs), precision.restore(batch_stats, updates["batch_stats"])
        return _float32(module_apply(variables, x_BX, train=train, rngs=rngs)), batch_stats


def _float32(tree):
    """bfloat16 outputs back in float32 (others as they are)."""
    return jax.tree.map(lambda a: a.astype(jnp.float32) if a.dtype == jnp.bfloat16 else a, tree)


FEATURES = "features"


def features(model: Model, params: Params, batch_stats: BatchStats, x_BX: jax.Array, positions: tuple[int, ...] = ()
             ) -> tuple[jax.Array, jax.Array]:
    """(outputs (B, ...), penultimate features (B, F)) in inference mode, or (B, *positions, F) for per-token
    targets with `positions` (T, ...): the features at every read-out position. A linen model exposes its
    features by `self.sow('intermediates', 'features', h)` just before its (linear) read-out, as the built-in
    models do; an NNX model by `self.sow(nnx.Intermediate, 'features', h)`; an Equinox model by a method
    `features(self, x[, state], *, key=None)` of one example (`lljax.adapters`). A model that does not is a
    one-line LLJaxError."""
    module = _adapted(model, x_BX.shape[1:])
    if isinstance(module, adapters.Adapter):
        outputs, h = module.features(params, batch_stats, x_BX)
    else:
        outputs, state = _flax_apply(module)({"params": params, "batch_stats": batch_stats}, x_BX, train=False,
                                             mutable=["intermediates"])
        found = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(
            state.get("intermediates", {}), is_leaf=lambda v: isinstance(v, tuple))[0]
            if str(getattr(path[-1], "key", "")) == FEATURES]
        if len(found) != 1:
            name = model.name if isinstance(model, ModelSpec) else type(model).__name__
            raise LLJaxError(f"model {name!r} sows {len(found)} 'features' (penultimate activations), not one: add "
                             "self.sow('intermediates', 'features', h) before its read-out to use the collapse "
                             "family")
        h = found[0][0] if isinstance(found[0], tuple) else found[0]
    if positions and tuple(h.shape[1:1 + len(positions)]) != tuple(positions):
        raise LLJaxError(f"the model sows features of shape {h.shape[1:]}: per-token targets at positions "
                         f"{tuple(positions)} need the features of every position, (batch, *positions, features)")
    return outputs, h.reshape(h.shape[0], *positions, -1)


def loss_fn(model: Model, batch_stats: BatchStats, loss: losses.Loss = losses.cross_entropy
            ) -> Callable[[Params, tuple], jax.Array]:
    """`loss(params, (x_BX, y_B)) -> mean loss` with BatchNorm in inference mode (the paper's Hessian loss)."""

    def mean_loss(params, batch):
        x, y = batch
        outputs, _ = apply(model, params, batch_stats, x, train=False)
        return loss.mean(outputs, y)

    return mean_loss


def count_params(params: Params) -> int:
    return sum(int(p.size) for p in jax.tree.leaves(params))
