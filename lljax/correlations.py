"""The correlation harness: how well a metric tracks test accuracy and the generalisation gap, judged the way of
Jiang et al. 2020 ("Fantastic generalization measures and where to find them", sections 2-3) and Yang et al. 2023
(box plots of the per-slice rank correlation). Host-side numpy on plain tables; no retraining.

The unit is the grid point (the mean over its seeds, as in grid.csv and the report's pooled table): seeds are a
nuisance, averaged out, never a knob; pair metrics (mc, CKA, L2) have no per-member value, so the point is the
one unit every metric has. For a metric m and a target y (test accuracy, or the gap = train - test accuracy;
without an error metric the test loss and the gap = test - train loss), over the points where both are finite:

- pooled: Spearman and Kendall tau-b over every point (NaN below 3 points or with a constant side, as
  `phases.correlation_table`), with percentile intervals from resampling the points
  (`uncertainty.correlation_intervals`, a random stream per metric and target). The slice medians, psi, Psi and
  the time-wise value have no interval: a knob has a handful of slices, too few to resample.
- slices of a swept knob i: the groups of points that share the value of every other knob and differ only in
  knob i. Per slice with at least 2 points and neither side constant: Spearman and Kendall tau-b; other slices
  are NaN and left out. The median and interquartile range (q75 - q25) of the slices' Spearman: the paper's box.
- psi_i = the mean over knob i's slices of Kendall's tau; the granulated Kendall Psi = the mean over knobs of
  psi_i (knobs without a usable slice left out). Jiang et al.'s tau is over models without ties; tau-b here
  equals it then and handles ties.
- time-wise Spearman: per grid point, Spearman over the tracked epochs (`lljax.tracking`) between the metric's
  and the target's seed means at each epoch (>= 2 epochs with both finite, neither constant); the median over
  points. Only in tracked runs.
- Simpson flag: sign(pooled Spearman) != sign(median slice Spearman) for some swept knob (both non-zero):
  pooling across knobs reverses what holding the others fixed shows; `simpson_knobs` names those knobs.

Outputs (`write`): correlations.csv (one row per metric and target; columns in `correlation_table`), the figure
figures/slice_correlations.png, and the report section `report_lines`.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from lljax import figures, phases, store, tables, uncertainty
from lljax import grid as grids
from lljax.errors import LLJaxError


def _array(name: str, values) -> np.ndarray:
    try:
        out = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise LLJaxError(f"{name} must be numeric: {error}") from None
    if out.ndim != 1:
        raise LLJaxError(f"{name} must be 1-D, got shape {out.shape}")
    return out


def _checked(knobs: Mapping[str, Sequence], values, target) -> tuple[dict, np.ndarray, np.ndarray]:
    values, target = _array("values", values), _array("target", target)
    if values.shape != target.shape:
        raise LLJaxError(f"values and target must have one length, got {values.size} and {target.size}")
    columns = {k: list(v) for k, v in knobs.items()}
    for name, column in columns.items():
        if len(column) != values.size:
            raise LLJaxError(f"knob column {name!r} has {len(column)} entries, the metric {values.size}")
    return columns, values, target


def _pair(a: np.ndarray, b: np.ndarray, least: int) -> tuple[float, float]:
    """(Spearman, Kendall tau-b) of two finite 1-D arrays; NaN below `least` entries or with a constant side."""
    if a.size < least or np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan, math.nan
    return float(phases.spearman(a, b)), float(phases.kendall(a, b))


@dataclasses.dataclass(frozen=True)
class Slices:
    """The slices of one knob: `keys[s]` the other knobs' values of slice s, `sizes[s]` its usable points (both
    sides finite), `spearman[s]` and `kendall[s]` (NaN where the slice is left out)."""

    knob: str
    keys: list
    sizes: np.ndarray
    spearman: np.ndarray
    kendall: np.ndarray

    @property
    def used(self) -> int:
        """Slices with a defined correlation."""
        return int(np.isfinite(self.spearman).sum())

    def median_iqr(self) -> tuple[float, float]:
        """The median and the interquartile range (q75 - q25) of the slices' Spearman (NaN without slices)."""
        s = self.spearman[np.isfinite(self.spearman)]
        if not s.size:
            return math.nan, math.nan
        q25, q50, q75 = np.quantile(s, [0.25, 0.5, 0.75])
        return float(q50), float(q75 - q25)

    @property
    def psi(self) -> float:
        """Jiang et al.'s psi_i: the mean of the slices' Kendall tau (NaN without slices)."""
        k = self.kendall[np.isfinite(self.kendall)]
        return float(k.mean()) if k.size else math.nan


