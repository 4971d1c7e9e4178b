"""Claims with their uncertainty: intervals over seeds, how stable each phase label is, the bootstrap probability
of the best point, and intervals of rank correlations. Host-side numpy on the tables; no retraining.

Every draw comes from a numpy Generator seeded by the run's seed and a stream name (`generator`), so a run's
intervals are the same every time.

- The interval of a grid point's mean over its n seeds is Student's t interval, exact for normally distributed
  seeds. The percentile bootstrap of a mean covers far less than its level with few seeds (measured on normal
  samples, 95% nominal: 0.73 at n = 3, 0.83 at n = 5, 0.90 at n = 10, 0.93 at n = 20), so it is used only from
  `BOOTSTRAP_MIN_SEEDS` seeds on. With two seeds the t interval has one degree of freedom and is about 9
  standard deviations wide: the report says so.
- Phase stability (two numbers per point): the fraction of bootstrap resamples of the point's seeds (members and
  pairs resampled as units) whose means get the point's phase; and the fraction of the threshold settings in
  the neighbourhood `threshold_grid` (train_loss and mc_band each scaled by 2^-1 .. 2^1 in 9 log steps; the
  CKA threshold moved so that its distance to 1 is scaled the same way; 729 settings) that give it.
- The best point: the fraction of bootstrap resamples (each point's seeds resampled) in which it stays the best;
  for the two best phases, the difference of their best and of their mean scores with a percentile interval.
- Rank correlations: a percentile interval from resampling the grid points.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import warnings
import zlib
from typing import Mapping, Sequence

import numpy as np

from lljax import options, phases

BOOTSTRAP_MIN_SEEDS = 20


@dataclasses.dataclass(frozen=True)
class UncertaintyOptions:
    resamples: int = options.option(1000, "bootstrap resamples for phase stability, the best point and correlations",
                                    low=10)
    level: float = options.option(0.95, "level of every interval", low=0, high=0.999, low_open=True)
    stable: float = options.option(
        0.8, "a phase label is unstable below this fraction of resamples or threshold settings that keep it",
        low=0, high=1)


def generator(seed: int, *names) -> np.random.Generator:
    """A numpy Generator for the stream `names` under the run's seed."""
    return np.random.default_rng([int(seed), *(zlib.crc32(str(n).encode()) for n in names)])


def mean_interval(values, level: float = 0.95, rng: np.random.Generator | None = None,
                  resamples: int = 1000) -> tuple[float, float]:
    """The `level` interval of the mean of the finite `values` (module docstring): t below
    `BOOTSTRAP_MIN_SEEDS` values, else the percentile bootstrap (needs `rng`). NaN with fewer than two."""
    x = np.asarray(values, float)
    x = x[np.isfinite(x)]
    n = x.size
    if n < 2:
        return math.nan, math.nan
    if n < BOOTSTRAP_MIN_SEEDS or rng is None:
        from scipy.special import stdtrit  # Student's t quantile (scipy.stats takes a second to import)

        half = stdtrit(n - 1, 0.5 + level / 2) * x.std(ddof=1) / math.sqrt(n)
        return float(x.mean() - half), float(x.mean() + half)
    means = x[rng.integers(0, n, (resamples, n))].mean(1)
    low, high = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return float(low), float(high)


@functools.lru_cache(maxsize=16)
def threshold_grid(thresholds: phases.Thresholds, steps: int = 9, span: float = 2.0) -> list[phases.Thresholds]:
    """The neighbourhood of a threshold setting (module docstring): steps^3 settings."""
    scales = span ** np.linspace(-1, 1, steps)
    return [phases.Thresholds(thresholds.train_loss * a, thresholds.mc_band * b,
                              max(-1.0, 1 - (1 - thresholds.cka) * c))
            for a, b, c in itertools.product(scales, scales, scales) if thresholds.mc_band * b < 1]


