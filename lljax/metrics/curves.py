"""The 'curves' family: mode connectivity of every pair (Yang et al. 2021). A quadratic Bezier curve between
the two members, its bend fitted on member a's training view and labels (SGD momentum 0.9 at `lr`, the
members' weight decay), evaluated with BatchNorm statistics recomputed at each t. mc on training error (the
paper's; on the loss for a loss without an error metric), on training loss and on test error; `barrier_linear`
is mc of the straight segment, unfitted. Also writes curves.csv (one row per pair and t)."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from lljax import curves, figures, grid, options, store, tables
from lljax.metrics.family import Context, Family, Heatmap, Member, Shared


@dataclasses.dataclass(frozen=True)
class CurveOptions:
    epochs: int | None = options.option(None, "curve-fitting epochs (default: the training epochs)", low=1)
    lr: float = options.option(0.2, "curve-fitting learning rate (measured on MNIST-1D MLPs: 0.02 leaves a 16%% "
                                    "barrier that 0.2 removes)", low=0, low_open=True)
    batch_size: int = options.option(128, "curve-fitting minibatch size", low=1)
    points: int = options.option(21, "points along t where curves are evaluated (the reference code used 5)",
                                 low=2)


ALONG = ("train_err", "train_loss", "test_err", "test_loss")


def fit_pair(ctx: Context, options: CurveOptions, shared: Shared, a: Member, b: Member, key):
    """The pair's fitted quadratic Bezier curve and its per-epoch objective, as this family fits it (the
    'robust_curves' family refits the same curve from the same key)."""
    n = ctx.subset_size
    return curves.fit_curve(
        ctx.model, curves.init_curve(a.params, b.params, num_bends=1), shared.x_train, a.view.labels, key,
        batch_stats=a.batch_stats, epochs=options.epochs or ctx.epochs, batch_size=min(options.batch_size, n),
        lr=options.lr, weight_decay=a.hyper.weight_decay, loss=ctx.loss, rows=a.view.order[:n])


def curve_family(ctx: Context, shared: Shared, a: Member, b: Member, key) -> dict:
    o, n = ctx.options, ctx.subset_size
    rows = a.view.order[:n]  # member a's subset, in its view's order
    ts = jnp.asarray(curves.default_ts(o.points), jnp.float32)
    fitted, fit_losses = fit_pair(ctx, o, shared, a, b, key)
    evaluate = lambda c: curves.evaluate_curve(
        ctx.model, c, a.batch_stats, shared.x_train, a.view.labels, shared.x_test, shared.y_test, ts,
        bn_chunk_size=ctx.eval_batch_size, eval_batch_size=ctx.eval_batch_size, loss=ctx.loss, rows=rows,
        rng=grid.stream(key, "batch_stats"))  # Dropout during the BatchNorm recompute, as torch's update_bn
    curve, line = evaluate(fitted), evaluate(curves.init_curve(a.params, b.params, num_bends=0))
    error = ctx.loss.error is not None
    mc = curves.mode_connectivity
    return {"mc": mc(curve.train_err if error else curve.train_loss), "mc_loss": mc(curve.train_loss),
            "mc_test": mc(curve.test_err if error else curve.test_loss),
            "barrier_linear": mc(line.train_err if error else line.train_loss),
            "barrier_linear_loss": mc(line.train_loss),
            **{f"curve_{k}": getattr(curve, k) for k in ALONG},
            **{f"line_{k}": getattr(line, k) for k in ALONG[:3]}, "curve_fit_loss": fit_losses}


def curve_rows(results) -> list[dict]:
    """One row per (pair, t): the point's knobs, both seeds, t and the losses and errors along the fitted
    curve and the straight line (errors absent for a loss without an error metric)."""
    names = [f"curve_{k}" for k in ALONG] + [f"line_{k}" for k in ALONG[:3]]
    rows = []
    for group, arrays in zip(results.groups, results.group_metrics):
        if "pair/curve_train_loss" not in arrays:
            continue
        present = [name for name in names if not np.all(np.isnan(arrays[f"pair/{name}"]))]
        ts = curves.default_ts(arrays["pair/curve_train_loss"].shape[1])
        for p, (a, b) in enumerate(zip(arrays["pair/a"], arrays["pair/b"])):
            ma, mb = results.members[group.members[a]], results.members[group.members[b]]
            for k, t in enumerate(ts):
                row = grid.knob_row(ma)
                row.update(seed_a=ma.seed, seed_b=mb.seed, t=float(t))
                row.update({name: arrays[f"pair/{name}"][p, k] for name in present})
                rows.append(row)
    return rows


def curve_outputs(results, tables_, figures_dir) -> list:
    """curves.csv, and the error (loss) along the fitted curve and the straight line, one panel per grid point
    of a representative set."""
    store.write_atomic(figures_dir.parent / "curves.csv", tables.to_csv(curve_rows(results)))
    kind = "err" if results.error_metric else "loss"
    along = {name: results.arrays_by_point("pair", name)
             for name in (f"curve_train_{kind}", f"line_train_{kind}", f"curve_test_{kind}")}
    what = "error" if kind == "err" else "loss"

    def draw(point):
        if not along[f"curve_train_{kind}"].get(point):
            return None
        mean = {k: np.mean(v[point], axis=0) for k, v in along.items()}
        ts = curves.default_ts(len(mean[f"curve_train_{kind}"]))
        return [(ts, mean[f"curve_train_{kind}"], f"Bezier curve, training {what}", {"lw": 1.2}),
                (ts, mean[f"curve_test_{kind}"], f"Bezier curve, test {what}", {"lw": 1, "ls": ":"}),
                (ts, mean[f"line_train_{kind}"], f"straight line, training {what}", {"lw": 1, "ls": "--"})]

    return figures.point_panels(results, tables_.grid, draw, figures_dir, "curves_along_t", "t", what,
                                f"{what} along the path between two seeds (mean over pairs)")


FAMILY = Family(
    "curves", "pair", curve_family, options=CurveOptions, prefix="curve",
    columns=("mc", "mc_loss", "mc_test", "barrier_linear", "barrier_linear_loss"),
    heatmaps=(Heatmap("mc", "mode connectivity (training error; <0: barrier)", center=0.0),
              Heatmap("mc_loss", "mode connectivity (training loss)", center=0.0),
              Heatmap("mc_test", "mode connectivity (test error)", center=0.0),
              Heatmap("barrier_linear", "straight-line mode connectivity (training error)", center=0.0)),
    correlated=("mc", "barrier_linear"), cost=1.0, static_subset=True, outputs=curve_outputs,
    kind_of_metric="global")