def slice_correlations(knobs: Mapping[str, Sequence], values, target, knob: str) -> Slices:
    """The slices of `knob`: the points (rows of the table) grouped by the values of every other column of
    `knobs` (name -> (P,) values of any hashable type); per slice Spearman and Kendall tau-b between `values`
    (P,) and `target` (P,) over its points where both are finite (module docstring). Slices in order of first
    appearance."""
    columns, values, target = _checked(knobs, values, target)
    if knob not in columns:
        raise LLJaxError(f"slice_correlations: {knob!r} is not a knob column ({', '.join(columns) or 'none'})")
    others = [k for k in columns if k != knob]
    groups: dict[tuple, list[int]] = {}
    for p in range(values.size):
        groups.setdefault(tuple(columns[k][p] for k in others), []).append(p)
    finite = np.isfinite(values) & np.isfinite(target)
    sizes, spearman, kendall = [], [], []
    for members in groups.values():
        chosen = np.asarray([p for p in members if finite[p]], int)
        sizes.append(chosen.size)
        s, k = _pair(values[chosen], target[chosen], 2)
        spearman.append(s)
        kendall.append(k)
    return Slices(knob, [dict(zip(others, key)) for key in groups], np.asarray(sizes, int),
                  np.asarray(spearman, float), np.asarray(kendall, float))


def granulated_kendall(knobs: Mapping[str, Sequence], values, target, over: Sequence[str] | None = None
                       ) -> tuple[float, dict[str, float]]:
    """(Psi, {knob: psi_i}): Jiang et al.'s granulated Kendall over the knobs `over` (default every column of
    `knobs`) and each knob's mean slice Kendall; a knob without a usable slice has psi NaN and is left out of Psi
    (NaN when every knob is)."""
    over = list(knobs) if over is None else list(over)
    psi = {k: slice_correlations(knobs, values, target, k).psi for k in over}
    finite = [v for v in psi.values() if math.isfinite(v)]
    return (float(np.mean(finite)) if finite else math.nan), psi


def pooled(values, target) -> tuple[float, float]:
    """(Spearman, Kendall tau-b) over every point where both are finite; NaN below 3 points or with a constant
    side (as the report's pooled table)."""
    values, target = _array("values", values), _array("target", target)
    if values.shape != target.shape:
        raise LLJaxError(f"values and target must have one length, got {values.size} and {target.size}")
    finite = np.isfinite(values) & np.isfinite(target)
    return _pair(values[finite], target[finite], 3)


def timewise_spearman(values_EP, target_EP) -> float:
    """The median over points of each point's Spearman along epochs: values_EP, target_EP (E, P) the metric and
    the target at every tracked epoch (rows) and point (columns). A point needs >= 2 epochs with both finite and
    neither side constant; NaN when no point has."""
    a, b = np.asarray(values_EP, float), np.asarray(target_EP, float)
    if a.ndim != 2 or a.shape != b.shape:
        raise LLJaxError(f"timewise_spearman: values and target must be (epochs, points) of one shape, got "
                         f"{a.shape} and {b.shape}")
    rho = []
    for p in range(a.shape[1]):
        finite = np.isfinite(a[:, p]) & np.isfinite(b[:, p])
        rho.append(_pair(a[finite, p], b[finite, p], 2)[0])
    rho = np.asarray(rho, float)
    rho = rho[np.isfinite(rho)]
    return float(np.median(rho)) if rho.size else math.nan


def simpson(pooled_spearman: float, medians: Mapping[str, float]) -> list[str]:
    """The knobs whose median slice Spearman has the sign opposite to the pooled Spearman (both non-zero and
    finite): where pooling reverses the within-slice relation."""
    if not math.isfinite(pooled_spearman) or pooled_spearman == 0:
        return []
    return [k for k, m in medians.items() if math.isfinite(m) and m != 0 and np.sign(m) != np.sign(pooled_spearman)]


