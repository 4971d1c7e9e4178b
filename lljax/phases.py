"""The taxonomy of Yang et al. 2021 (Figure 1): phase rules over grid-point means, and rank correlations of
metrics with test accuracy over all points and within each phase.

A grid point is one setting of the load-like and temperature-like knobs; its inputs here are means over the
members (seeds) trained there. The paper assigns phases by eye; lljax uses an explicit rule:

    not fitted (train_loss >= thresholds.train_loss):  I  if mc < -mc_band  else  II
    fitted     (train_loss <  thresholds.train_loss):  III if mc < -mc_band  else  IV-B if cka >= thresholds.cka
                                                                                 else  IV-A

so a barrier (mc clearly below 0) means "poorly connected" (I, III), and an under-trained model whose curve is
better than its endpoints (mc > 0) or flat is II. A fitted point with mc > +band (rare: the curve beats two fitted
endpoints) counts as connected (IV). Points whose rule needs a NaN input get "?" (e.g. CKA undefined at a fitted,
connected point); inputs a branch does not consult may be NaN.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import numbers
import os
from typing import Mapping, NamedTuple, Sequence

import numpy as np

from lljax import options
from lljax.errors import LLJaxError

PHASES = ("I", "II", "III", "IV-A", "IV-B")
UNKNOWN = "?"


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Phase-rule thresholds; the defaults recover the paper's ResNet18/CIFAR-10 layout (tests/test_phases.py).

    train_loss: nats of mean training cross-entropy (the member's own labels, BatchNorm in inference mode). A
        point is *fitted* when its mean is strictly below it. 0.05 nats means the model gives its own labels
        about exp(-0.05) = 95% probability on average, i.e. it (nearly) interpolates; chance level with 10
        classes is ln 10 = 2.3 nats. In the paper's grid every point at batch <= 32 and width <= 32 stays above
        it (0.07-1.6 nats, training accuracy below 98%), while wide models at batch >= 64 reach 0.000.
    mc_band: mode connectivity is "about 0" when |mc| <= mc_band; mc is a fraction of training error in [-1, 1]
        (not percent). 0.01 = one percentage point of training error, about the resolution of a curve evaluated
        on a few t points and the seed-to-seed spread: the paper's fitted models of width >= 23 have mc between
        -0.006 and +0.011, while its narrow models (width <= 8) have barriers of 0.04-0.30.
    cka: a fitted, connected point is IV-B (similar models, best test accuracy) when the mean linear CKA of the
        members' softmax outputs is >= cka, else IV-A. 0.7 separates the paper's peak (0.73-0.80 at batch
        44-128, width >= 64) from the plateaus of wide models at large batch (0.53-0.70, batch >= 512) and at
        small batch (0.47-0.66, batch <= 32).
    """

    train_loss: float = options.option(
        0.05, "fitted when the mean training loss is below this, in the units of the loss in use (nats for "
              "cross-entropy)")
    mc_band: float = options.option(
        0.01, "barrier when mc < -band; mc is a fraction of training error (of the loss, for a loss without an "
              "error metric)")
    cka: float = options.option(
        0.7, "IV-B when the CKA of outputs (softmax for classification) is at least this, else IV-A")

    def __post_init__(self):
        for name, value in (("train_loss", self.train_loss), ("mc_band", self.mc_band), ("cka", self.cka)):
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
                raise LLJaxError(f"Thresholds.{name} must be a finite number, got {value!r}")
        if self.train_loss <= 0:
            raise LLJaxError(f"Thresholds.train_loss must be positive (units of the loss), got {self.train_loss}")
        if not 0 <= self.mc_band < 1:
            raise LLJaxError(f"Thresholds.mc_band must be in [0, 1) (a fraction of error), got {self.mc_band}")
        if not -1 <= self.cka <= 1:
            raise LLJaxError(f"Thresholds.cka must be in [-1, 1], got {self.cka}")


def _as_float_array(name: str, values) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise LLJaxError(f"{name} must be numeric: {error}") from None


def classify(train_loss, mc, cka, thresholds: Thresholds = Thresholds()) -> np.ndarray:
    """Phase labels for grid points. train_loss (nats), mc (fraction of training error) and cka: arrays of one
    shape (or broadcastable) of grid-point means. Returns a str array of that shape with labels from
    `PHASES`, or "?" where the rule needs an input that is NaN (see the module docstring)."""
    if not isinstance(thresholds, Thresholds):
        raise LLJaxError(f"thresholds must be a phases.Thresholds, got {type(thresholds).__name__}")
    arrays = [_as_float_array(name, v) for name, v in (("train_loss", train_loss), ("mc", mc), ("cka", cka))]
    try:
        loss, mc, cka = np.broadcast_arrays(*arrays)
    except ValueError:
        raise LLJaxError(f"classify: train_loss, mc and cka have incompatible shapes "
                         f"{[a.shape for a in arrays]}") from None
    return rule(loss, mc, cka, thresholds.train_loss, thresholds.mc_band, thresholds.cka)


