"""The 'slices' family: the loss around every member along filter-normalised random directions (Li et al. 2018;
`lljax.surfaces`), on `samples` examples of its own training view and labels, BatchNorm in inference mode (or
recomputed at every point). Per member: slice_sharpness (the mean loss increase at filter-normalised radius r
over D directions, both signs), slice_sharpness_max (the worst of the 2D) and slice_loss (at the model); a 1-D
slice and a 2-D surface on [-1, 1] (^2) for the figures (slices_1d.png, slices_2d.png)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lljax import curves, figures, grid, losses, models, options, surfaces
from lljax.metrics.family import Context, Family, Heatmap, Member, Shared


@dataclasses.dataclass(frozen=True)
class SliceOptions:
    samples: int = options.option(1000, "training examples of each model's own view the loss is evaluated on",
                                  low=1)
    radius: float = options.option(0.5, "filter-normalised radius of slice_sharpness", low=0, low_open=True)
    directions: int = options.option(8, "random directions of slice_sharpness (both signs of each)", low=1)
    points: int = options.option(51, "points of the 1-D slice on [-1, 1] (loss-landscape: 51)", low=2)
    grid: int = options.option(21, "points per axis of the 2-D surface on [-1, 1]^2 (loss-landscape: 51)", low=2)
    biasbn: str = options.option("zero", "a direction's 1-D parameters (biases, normalisation): zeroed, or kept "
                                         "equal to the weights", choices=surfaces.BIASBN)
    orthogonal: bool = options.option(False, "orthogonalise the surface's second direction to the first")
    recompute_bn: bool = options.option(False, "recompute BatchNorm statistics at every point (default: the "
                                               "model's, inference mode)")
    chunk: int = options.option(16, "points evaluated together per member (memory)", low=1)


def _loss(ctx: Context, member: Member, rng: jax.Array):
    """The mean loss of parameters on a batch (x, y), in chunks of the evaluation batch size."""
    def loss(params, batch):
        x, y = batch
        stats = member.batch_stats
        if ctx.options.recompute_bn:
            stats = curves.recompute_batch_stats(ctx.model, params, stats, x, chunk_size=ctx.eval_batch_size,
                                                 rng=rng)
        dtype = jnp.result_type(jax.tree.leaves(params)[0].dtype, jnp.float32)
        total, _, weight = losses.evaluate(lambda xb: models.apply(ctx.model, params, stats, xb)[0], x, y,
                                           ctx.loss, None, ctx.eval_batch_size, dtype)
        return total / weight

    return loss


def slice_family(ctx: Context, shared: Shared, member: Member, key) -> dict:
    """Every point (the model, the sharpness probes, the 1-D slice, the 2-D surface) in ONE `evaluate_points`
    call over D + 2 directions: one instance of the model's loss in the compiled program, not three."""
    o = ctx.options
    rows = member.view.order[:min(o.samples, ctx.subset_size)]
    batch = (shared.x_train[rows], member.view.labels[rows])
    loss = _loss(ctx, member, grid.stream(key, "batch_stats"))
    key_sharp, key_1, key_2 = jax.random.split(key, 3)
    probes = [surfaces.random_direction(k, member.params, o.biasbn) for k in jax.random.split(key_sharp, o.directions)]
    first = surfaces.random_direction(key_1, member.params, o.biasbn)
    second = surfaces.random_direction(key_2, member.params, o.biasbn)
    second = surfaces.orthogonalize(first, second) if o.orthogonal else second
    dtype = jax.tree.leaves(member.params)[0].dtype
    ticks = lambda n: jnp.linspace(-1, 1, n, dtype=dtype)
    axis = jnp.eye(o.directions + 2, dtype=dtype)  # coefficients along the probes, then first and second
    plane = jnp.stack(jnp.meshgrid(ticks(o.grid), ticks(o.grid)), -1).reshape(-1, 2)  # row-major over (y, x)
    points = jnp.concatenate([
        jnp.zeros((1, o.directions + 2), dtype),  # the model
        (o.radius * jnp.stack([-axis[:o.directions], axis[:o.directions]], 1)).reshape(-1, o.directions + 2),
        ticks(o.points)[:, None] * axis[o.directions],
        plane[:, :1] * axis[o.directions] + plane[:, 1:] * axis[o.directions + 1]])
    values = surfaces.evaluate_points(loss, member.params, batch, (*probes, first, second), points, o.chunk)
    base, increase = values[0], values[1:1 + 2 * o.directions] - values[0]
    line = values[1 + 2 * o.directions:1 + 2 * o.directions + o.points]
    return {"slice_sharpness": increase.mean(), "slice_sharpness_max": increase.max(), "slice_loss": base,
            "slice_line": line, "slice_surface": values[-o.grid ** 2:].reshape(o.grid, o.grid)}


def slice_outputs(results, tables_, figures_dir) -> list:
    """The 1-D slices (mean over seeds, one panel per representative grid point, the y axis in log10) and the
    2-D surfaces (the first seed's, log10 of the loss, one colour scale per figure)."""
    lines = results.arrays_by_point("member", "slice_line")
    planes = results.arrays_by_point("member", "slice_surface")

    def line(point):
        if not lines.get(point):
            return None
        mean = np.mean(lines[point], axis=0)
        return [(np.linspace(-1, 1, len(mean)), mean, "training loss", {"lw": 1.2})]

    def plane(point):
        if not planes.get(point):
            return None
        z = np.asarray(planes[point][0])
        ticks = np.linspace(-1, 1, z.shape[0])
        return ticks, ticks, z

    return [*figures.point_panels(results, tables_.grid, line, figures_dir, "slices_1d", "alpha", "loss",
                                  "training loss along a filter-normalised direction (mean over seeds)", logy=True),
            *figures.point_contours(results, tables_.grid, plane, figures_dir, "slices_2d", "alpha", "beta",
                                    "log10 training loss on a filter-normalised plane (first seed)", log10=True,
                                    marks=((0.0, 0.0),))]


FAMILY = Family(
    "slices", "member", slice_family, options=SliceOptions, prefix="slice",
    columns=("slice_sharpness", "slice_sharpness_max", "slice_loss"),
    heatmaps=(Heatmap("slice_sharpness", "loss increase at filter-normalised radius r (mean over directions)"),
              Heatmap("slice_sharpness_max", "loss increase at filter-normalised radius r (worst direction)")),
    correlated=("slice_sharpness", "slice_sharpness_max"), cost=0.5, default=False, static_subset=True,
    outputs=slice_outputs, kind_of_metric="local")
