"""Width-parametrised Flax (linen) models and the pure functions that apply them.

`mlp`      hidden layers of `width` units (default 2), ReLU; flattens its input.
`cnn`      the MNIST-1D baseline conv net (Greydanus 2020): 3 convs (kernel 5/3/3, stride 2) of `width` channels,
           ReLU, then a linear read-out. Convolutions are 1-D on (L,) or (L, C) inputs, 2-D on (H, W, C).
`resnet18` the paper's CIFAR ResNet18(k) (Nakkiran et al. 2019; Yang et al. 2021): 3x3 stem, stages of k, 2k,
           4k, 8k channels, BasicBlocks [2, 2, 2, 2], BatchNorm, no max-pool; k = 64 is the standard network.

Every model's variables are {'params': ..., 'batch_stats': ...}; models without BatchNorm have empty
batch_stats, so all code handles both the same way.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lljax.errors import LLJaxError

MODELS = ("mlp", "cnn", "resnet18")
Params = Any
BatchStats = Any


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Static description of an architecture: hashable, so it can key compiled programs."""

    name: str
    width: int
    num_classes: int = 10
    depth: int = 2  # hidden layers of the MLP

    def __post_init__(self):
        if self.name not in MODELS:
            raise LLJaxError(f"unknown model {self.name!r}; choose one of {', '.join(MODELS)}")
        if int(self.width) != self.width or self.width <= 0:
            raise LLJaxError(f"width must be a positive integer, got {self.width}")
        if self.depth <= 0:
            raise LLJaxError(f"depth must be a positive integer, got {self.depth}")


def _conv_im2col(x, kernel, strides, padding):
    """Convolution as (strided slices -> concatenated patches) @ kernel. Under vmap this is one batched matmul,
    which XLA:CPU runs several times faster than the grouped convolution vmap makes of `lax.conv`."""
    nd = len(strides)
    x = jnp.pad(x, [(0, 0), *padding, (0, 0)])
    window = kernel.shape[:nd]
    out = [(x.shape[1 + d] - window[d]) // strides[d] + 1 for d in range(nd)]
    cols = []
    for offset in itertools.product(*(range(k) for k in window)):
        index = tuple(slice(o, o + s * (n - 1) + 1, s) for o, s, n in zip(offset, strides, out))
        cols.append(x[(slice(None), *index)])
    return jnp.concatenate(cols, -1) @ kernel.reshape(-1, kernel.shape[-1])


class Conv(nn.Module):
    """`nn.Conv` with the same parameters ('kernel' (*window, C_in, C_out), optional 'bias') and 'SAME'-style
    explicit padding, computed by im2col on CPU and by `lax.conv_general_dilated` elsewhere."""

    features: int
    window: tuple[int, ...]
    strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (*self.window, x.shape[-1], self.features), jnp.float32)
        if jax.default_backend() == "cpu":
            y = _conv_im2col(x, kernel.astype(x.dtype), self.strides, self.padding)
        else:
            spatial = "DHW"[-len(self.strides):]
            y = jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), self.strides, self.padding,
                                             dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(x.dtype)
        return y


def _conv(features, kernel, stride, nd, use_bias=True):
    return Conv(features, (kernel,) * nd, (stride,) * nd, ((kernel // 2, kernel // 2),) * nd, use_bias)


class MLP(nn.Module):
    width: int
    depth: int = 2
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[0], -1)
        for _ in range(self.depth):
            x = nn.relu(nn.Dense(self.width)(x))
        return nn.Dense(self.num_classes)(x)


def _as_image(x):
    """Add a channel axis to (B, L) signals so convolutions see (B, *spatial, C)."""
    return x[..., None] if x.ndim == 2 else x


class CNN(nn.Module):
    width: int
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = _as_image(x)
        nd = x.ndim - 2
        for kernel in (5, 3, 3):  # padding 1 throughout, as the MNIST-1D baseline
            x = nn.relu(Conv(self.width, (kernel,) * nd, (2,) * nd, ((1, 1),) * nd)(x))
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


class BasicBlock(nn.Module):
    channels: int
    stride: int

    @nn.compact
    def __call__(self, x, train: bool):
        nd = x.ndim - 2
        conv = lambda c, k, s: _conv(c, k, s, nd, use_bias=False)
        norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)
        y = nn.relu(norm()(conv(self.channels, 3, self.stride)(x)))
        y = norm()(conv(self.channels, 3, 1)(y))
        if self.stride != 1 or x.shape[-1] != self.channels:
            x = norm()(conv(self.channels, 1, self.stride)(x))
        return nn.relu(x + y)


class ResNet18(nn.Module):
    width: int
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = _as_image(x)
        nd = x.ndim - 2
        x = _conv(self.width, 3, 1, nd, use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x))
        for stage, stride in enumerate((1, 2, 2, 2)):
            for block in range(2):
                x = BasicBlock(self.width * 2 ** stage, stride if block == 0 else 1)(x, train)
        x = x.mean(axis=tuple(range(1, 1 + nd)))
        return nn.Dense(self.num_classes)(x)


def build(spec: ModelSpec) -> nn.Module:
    """The Flax module for a spec."""
    if spec.name == "mlp":
        return MLP(spec.width, spec.depth, spec.num_classes)
    if spec.name == "cnn":
        return CNN(spec.width, spec.num_classes)
    return ResNet18(spec.width, spec.num_classes)


@functools.partial(jax.jit, static_argnums=(0, 2))
def init(spec: ModelSpec, key: jax.Array, input_shape: tuple[int, ...]) -> tuple[Params, BatchStats]:
    """Fresh (params, batch_stats) for one model taking inputs of shape `input_shape` (no batch axis)."""
    variables = build(spec).init(key, jnp.zeros((1, *input_shape), jnp.float32), train=False)
    return variables["params"], variables.get("batch_stats", {})


def apply(spec: ModelSpec, params: Params, batch_stats: BatchStats, x_BX: jax.Array, train: bool = False):
    """Logits (B, C) and updated batch_stats; `train=True` uses and updates batch statistics."""
    module = build(spec)
    variables = {"params": params, "batch_stats": batch_stats}
    if train and batch_stats:
        logits, updates = module.apply(variables, x_BX, train=True, mutable=["batch_stats"])
        return logits, updates["batch_stats"]
    return module.apply(variables, x_BX, train=False), batch_stats


def cross_entropy(logits_BC: jax.Array, labels_B: jax.Array) -> jax.Array:
    """(B,) per-example softmax cross-entropy."""
    return optax.softmax_cross_entropy_with_integer_labels(logits_BC, labels_B)


def loss_fn(spec: ModelSpec, batch_stats: BatchStats) -> Callable[[Params, tuple], jax.Array]:
    """`loss(params, (x_BX, y_B)) -> mean CE` with BatchNorm in inference mode (the paper's Hessian loss)."""

    def loss(params, batch):
        x, y = batch
        logits, _ = apply(spec, params, batch_stats, x, train=False)
        return cross_entropy(logits, y).mean()

    return loss


def count_params(params: Params) -> int:
    return sum(int(p.size) for p in jax.tree.leaves(params))