def rule(loss, mc, cka, train_loss, mc_band, cka_threshold) -> np.ndarray:
    """The phase rule on float arrays, thresholds included (all broadcast together): `classify` without its
    checks, for many threshold settings at once (`uncertainty.phase_stability`)."""
    loss, mc, cka = np.broadcast_arrays(loss, mc, cka, train_loss, mc_band, cka_threshold)[:3]
    fitted = loss < train_loss
    barrier = mc < -mc_band
    similar = cka >= cka_threshold
    labels = np.where(fitted,
                      np.where(barrier, "III", np.where(similar, "IV-B", "IV-A")),
                      np.where(barrier, "I", "II")).astype("<U4")
    # comparisons with NaN are False, so mark where the branch taken consulted a NaN
    unknown = np.isnan(loss) | np.isnan(mc) | (fitted & ~barrier & np.isnan(cka))
    labels[unknown] = UNKNOWN
    return labels


class CorrelationRow(NamedTuple):
    """One row of `correlation_table`: rank correlations of a metric with test accuracy within a scope."""

    metric: str
    scope: str  # "all" or a phase label
    n: int  # grid points with a finite metric and test accuracy in this scope
    spearman: float
    kendall: float  # tau-b (ties handled)


def _rank_correlations(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    # fewer than 3 points, or a constant side, carries no rank information
    if a.size < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan, math.nan
    return float(spearman(a, b)), float(kendall(a, b))


def ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, ties share their mean rank) along the last axis, as scipy.stats.rankdata."""
    a = np.asarray(a, float)
    order = np.argsort(a, axis=-1, kind="stable")
    sorted_a = np.take_along_axis(a, order, -1)
    position = np.broadcast_to(np.arange(1, a.shape[-1] + 1, dtype=float), a.shape)
    new = np.concatenate([np.ones(a.shape[:-1] + (1,), bool), sorted_a[..., 1:] != sorted_a[..., :-1]], -1)
    group = np.cumsum(new, -1) - 1  # the tie group of every sorted entry
    flat_group = (group + (np.arange(int(np.prod(a.shape[:-1]))).reshape(a.shape[:-1] + (1,)) * a.shape[-1]))
    sums = np.bincount(flat_group.ravel(), position.ravel(), minlength=a.size)
    counts = np.bincount(flat_group.ravel(), minlength=a.size)
    mean_rank = (sums / np.maximum(counts, 1))[flat_group]
    out = np.empty_like(a)
    np.put_along_axis(out, order, mean_rank, -1)
    return out


def spearman(a, b) -> np.ndarray:
    """Spearman's rank correlation over the last axis (ties by average ranks), batched."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(-1, keepdims=True), rb - rb.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ra * rb).sum(-1) / np.sqrt((ra ** 2).sum(-1) * (rb ** 2).sum(-1))