def correlation_table(knobs: Mapping[str, Sequence], metrics: Mapping[str, Sequence[float]],
                      targets: Mapping[str, Sequence[float]], intervals: Mapping | None = None,
                      timewise: Mapping | None = None) -> list[dict]:
    """correlations.csv's rows, one per metric and target (metric-major): metric, target, points (both finite),
    pooled_spearman, pooled_spearman_lo, pooled_spearman_hi, pooled_kendall, pooled_kendall_lo,
    pooled_kendall_hi; for every knob k of `knobs`: slices_<k> (usable slices), slice_spearman_median_<k>,
    slice_spearman_iqr_<k>, psi_<k>; granulated_kendall; timewise_spearman (only with `timewise`); simpson,
    simpson_knobs ('; '-joined).

    knobs: the swept knobs, name -> (P,) values; metrics, targets: name -> (P,) floats. intervals: (metric,
    target) -> (Spearman low, high, Kendall low, high), NaN where missing. timewise: (metric, target) -> the
    time-wise Spearman."""
    rows = []
    for metric, values in metrics.items():
        for target_name, target in targets.items():
            columns, v, t = _checked(knobs, values, target)
            rho, tau = pooled(v, t)
            low = (intervals or {}).get((metric, target_name), (math.nan,) * 4)
            row = {"metric": metric, "target": target_name, "points": int((np.isfinite(v) & np.isfinite(t)).sum()),
                   "pooled_spearman": rho, "pooled_spearman_lo": low[0], "pooled_spearman_hi": low[1],
                   "pooled_kendall": tau, "pooled_kendall_lo": low[2], "pooled_kendall_hi": low[3]}
            medians, psis = {}, {}
            for knob in columns:
                s = slice_correlations(columns, v, t, knob)
                medians[knob], iqr = s.median_iqr()
                psis[knob] = s.psi
                row.update({f"slices_{knob}": s.used, f"slice_spearman_median_{knob}": medians[knob],
                            f"slice_spearman_iqr_{knob}": iqr, f"psi_{knob}": psis[knob]})
            finite = [p for p in psis.values() if math.isfinite(p)]
            row["granulated_kendall"] = float(np.mean(finite)) if finite else math.nan
            if timewise is not None:
                row["timewise_spearman"] = timewise.get((metric, target_name), math.nan)
            flagged = simpson(rho, medians)
            row["simpson"], row["simpson_knobs"] = bool(flagged), "; ".join(flagged)
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ on a run

@dataclasses.dataclass
class Harness:
    """A run's harness: correlations.csv's rows, the swept knobs, and per (metric, target, knob) the slices'
    Spearman (the figure's boxes)."""

    rows: list[dict]
    knobs: list[str]
    boxes: dict
    targets: list[str]


def targets_of(results, rows: Sequence[dict], suffix: str = "_mean") -> dict[str, list[float]]:
    """The targets of grid rows: test accuracy and the gap train - test accuracy; without an error metric the
    test loss and the gap test - train loss."""
    get = lambda row, name: float(row.get(f"{name}{suffix}", math.nan))  # noqa: E731
    if results.error_metric:
        return {"test_acc": [get(r, "test_acc") for r in rows],
                "gap": [get(r, "train_acc") - get(r, "test_acc") for r in rows]}
    return {"test_loss": [get(r, "test_loss") for r in rows],
            "gap": [get(r, "test_loss") - get(r, "train_loss") for r in rows]}


def _timewise(results, trajectories, metrics: Sequence[str]) -> dict | None:
    if trajectories is None:
        return None
    epochs = list(trajectories.grids)
    keys = [grids.point_key(r) for r in trajectories.grids[epochs[-1]]]
    by_epoch = [{grids.point_key(r): r for r in trajectories.grids[e]} for e in epochs]
    rows_EP = [[rows.get(k, {}) for k in keys] for rows in by_epoch]
    targets = [targets_of(results, rows) for rows in rows_EP]
    out = {}
    for metric in metrics:
        values = np.asarray([[float(r.get(f"{metric}_mean", math.nan)) for r in rows] for rows in rows_EP])
        for name in targets[0]:
            target = np.asarray([t[name] for t in targets], float)
            out[(metric, name)] = timewise_spearman(values, target)
    return out


def of_run(results, grid: Sequence[dict], trajectories=None) -> Harness | None:
    """The harness on a run's grid rows (and tracked epochs): None with no swept knob or no correlated column."""
    knobs = grids.swept(results.knob_values)
    metrics = {name: [float(r.get(f"{name}_mean", math.nan)) for r in grid] for name in results.correlated
               if any(f"{name}_mean" in r for r in grid)}
    if not knobs or not metrics or len(grid) < 2:
        return None
    columns = {k: [r[k] for r in grid] for k in knobs}
    targets = targets_of(results, grid)
    u = results.config.uncertainty
    intervals = {}
    for (metric, values), (name, target) in itertools.product(metrics.items(), targets.items()):
        # a stream per metric and target: adding a family never moves another metric's interval
        rng = uncertainty.generator(results.config.seed, "correlation_harness", metric, name)
        found = uncertainty.correlation_intervals({metric: values}, target, ["?"] * len(grid), rng, u.resamples,
                                                  u.level)
        intervals[(metric, name)] = found[(metric, "all")]
    tracked = [m for m in metrics if trajectories is not None and
               all(any(f"{m}_mean" in r for r in rows) for rows in trajectories.grids.values())]
    timewise = _timewise(results, trajectories, tracked)
    rows = correlation_table(columns, metrics, targets, intervals, timewise)
    boxes = {(metric, name, knob): slice_correlations(columns, metrics[metric], target, knob).spearman
             for metric in metrics for name, target in targets.items() for knob in knobs}
    return Harness(rows, knobs, boxes, list(targets))


