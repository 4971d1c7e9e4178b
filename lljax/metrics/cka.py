"""The 'cka' family: linear CKA of two seeds' outputs on a probe of training inputs (Yang et al. 2021): of their
softmax outputs (`cka_softmax`, the paper's; classification only) and of their logits or outputs
(`cka_logits`).

The probe (`--cka-probe`): `mixup`, the paper's, training inputs mixed up with lambda ~ Beta(16, 16); `inputs`,
training inputs as they are (integer tokens cannot be mixed, and a mixture of two sequences has no labelled
positions); `auto` (default) takes `inputs` for token inputs or per-token targets, else `mixup`. With per-token
targets every labelled position of the probe is one example of the CKA (its rows the outputs at the positions
member a's labels mark, `data.IGNORE` positions left out)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lljax import models, options, similarity
from lljax.losses import IGNORE
from lljax.metrics.family import Context, Family, Heatmap, Member, Shared

PROBES = ("auto", "mixup", "inputs")


@dataclasses.dataclass(frozen=True)
class CKAOptions:
    samples: int = options.option(768, "probe inputs for CKA (the paper's 768)", low=1)
    probe: str = options.option("auto", "the probe: mixup (training inputs mixed up, the paper's), inputs (training "
                                        "inputs unmixed), auto (inputs for tokens or per-token targets, else mixup)",
                                choices=PROBES)


def probe_kind(probe: str, tokens: bool, per_token: bool) -> str:
    """The probe `auto` resolves to: 'inputs' for token inputs or per-token targets, else 'mixup'."""
    return ("inputs" if tokens or per_token else "mixup") if probe == "auto" else probe


def _kind(ctx: Context, shared: Shared) -> str:
    tokens = jnp.issubdtype(shared.x_train.dtype, jnp.integer)
    return probe_kind(ctx.options.probe, tokens, ctx.loss.per_token(shared.y_test))


def probe(ctx: Context, shared: Shared, key) -> jax.Array:
    """The group's probe, one draw for every pair: mixed-up inputs (S, ...), or the indices (S,) of S distinct
    training inputs."""
    num = min(ctx.options.samples, shared.x_train.shape[0])
    if _kind(ctx, shared) == "inputs":
        return jax.random.permutation(key, shared.x_train.shape[0])[:num]
    return similarity.mixup_inputs(key, shared.x_train, num=num)


def cka_metrics(ctx: Context, shared: Shared, a: Member, b: Member, key) -> dict:
    inputs = _kind(ctx, shared) == "inputs"
    x = shared.x_train[shared.extra] if inputs else shared.extra
    logits = [models.apply(ctx.model, m.params, m.batch_stats, x)[0] for m in (a, b)]
    reps = [lambda z: z]
    if ctx.loss.classification:
        reps.insert(0, lambda z: jax.nn.softmax(z, axis=-1))
    if inputs and ctx.loss.per_token(shared.y_test):  # every labelled position is an example
        labelled = (a.view.labels[shared.extra] != IGNORE).reshape(-1)
        rows = lambda r: _masked_rows(r.reshape(-1, r.shape[-1]), labelled)
        reps = [lambda z, f=f: rows(f(z)) for f in reps]
    values = [similarity.linear_cka(*(f(z) for z in logits)) for f in reps]
    return dict(zip(columns(ctx), values))


def _masked_rows(x_NF: jax.Array, keep_N: jax.Array) -> jax.Array:
    """Rows centred over the kept rows and zeroed elsewhere: linear CKA of such rows equals CKA of the kept rows
    alone (their mean is zero, so CKA's own centring changes nothing, and zero rows add nothing)."""
    keep = keep_N.astype(x_NF.dtype)[:, None]
    mean = jnp.sum(x_NF * keep, 0) / jnp.maximum(jnp.sum(keep), 1)
    return (x_NF - mean) * keep


def columns(ctx: Context) -> tuple[str, ...]:
    return ("cka_softmax", "cka_logits") if ctx.loss.classification else ("cka_logits",)


FAMILY = Family(
    "cka", "pair", cka_metrics, options=CKAOptions, columns=columns,
    heatmaps=(Heatmap("cka_softmax", "CKA of softmax outputs"), Heatmap("cka_logits", "CKA of logits")),
    correlated=lambda ctx: columns(ctx)[:1], cost=0.01, prepare=probe, kind_of_metric="global")
