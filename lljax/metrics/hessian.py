"""The 'hessian' family: top-k eigenvalues (Lanczos), trace (with its standard error) and spectral density
(stochastic Lanczos quadrature) of every member's training-loss Hessian on `samples` examples of its own view
and labels, BatchNorm in inference mode (Yang et al. 2021's local metrics; `lljax.hessian`)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lljax import figures, hessian, models, options
from lljax.metrics.family import Context, Family, Heatmap, Member, Shared


@dataclasses.dataclass(frozen=True)
class HessianOptions:
    samples: int = options.option(1000, "training samples of each model's own view (the paper's 200 gives noisy "
                                        "estimates)", low=1)
    top_k: int = options.option(3, "top Hessian eigenvalues per model", low=1)
    lanczos_steps: int = options.option(32, "Lanczos steps (HVPs) for the top eigenvalues", low=1)
    trace_method: str = options.option("auto", "trace estimator: exact up to --hessian-exact-trace-max-params "
                                               "parameters, else Krylov-deflated Hutchinson",
                                       choices=hessian.TRACE_METHODS)
    trace_probes: int = options.option(99, "HVPs of a stochastic trace estimator", low=1)
    exact_trace_max_params: int = options.option(hessian.EXACT_TRACE_MAX_PARAMS, "largest model whose trace "
                                                 "'auto' computes exactly (one HVP per parameter)", low=0)
    density_runs: int = options.option(4, "stochastic Lanczos quadrature runs for the spectral density (0: none)",
                                       low=0)
    density_steps: int = options.option(64, "Lanczos steps per density run", low=1)
    per_layer: bool = options.option(False, "also the top eigenvalue and trace of every layer's Hessian block "
                                            "(its parameters only, the rest fixed): layers.csv")

    def validate(self) -> None:
        self.core()  # HessianConfig checks how the options combine (top_k <= lanczos_steps)

    def core(self) -> hessian.HessianConfig:
        return hessian.HessianConfig(num_samples=self.samples, top_k=self.top_k, lanczos_steps=self.lanczos_steps,
                                     trace_method=self.trace_method, trace_probes=self.trace_probes,
                                     exact_trace_max_params=self.exact_trace_max_params,
                                     density_runs=self.density_runs, density_steps=self.density_steps)


def samples(member: Member, x_train, count: int):
    """The first `count` examples of the member's subset (a random subset of it; wrapping around, with weight 0,
    when the subset is smaller): inputs (S, ...), labels (S, ...) and weights (S,)."""
    count = min(count, x_train.shape[0])
    positions = jnp.arange(count)
    idx = member.view.order[positions % member.view.size]
    weights = (positions < member.view.size).astype(jnp.float32)
    return x_train[idx], member.view.labels[idx], weights


def hessian_family(ctx: Context, shared: Shared, member: Member, key) -> dict:
    config = ctx.options.core()

    def loss(params, batch):
        x, y, w = batch
        return ctx.loss.mean(models.apply(ctx.model, params, member.batch_stats, x)[0], y, w)

    batch = samples(member, shared.x_train, config.num_samples)
    out = hessian.hessian_metrics(loss, member.params, batch, key, config)
    eig = out.top_eigenvalues
    values = {"hessian_top_eig": eig[0], **{f"hessian_eig_{i + 1}": eig[i] for i in range(1, eig.shape[0])},
              "hessian_top_residual": out.top_residuals[0], "hessian_trace": out.trace,
              "hessian_trace_se": out.trace_se, "hessian_density_nodes": out.density_nodes,
              "hessian_density_weights": out.density_weights}
    if ctx.options.per_layer:
        tops, traces = [], []
        for i, pattern in enumerate(hessian.layer_blocks(member.params).values()):
            block = hessian.block(loss, member.params, pattern)
            metrics = hessian.hessian_metrics(block.loss_fn, block.params, batch, jax.random.fold_in(key, 1000 + i),
                                              dataclasses.replace(config, top_k=1, density_runs=0))
            tops.append(metrics.top_eigenvalues[0])
            traces.append(metrics.trace)
        values.update(layer_hessian_top_eig=jnp.stack(tops), layer_hessian_trace=jnp.stack(traces))
    return values


def columns(ctx: Context) -> tuple[str, ...]:
    k = ctx.options.top_k
    return ("hessian_top_eig", *[f"hessian_eig_{i}" for i in range(2, k + 1)], "hessian_top_residual",
            "hessian_trace", "hessian_trace_se")


def density_figures(results, tables, figures_dir) -> list:
    """Spectral densities (SLQ, smoothed), one panel per grid point of a representative set."""
    nodes = results.arrays_by_point("member", "hessian_density_nodes")
    weights = results.arrays_by_point("member", "hessian_density_weights")

    def draw(point):
        if not nodes.get(point) or np.asarray(nodes[point]).size == 0:
            return None
        n = np.concatenate([a.ravel() for a in nodes[point]])
        w = np.concatenate([a.ravel() for a in weights[point]])
        w = w / len(nodes[point]) / max(1, nodes[point][0].shape[0])  # mean over members and runs: mass 1
        finite = n[np.isfinite(n)]
        if finite.size == 0:
            return None
        low, high = finite.min(), finite.max()
        pad = 0.05 * (high - low) + 1e-6
        grid_t = np.linspace(low - pad, high + pad, 400)
        density = np.asarray(hessian.smooth_density(n, w, grid_t, (high - low + 1e-6) / 100))
        return [(grid_t, np.maximum(density, 1e-8), "density", {"lw": 1})]

    return figures.point_panels(results, tables.grid, draw, figures_dir, "hessian_density", "Hessian eigenvalue",
                                "density", "Hessian spectral density (SLQ, smoothed; mean over seeds)", logy=True)


def layer_names(ctx: Context, params) -> list[str]:
    return list(hessian.layer_blocks(params)) if ctx.options.per_layer else []


FAMILY = Family(
    "hessian", "member", hessian_family, options=HessianOptions, columns=columns,
    heatmaps=(Heatmap("hessian_top_eig", "log10 top Hessian eigenvalue", log10=True),
              Heatmap("hessian_trace", "log10 Hessian trace", log10=True)),
    correlated=("hessian_top_eig", "hessian_trace"), cost=0.1, outputs=density_figures, layers=layer_names,
    layer_columns=lambda ctx: ("layer_hessian_top_eig", "layer_hessian_trace") if ctx.options.per_layer else (),
    kind_of_metric="local")
