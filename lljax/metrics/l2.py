"""The 'l2' family: the L2 distance between the parameters of two seeds at a grid point."""
from __future__ import annotations

from lljax import similarity
from lljax.metrics.family import Context, Family, Heatmap, Member, Shared


def l2_metrics(ctx: Context, shared: Shared, a: Member, b: Member, key) -> dict:
    return {"l2": similarity.l2_distance(a.params, b.params)}


FAMILY = Family("l2", "pair", l2_metrics, columns=("l2",), heatmaps=(Heatmap("l2", "L2 distance between seeds"),),
                correlated=("l2",), cost=0.005, kind_of_metric="global")
