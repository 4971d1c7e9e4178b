"""The 'surfaces' family: a Bezier surface between four seeds of a grid point (Ren et al., ICLR 2025;
`lljax.curves.fit_surface`), the first four seeds at the four corners. Its inner control points are fitted on
the first seed's training view and labels (SGD momentum 0.9 at `lr`, the members' weight decay), then it is
evaluated on a G x G grid of (u, v) with BatchNorm statistics recomputed exactly at every point (Ren et al.
interpolate the corners' statistics instead). surface_mc: mode connectivity generalised to the surface (the
corners' mean training error less the grid value farthest from it; < 0: a barrier); surface_best_test_acc: the
test accuracy of the point with the lowest training loss; surface_ensemble_test_acc: of the ensemble of every
grid point's softmax outputs; surface_corners_test_acc: the corners' mean. Writes surfaces.csv."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from lljax import curves, figures, grid, options, store, tables
from lljax.metrics.family import Context, Family, Heatmap, Member, Shared


@dataclasses.dataclass(frozen=True)
class SurfaceOptions:
    degree: int = options.option(2, "degree of the Bezier surface (2: a 3 x 3 grid of control points)", low=1)
    epochs: int | None = options.option(None, "fitting epochs (default: the training epochs; per stage with "
                                              "--surface-boundary-first)", low=1)
    lr: float = options.option(0.2, "fitting learning rate (as --curve-lr)", low=0, low_open=True)
    batch_size: int = options.option(128, "fitting minibatch size", low=1)
    grid: int = options.option(11, "points per axis of the (u, v) grid the surface is evaluated on", low=2)
    boundary_first: bool = options.option(False, "fit the four boundary curves first, then the interior (Ren et "
                                                 "al.'s two stages)")


ALONG = ("train_err", "train_loss", "test_err", "test_loss")


def surface_family(ctx: Context, shared: Shared, a: Member, b: Member, c: Member, d: Member, key) -> dict:
    o, n = ctx.options, ctx.subset_size
    rows = a.view.order[:n]  # the first seed's subset, in its view's order
    fitted, fit_losses = curves.fit_surface(
        ctx.model, curves.init_surface(a.params, b.params, c.params, d.params, o.degree), shared.x_train,
        a.view.labels, key, batch_stats=a.batch_stats, epochs=o.epochs or ctx.epochs,
        batch_size=min(o.batch_size, n), lr=o.lr, weight_decay=a.hyper.weight_decay, loss=ctx.loss, rows=rows,
        boundary_first=o.boundary_first)
    s = curves.evaluate_surface(ctx.model, fitted, a.batch_stats, shared.x_train, a.view.labels, shared.x_test,
                                shared.y_test, o.grid, bn_chunk_size=ctx.eval_batch_size,
                                eval_batch_size=ctx.eval_batch_size, loss=ctx.loss, rows=rows,
                                rng=grid.stream(key, "batch_stats"))
    error = ctx.loss.error is not None
    corners = lambda z: jnp.stack([z[0, 0], z[0, -1], z[-1, 0], z[-1, -1]]).mean()
    return {"surface_mc": curves.surface_connectivity(s.train_err if error else s.train_loss),
            "surface_mc_loss": curves.surface_connectivity(s.train_loss),
            "surface_best_test_acc": s.best_test_acc, "surface_ensemble_test_acc": s.ensemble_test_acc,
            "surface_corners_test_acc": 1 - corners(s.test_err) if error else jnp.full((), jnp.nan),
            **{f"surface_{k}": getattr(s, k) for k in ALONG}, "surface_fit_loss": fit_losses}


def surface_rows(results) -> list[dict]:
    """One row per (grid point, u, v): the knobs, the four seeds, u, v and the training and test error and loss
    on the surface (errors absent for a loss without an error metric)."""
    rows = []
    for group, arrays in zip(results.groups, results.group_metrics):
        if "quad/surface_train_loss" not in arrays:
            continue
        present = [k for k in ALONG if not np.all(np.isnan(arrays[f"quad/surface_{k}"]))]
        size = arrays["quad/surface_train_loss"].shape[1]
        ticks = np.linspace(0, 1, size)
        for q, owner in enumerate(tables.owners_of("quad", arrays, len(group.members))):
            seeds = [results.members[group.members[i]] for i in owner]
            for i, u in enumerate(ticks):
                for j, v in enumerate(ticks):
                    row = grid.knob_row(seeds[0])
                    row.update({s: m.seed for s, m in zip(tables.SEEDS, seeds)}, u=float(u), v=float(v))
                    row.update({k: arrays[f"quad/surface_{k}"][q, i, j] for k in present})
                    rows.append(row)
    return rows


def surface_outputs(results, tables_, figures_dir) -> list:
    """surfaces.csv, and the training error (loss) over (u, v) of each representative grid point's surface
    (mean over its quads), one colour scale per figure."""
    store.write_atomic(figures_dir.parent / "surfaces.csv", tables.to_csv(surface_rows(results)))
    kind = "err" if results.error_metric else "loss"
    values = results.arrays_by_point("quad", f"surface_train_{kind}")

    def draw(point):
        if not values.get(point):
            return None
        z = np.mean(values[point], axis=0)  # (u, v)
        ticks = np.linspace(0, 1, z.shape[0])
        return ticks, ticks, z.T  # rows over v, columns over u

    what = "error" if kind == "err" else "loss"
    return figures.point_contours(results, tables_.grid, draw, figures_dir, f"surface_train_{kind}", "u", "v",
                                  f"training {what} on the Bezier surface between four seeds",
                                  marks=((0, 0), (0, 1), (1, 0), (1, 1)))


FAMILY = Family(
    "surfaces", "quad", surface_family, options=SurfaceOptions, prefix="surface",
    columns=("surface_mc", "surface_mc_loss", "surface_best_test_acc", "surface_ensemble_test_acc",
             "surface_corners_test_acc"),
    heatmaps=(Heatmap("surface_mc", "surface mode connectivity (training error; <0: barrier)", center=0.0),
              Heatmap("surface_best_test_acc", "test accuracy of the surface's best point")),
    correlated=("surface_mc",), cost=3.0, default=False, static_subset=True, outputs=surface_outputs,
    kind_of_metric="global")