def kendall(a, b) -> np.ndarray:
    """Kendall's tau-b over the last axis (ties handled), all pairs at once, batched."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    i, j = np.triu_indices(a.shape[-1], 1)
    da, db = np.sign(a[..., i] - a[..., j]), np.sign(b[..., i] - b[..., j])
    with np.errstate(invalid="ignore", divide="ignore"):
        return (da * db).sum(-1) / np.sqrt((da != 0).sum(-1) * (db != 0).sum(-1))


def correlation_table(metrics: Mapping[str, Sequence[float]], test_acc, phases) -> list[CorrelationRow]:
    """Spearman and Kendall correlation of every metric with test accuracy, over all grid points and within each
    phase that occurs (in `PHASES` order; "?" points count only in "all"). The paper's point: pooled correlations
    can mislead; within a phase a metric may correlate differently.

    metrics: name -> (P,) values per grid point; test_acc: (P,); phases: (P,) labels from `classify`.
    Points where the metric or test accuracy is not finite are left out; scopes with < 3 points give NaN.
    """
    test_acc = _as_float_array("test_acc", test_acc)
    phases = np.asarray(phases).astype(str)
    if test_acc.ndim != 1 or phases.shape != test_acc.shape:
        raise LLJaxError(f"correlation_table: test_acc and phases must be 1-D of one length, "
                         f"got shapes {test_acc.shape} and {phases.shape}")
    scopes = ["all"] + [p for p in PHASES if np.any(phases == p)]
    rows = []
    for name, values in metrics.items():
        values = _as_float_array(f"metric {name!r}", values)
        if values.shape != test_acc.shape:
            raise LLJaxError(f"correlation_table: metric {name!r} has shape {values.shape}, "
                             f"test_acc has {test_acc.shape}")
        finite = np.isfinite(values) & np.isfinite(test_acc)
        for scope in scopes:
            chosen = finite & (True if scope == "all" else phases == scope)
            spearman, kendall = _rank_correlations(values[chosen], test_acc[chosen])
            rows.append(CorrelationRow(name, scope, int(chosen.sum()), spearman, kendall))
    return rows


def format_correlation_table(rows: Sequence[CorrelationRow], intervals: Mapping | None = None,
                             level: float = 0.95) -> str:
    """The rows of `correlation_table` as a Markdown table (NaN shown as "–"). With `intervals` ((metric,
    scope) -> (Spearman low, high, Kendall low, high), `uncertainty.correlation_intervals`), each value gets its
    interval and a '*' where the interval excludes zero."""
    fmt = lambda v: "–" if math.isnan(v) else f"{v:+.2f}"  # noqa: E731

    def cell(value, low=math.nan, high=math.nan):
        if math.isnan(low):
            return fmt(value)
        star = "*" if low > 0 or high < 0 else ""
        return f"{fmt(value)}{star} [{fmt(low)}, {fmt(high)}]"

    header = "| metric | scope | n | Spearman | Kendall |" if intervals is None else \
        f"| metric | scope | n | Spearman [{100 * level:g}% interval] | Kendall [{100 * level:g}% interval] |"
    lines = [header, "|---|---|---:|---:|---:|"]
    for r in rows:
        low = (intervals or {}).get((r.metric, r.scope), (math.nan,) * 4)
        lines.append(f"| {r.metric} | {r.scope} | {r.n} | {cell(r.spearman, *low[:2])} | {cell(r.kendall, *low[2:])} |")
    return "\n".join(lines)


# the paper's column holding the train error along the curve at t = 0, .25, .5, .75, 1 (space-separated, percent)
_PAPER_CURVE_COLUMN = "curve_tr_err_t0_t025_t05_t075_t1"


def load_paper_grid(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The paper's measured ResNet18/CIFAR-10 grid (one row per (batch_size, width) point, 5-seed means) as
    column name -> (P,) float64 array, empty cells NaN. Columns are as in the file (accuracies and mc_* in
    PERCENT of error); the curve column becomes (P, 5). Added: "mc" = mc_tr_err / 100, the fraction that
    `classify` expects.
    """
    try:
        with open(path, newline="") as f:
            records = list(csv.DictReader(f))
    except OSError as error:
        raise LLJaxError(f"cannot read the paper grid {os.fspath(path)!r}: {error.strerror}") from None
    if not records or "mc_tr_err" not in records[0]:
        raise LLJaxError(f"{os.fspath(path)!r} is not the paper grid CSV (no rows or no mc_tr_err column)")
    parse = lambda s: float(s) if s.strip() else math.nan  # noqa: E731
    grid = {}
    for column in records[0]:
        if column == _PAPER_CURVE_COLUMN:
            grid[column] = np.array([[parse(v) for v in r[column].split()] for r in records], dtype=np.float64)
        else:
            grid[column] = np.array([parse(r[column]) for r in records], dtype=np.float64)
    grid["mc"] = grid["mc_tr_err"] / 100.0
    return grid


# ------------------------------------------------------------------------------------------ Liu et al.'s phases

LIU_PHASES = ("comprehension", "grokking", "memorization", "confusion")


def liu_phases(train_steps, test_steps, budget, threshold: float = 1e3) -> np.ndarray:
    """Liu et al. (NeurIPS 2022, "Towards understanding grokking")'s phases of learning from the steps at which
    training and test accuracy first reached their threshold, per entry (arrays of one shape, or broadcastable):
    a run *reached* a threshold when its step is below `budget` (a run that never did holds the budget:
    lljax's `steps_to_fit` / `steps_to_generalise`; 99999 in Liu et al.'s files). Both reached: 'comprehension'
    if test - train steps < `threshold`, else 'grokking'; only training: 'memorization'; else 'confusion' (the
    rule of Liu et al.'s `simple_phase_diagram.ipynb`). NaN steps give "?"."""
    train = _as_float_array("train_steps", train_steps)
    test = _as_float_array("test_steps", test_steps)
    train, test, budget = np.broadcast_arrays(train, test, np.asarray(budget, float))
    fits, generalises = train < budget, test < budget
    labels = np.where(fits & generalises, np.where(test - train < threshold, "comprehension", "grokking"),
                      np.where(fits, "memorization", "confusion")).astype("<U13")
    labels[np.isnan(train) | np.isnan(test)] = UNKNOWN
    return labels


def majority(labels: Sequence[str]) -> str:
    """The most frequent label ("?" for none; a tie goes to the label first in `LIU_PHASES` order of the tied,
    then alphabetical)."""
    labels = [str(v) for v in labels if str(v) != UNKNOWN]
    if not labels:
        return UNKNOWN
    counts = {v: labels.count(v) for v in set(labels)}
    order = lambda v: (-counts[v], LIU_PHASES.index(v) if v in LIU_PHASES else len(LIU_PHASES), v)
    return min(counts, key=order)