def to_csv(harness: Harness) -> str:
    return tables.to_csv(harness.rows)


def write(results, harness: Harness | None, out_dir: Path) -> list[Path]:
    """correlations.csv and figures/slice_correlations.png in the run folder; the figure's path ([] without a
    harness)."""
    if harness is None:
        return []
    path = Path(out_dir) / "figures" / "slice_correlations.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    store.write_atomic(Path(out_dir) / "correlations.csv", to_csv(harness))
    pooled_rho = {(r["metric"], r["target"]): r["pooled_spearman"] for r in harness.rows}
    metrics = list(dict.fromkeys(r["metric"] for r in harness.rows))
    panels = [(target, {m: {k: harness.boxes[(m, target, k)] for k in harness.knobs} for m in metrics},
               {m: pooled_rho[(m, target)] for m in metrics}) for target in harness.targets]
    figures.slice_boxes(panels, harness.knobs, f"Spearman per one-knob slice (Jiang et al. 2020)\n{results.model} "
                        f"on {results.dataset}", path)
    return [path]


TARGET_NAMES = {"test_acc": "test accuracy", "test_loss": "test loss", "gap": "generalisation gap"}


def report_lines(results, harness: Harness | None) -> list[str]:
    """The report's section: per metric and target, the pooled Spearman with its interval, each knob's median
    slice Spearman (IQR, usable slices), the granulated Kendall, the time-wise Spearman and the Simpson flag."""
    if harness is None:
        return []
    u = results.config.uncertainty
    gap = "train - test accuracy" if results.error_metric else "test - train loss"
    timed = any("timewise_spearman" in r for r in harness.rows)
    fmt = lambda v: "–" if not math.isfinite(v) else f"{v:+.2f}"  # noqa: E731
    lines = ["## Correlations by one-knob slices", "",
             "Jiang et al. 2020's way of judging a metric, over grid points (seed means): for each swept knob, the "
             "slices are the points that share every other knob; per slice (>= 2 points) the Spearman correlation "
             "of the metric with the target. Cells: the median over the knob's slices (interquartile range; usable "
             "slices). Psi: granulated Kendall, the mean over knobs of the mean slice Kendall. "
             f"Pooled: over all points, with a {100 * u.level:g}% percentile interval from resampling points. "
             + ("Time-wise: the median over points of the Spearman along the tracked epochs. " if timed else "") +
             "Simpson: the pooled sign and a knob's median slice sign differ (the knobs named). "
             f"Targets: {TARGET_NAMES.get(harness.targets[0])}, and the gap = {gap}. All in "
             "[correlations.csv](correlations.csv).", "",
             "| metric | target | pooled Spearman [interval] | " + " | ".join(harness.knobs) + " | Psi | " +
             ("time-wise | " if timed else "") + "Simpson |",
             "|---|---|---:|" + "---:|" * len(harness.knobs) + "---:|" + ("---:|" if timed else "") + "---|"]
    for r in harness.rows:
        knob_cells = [f"{fmt(r[f'slice_spearman_median_{k}'])} ({abs(r[f'slice_spearman_iqr_{k}']):.2f}; "
                      f"{r[f'slices_{k}']})" if r[f"slices_{k}"] else "–" for k in harness.knobs]
        lines.append(f"| {r['metric']} | {r['target']} | {fmt(r['pooled_spearman'])} [{fmt(r['pooled_spearman_lo'])}, "
                     f"{fmt(r['pooled_spearman_hi'])}] | " + " | ".join(knob_cells) +
                     f" | {fmt(r['granulated_kendall'])} | " +
                     (f"{fmt(r.get('timewise_spearman', math.nan))} | " if timed else "") +
                     (f"yes ({r['simpson_knobs']})" if r["simpson"] else "") + " |")
    lines += ["", "![Spearman per slice](figures/slice_correlations.png)", ""]
    return lines
