"""The 'collapse' family: neural collapse of every member on its own training view (its subset and labels):
NC1-NC4 of its penultimate features (Papyan, Han & Donoho 2020; Zhu et al. 2021; `similarity.neural_collapse`).
The model exposes the features with `self.sow('intermediates', 'features', h)` before its read-out, as the
built-in models do; classification only. With per-token targets the features at every read-out position are
sown (batch, positions, features) and every labelled position is one example (`data.IGNORE` left out)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lljax import models, similarity
from lljax.errors import LLJaxError
from lljax.losses import IGNORE
from lljax.metrics.family import Context, Family, Heatmap, Member, Shared


def collapse_family(ctx: Context, shared: Shared, member: Member, key) -> dict:
    x, labels = shared.x_train, member.view.labels
    n = x.shape[0]
    size = min(ctx.eval_batch_size, n)
    pad = -n % size
    padded = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    chunks = padded.reshape(-1, size, *x.shape[1:])
    positions = tuple(labels.shape[1:]) if ctx.loss.per_token(labels) else ()
    logits, features = jax.lax.map(
        lambda c: models.features(ctx.model, member.params, member.batch_stats, c, positions), chunks)
    rows = lambda a: a.reshape(-1, a.shape[-1])[:n * max(1, int(np.prod(positions)))]
    weights = member.view.mask
    if positions:  # every labelled position of the subset is an example
        weights = (weights.reshape(-1, *[1] * len(positions)) * (labels != IGNORE)).reshape(-1)
        labels = jnp.maximum(labels, 0).reshape(-1)
    logits, features = rows(logits), rows(features)
    nc = similarity.neural_collapse(features, labels, logits, logits.shape[-1], weights)
    return {"nc1": nc.nc1, "nc2": nc.nc2, "nc3": nc.nc3, "nc4": nc.nc4}


def check(ctx: Context, params, batch_stats, x) -> None:
    if not ctx.loss.classification:
        raise LLJaxError(f"the collapse family needs class labels; the {ctx.loss.name} loss has none")
    jax.eval_shape(lambda p, bs, x_: models.features(ctx.model, p, bs, x_), params, batch_stats, x)


FAMILY = Family(
    "collapse", "member", collapse_family, columns=("nc1", "nc2", "nc3", "nc4"),
    heatmaps=(Heatmap("nc1", "log10 NC1 (within / between-class variability)", log10=True),
              Heatmap("nc2", "NC2 (class means vs simplex ETF)"), Heatmap("nc3", "NC3 (classifier vs means)"),
              Heatmap("nc4", "NC4 (classifier vs nearest class mean)")),
    correlated=("nc1", "nc2", "nc3", "nc4"), cost=0.02, default=False, check=check, kind_of_metric="features")