def _resampled_means(values, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """(resamples, ...) means of bootstrap resamples of the rows of `values` (n, ...), NaN entries left out as
    the tables leave them out (NaN when a resample has none)."""
    x = np.asarray(values, float)
    if x.shape[0] == 0:
        return np.full((resamples, *x.shape[1:]), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample of NaN entries only
        return np.nanmean(x[rng.integers(0, x.shape[0], (resamples, x.shape[0]))], axis=1)


def _mean(values) -> float:
    x = np.asarray(values, float)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else math.nan


def phase_stability(train_loss: Sequence[float], mc: Sequence[float], cka: Sequence[float], phase: str,
                    thresholds: phases.Thresholds, rng: np.random.Generator, resamples: int = 1000
                    ) -> tuple[float, float]:
    """(bootstrap stability, threshold stability) of one grid point whose members have training losses
    `train_loss` (M,) and whose pairs have `mc` and `cka` (P,) (NaN where not measured; module docstring).
    NaN where the phase is unknown."""
    if phase not in phases.PHASES:
        return math.nan, math.nan
    loss_b = _resampled_means(train_loss, rng, resamples)
    pair_b = _resampled_means(np.stack([np.asarray(mc, float), np.asarray(cka, float)], axis=1).reshape(-1, 2),
                              rng, resamples)
    boot = float(np.mean(phases.classify(loss_b, pair_b[:, 0], pair_b[:, 1], thresholds) == phase))
    means = [_mean(train_loss), _mean(mc), _mean(cka)]
    grid = np.asarray([(t.train_loss, t.mc_band, t.cka) for t in threshold_grid(thresholds)])
    labels = phases.rule(*means, grid[:, 0], grid[:, 1], grid[:, 2])
    return boot, float(np.mean(labels == phase))


def best_point_probability(score_samples: Sequence[Sequence[float]], rng: np.random.Generator,
                           resamples: int = 1000, larger: bool = True) -> np.ndarray:
    """(P,) the fraction of bootstrap resamples (each point's seeds resampled) in which each point has the best
    mean score; `score_samples` holds every point's per-seed scores."""
    means = np.stack([_resampled_means(s, rng, resamples) for s in score_samples], axis=1)  # (B, P)
    means = np.where(np.isfinite(means), means, -np.inf if larger else np.inf)
    best = np.argmax(means, 1) if larger else np.argmin(means, 1)
    return np.bincount(best, minlength=means.shape[1]) / resamples


def phase_difference(score_samples: Sequence[Sequence[float]], labels: Sequence[str], first: str, second: str,
                     rng: np.random.Generator, resamples: int = 1000, level: float = 0.95, larger: bool = True
                     ) -> dict[str, tuple[float, float, float]]:
    """The difference first - second of the phases' best and mean scores (labels fixed as assigned), each as
    (estimate, low, high) with a percentile interval from resampling every point's seeds."""
    labels = np.asarray(labels)
    means = np.stack([_resampled_means(s, rng, resamples) for s in score_samples], axis=1)  # (B, P)
    observed = np.asarray([np.mean(s) if len(s) else np.nan for s in score_samples])
    pick = np.nanmax if larger else np.nanmin
    out = {}
    for name, reduce in (("best", pick), ("mean", np.nanmean)):
        diff = lambda m: reduce(m[..., labels == first], axis=-1) - reduce(m[..., labels == second], axis=-1)
        samples = diff(means)
        low, high = np.nanquantile(samples, [0.5 - level / 2, 0.5 + level / 2])
        out[name] = (float(diff(observed)), float(low), float(high))
    return out


def correlation_intervals(metrics: Mapping[str, Sequence[float]], score: Sequence[float], labels: Sequence[str],
                          rng: np.random.Generator, resamples: int = 1000, level: float = 0.95
                          ) -> dict[tuple[str, str], tuple[float, float, float, float]]:
    """(metric, scope) -> (Spearman low, high, Kendall low, high): percentile intervals from resampling the
    grid points of the scope ('all' or a phase), as `phases.correlation_table` scopes them. NaN below 3 points."""
    score, labels = np.asarray(score, float), np.asarray(labels).astype(str)
    scopes = ["all"] + [p for p in phases.PHASES if np.any(labels == p)]
    out = {}
    for name, values in metrics.items():
        values = np.asarray(values, float)
        finite = np.isfinite(values) & np.isfinite(score)
        for scope in scopes:
            chosen = np.flatnonzero(finite & (True if scope == "all" else labels == scope))
            if chosen.size < 3:
                out[(name, scope)] = (math.nan,) * 4
                continue
            idx = chosen[rng.integers(0, chosen.size, (resamples, chosen.size))]
            a, b = values[idx], score[idx]
            q = [0.5 - level / 2, 0.5 + level / 2]
            spearman, kendall = phases.spearman(a, b), phases.kendall(a, b)
            out[(name, scope)] = (*np.nanquantile(spearman, q), *np.nanquantile(kendall, q)) if \
                np.isfinite(spearman).any() else (math.nan,) * 4
    return out
