"""The 'spectra' family: heavy-tailed weight spectra of every member, no data (Martin & Mahoney; WeightWatcher
0.7.7's metrics: `lljax.spectra`). Per member: WeightWatcher's summary, the means over its layers of alpha,
alpha_weighted, log_norm, log_alpha_norm, log_spectral_norm, stable_rank and mp_softrank, and of Yang et al. 2023's
data-free model-selection metrics (alpha_xmax, etpl_beta, etpl_lambda, etpl_ks, exp_lambda, exp_ks:
`spectra.selection_metrics`); per layer (layers.csv): every weight metric."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lljax import options, spectra
from lljax.metrics.family import Context, Family, Heatmap, Member, Shared


@dataclasses.dataclass(frozen=True)
class SpectraOptions:
    pool: bool = options.option(True, "pool a conv layer's per-position matrices into one spectrum "
                                      "(WeightWatcher's default); --no-spectra-pool keeps them apart")
    min_evals: int = options.option(spectra.MIN_EVALS, "layers with fewer eigenvalues are skipped", low=1)
    bootstrap: int = options.option(50, "bootstrap resamples of the eigenvalues for alpha's standard error "
                                        "(0: none)", low=0)
    selection: bool = options.option(True, "Yang et al. 2023's fits (alpha_xmax, etpl_*, exp_*; a few seconds "
                                           "of compilation); --no-spectra-selection leaves those columns NaN")


def spectra_family(ctx: Context, shared: Shared, member: Member, key) -> dict:
    o = ctx.options
    layers = spectra.layer_metrics(member.params, pool=o.pool, min_evals=o.min_evals,
                                   key=key if o.bootstrap else None, bootstrap=o.bootstrap,
                                   selection=o.selection).metrics
    dtype = jax.tree.leaves(member.params)[0].dtype
    means = spectra.summary(layers, spectra.SUMMARY + spectra.SELECTION)
    out = {k: jnp.asarray(v, dtype) for k, v in means.items()}  # NaN when every layer is skipped
    for name in spectra.METRICS:
        out[f"layer_{name}"] = jnp.stack([m[name] for m in layers.values()]) if layers else jnp.zeros((0,), dtype)
    return out


def layer_names(ctx: Context, params) -> list[str]:
    return [layer.name for layer in spectra.weight_layers(params, ctx.options.pool, ctx.options.min_evals)[0]]


def check(ctx: Context, params, batch_stats, x) -> None:
    layer_names(ctx, params)  # a model with no weight matrix is a one-line error


FAMILY = Family(
    "spectra", "member", spectra_family, options=SpectraOptions, columns=spectra.SUMMARY + spectra.SELECTION,
    heatmaps=(Heatmap("alpha", "alpha (power-law exponent of the weight spectra, layer mean)"),
              Heatmap("alpha_weighted", "alpha-weighted (alpha x log10 lambda_max, layer mean)"),
              Heatmap("stable_rank", "stable rank of the weights (layer mean)"),
              Heatmap("log_spectral_norm", "log10 spectral norm (layer mean)"),
              Heatmap("mp_softrank", "MP soft rank (layer mean)"),
              Heatmap("etpl_lambda", "E-TPL lambda (truncated power law's exponential rate, layer mean)")),
    correlated=("alpha", "alpha_weighted", "log_norm", "log_spectral_norm", "stable_rank", "alpha_xmax",
                "etpl_beta", "etpl_lambda", "exp_lambda"), cost=0.02,
    default=False, layers=layer_names, layer_columns=tuple(f"layer_{m}" for m in spectra.METRICS), check=check,
    kind_of_metric="data-free", sharded=False,  # its CPU path calls numpy through a host callback
    x64=True)  # Yang et al.'s fits in float64 (`spectra.layer_metrics`); WeightWatcher's metrics as before
