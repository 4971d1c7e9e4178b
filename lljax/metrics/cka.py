"""The 'cka' family: linear CKA of two seeds' outputs on the paper's probe, training inputs mixed up with
lambda ~ Beta(16, 16) (Yang et al. 2021): of their softmax outputs (`cka_softmax`, the paper's; classification
only) and of their logits or outputs (`cka_logits`)."""
from __future__ import annotations

import dataclasses

import jax

from lljax import models, options, similarity
from lljax.metrics.family import Context, Family, Heatmap, Member, Shared


@dataclasses.dataclass(frozen=True)
class CKAOptions:
    samples: int = options.option(768, "mixup probe inputs for CKA (the paper's 768)", low=1)


def probe(ctx: Context, shared: Shared, key) -> jax.Array:
    """(S, ...) the group's probe inputs, one draw for every pair."""
    return similarity.mixup_inputs(key, shared.x_train, num=min(ctx.options.samples, shared.x_train.shape[0]))


def cka_metrics(ctx: Context, shared: Shared, a: Member, b: Member, key) -> dict:
    logits = [models.apply(ctx.model, m.params, m.batch_stats, shared.extra)[0] for m in (a, b)]
    out = {"cka_logits": similarity.linear_cka(*logits)}
    if ctx.loss.classification:
        out = {"cka_softmax": similarity.linear_cka(*(jax.nn.softmax(z, axis=-1) for z in logits)), **out}
    return out


def columns(ctx: Context) -> tuple[str, ...]:
    return ("cka_softmax", "cka_logits") if ctx.loss.classification else ("cka_logits",)


FAMILY = Family(
    "cka", "pair", cka_metrics, options=CKAOptions, columns=columns,
    heatmaps=(Heatmap("cka_softmax", "CKA of softmax outputs"), Heatmap("cka_logits", "CKA of logits")),
    correlated=lambda ctx: columns(ctx)[:1], cost=0.01, prepare=probe, kind_of_metric="global")
