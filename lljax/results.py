"""Results tables (members.csv, pairs.csv, grid.csv), figures and the end-of-run summary.

Rows are assembled from the per-group metric arrays saved by the pipeline: every per-member (per-pair) metric
that is one number per member (pair) becomes a column; grid.csv holds, per grid point, the mean and standard
deviation over seeds of every column (diverged members excluded) and the number of diverged members.
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from lljax import checkpoint, ensemble, phases, plots

# Metrics drawn as heatmaps: (grid column, title, transform, centre of a diverging colour map or None).
FIGURES = (
    ("train_loss_mean", "training loss", None, None),
    ("train_acc_mean", "training accuracy", None, None),
    ("test_loss_mean", "test loss", None, None),
    ("test_acc_mean", "test accuracy", None, None),
    ("hessian_top_eig_mean", "log10 top Hessian eigenvalue", np.log10, None),
    ("hessian_trace_mean", "log10 Hessian trace", np.log10, None),
    ("mc_mean", "mode connectivity (training error; <0: barrier)", None, 0.0),
    ("mc_loss_mean", "mode connectivity (training loss)", None, 0.0),
    ("mc_test_mean", "mode connectivity (test error)", None, 0.0),
    ("barrier_linear_mean", "straight-line mode connectivity (training error)", None, 0.0),
    ("cka_softmax_mean", "CKA of softmax outputs", None, None),
    ("cka_logits_mean", "CKA of logits", None, None),
    ("l2_mean", "L2 distance between seeds", None, None),
)
PHASE_COLORS = ("#d95f02", "#fdb863", "#7570b3", "#b2abd2", "#1b9e77")  # I, II, III, IV-A, IV-B
# metrics correlated with test accuracy in the report (grid columns)
CORRELATED = ("train_loss_mean", "hessian_top_eig_mean", "hessian_trace_mean", "mc_mean", "barrier_linear_mean",
              "cka_softmax_mean", "l2_mean")


def _format(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)):
        return "nan" if math.isnan(value) else f"{float(value):.7g}"
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value)


def to_csv(rows: Sequence[dict]) -> str:
    """Rows of dicts as CSV text; the columns are the union of keys in first-seen order."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_format(row.get(c, "")) for c in columns])
    return buffer.getvalue()


def _scalar_columns(arrays: dict[str, np.ndarray], prefix: str, count: int) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: v for k, v in arrays.items()
            if k.startswith(prefix) and v.shape == (count,) and k not in ("pair/a", "pair/b")}


def member_rows(outcome) -> list[dict]:
    """One row per member: its knobs, seed, group and every scalar per-member metric."""
    rows = []
    for group, arrays in zip(outcome.groups, outcome.group_metrics):
        columns = _scalar_columns(arrays, "member/", len(group.members))
        for pos, index in enumerate(group.members):
            m = outcome.members[index]
            row = {k: getattr(m, k) for k in ensemble.KNOBS}
            row.update(seed=m.seed, group=group.index)
            row.update({k: v[pos] for k, v in columns.items()})
            rows.append(row)
    return rows


def pair_rows(outcome) -> list[dict]:
    """One row per pair of members at the same grid point: the point's knobs, both seeds, every pair metric."""
    rows = []
    for group, arrays in zip(outcome.groups, outcome.group_metrics):
        a, b = arrays["pair/a"], arrays["pair/b"]
        columns = _scalar_columns(arrays, "pair/", len(a))
        for p in range(len(a)):
            ma, mb = outcome.members[group.members[a[p]]], outcome.members[group.members[b[p]]]
            row = {k: getattr(ma, k) for k in ensemble.KNOBS}
            row.update(seed_a=ma.seed, seed_b=mb.seed, group=group.index)
            row.update({k: v[p] for k, v in columns.items()})
            rows.append(row)
    return rows


def grid_rows(members: Sequence[dict], pairs: Sequence[dict]) -> list[dict]:
    """One row per grid point: knobs, members, diverged, and mean/std over seeds of every metric."""
    skip = set(ensemble.KNOBS) | {"seed", "seed_a", "seed_b", "group", "diverged"}
    points: dict[tuple, dict] = {}
    for row in members:
        points.setdefault(tuple(row[k] for k in ensemble.KNOBS), {"members": [], "pairs": []})["members"].append(row)
    for row in pairs:
        points[tuple(row[k] for k in ensemble.KNOBS)]["pairs"].append(row)
    diverged_seeds = {(tuple(r[k] for k in ensemble.KNOBS), r["seed"]) for r in members if r.get("diverged")}
    out = []
    for point, entry in points.items():
        row = dict(zip(ensemble.KNOBS, point))
        row["members"] = len(entry["members"])
        row["diverged"] = len([r for r in entry["members"] if r.get("diverged")])
        kept_members = [r for r in entry["members"] if not r.get("diverged")]
        kept_pairs = [r for r in entry["pairs"] if (point, r["seed_a"]) not in diverged_seeds
                      and (point, r["seed_b"]) not in diverged_seeds]
        for source in (kept_members, kept_pairs):
            names = [k for k in (entry["members"] if source is kept_members else entry["pairs"])[:1][0]
                     if k not in skip] if source else []
            for name in names:
                values = np.asarray([r[name] for r in source], float)
                finite = values[np.isfinite(values)]
                row[f"{name}_mean"] = finite.mean() if finite.size else math.nan
                row[f"{name}_std"] = finite.std() if finite.size > 1 else math.nan
        out.append(row)
    return out


def choose_axes(knob_values: dict[str, Sequence], axes: Sequence[str] | None = None) -> tuple[str | None, str | None]:
    """The phase diagram's axes: the first swept load-like knob on x, the first swept temperature-like knob on
    y; with two swept knobs of one kind, both of that kind. `axes` overrides."""
    if axes:
        return tuple(axes) + (None,) * (2 - len(axes))
    swept = [k for k in ensemble.KNOBS if len(knob_values[k]) > 1]
    loads = [k for k in swept if k in ensemble.LOAD_KNOBS]
    temps = [k for k in swept if k in ensemble.TEMPERATURE_KNOBS]
    x = loads[0] if loads else (temps[1] if len(temps) > 1 else None)
    y = temps[0] if temps else (loads[1] if len(loads) > 1 else None)
    if x is None and y is not None:
        x, y = y, None
    return x, y


def facets(grid: Sequence[dict], knob_values: dict[str, Sequence], x: str | None, y: str | None):
    """Split grid rows by the values of every swept knob that is not an axis: yields (suffix, rows)."""
    others = [k for k in ensemble.KNOBS if len(knob_values[k]) > 1 and k not in (x, y)]
    by_value: dict[tuple, list] = {}
    for row in grid:
        by_value.setdefault(tuple(row[k] for k in others), []).append(row)
    for values, rows in by_value.items():
        yield "".join(f"__{k}={v:g}" if isinstance(v, float) else f"__{k}={v}" for k, v in zip(others, values)), rows


def grid_matrix(rows: Sequence[dict], column: str, x: str, y: str | None, x_values, y_values) -> np.ndarray:
    """(len(y_values), len(x_values)) array of a grid column (NaN where absent)."""
    matrix = np.full((len(y_values) if y else 1, len(x_values)), np.nan, dtype=object if column == "phase"
                     else float)
    for row in rows:
        i = y_values.index(row[y]) if y else 0
        matrix[i, x_values.index(row[x])] = row.get(column, np.nan)
    return matrix


def write_figures(grid: Sequence[dict], knob_values: dict[str, Sequence], out_dir: Path,
                  axes: Sequence[str] | None = None) -> list[Path]:
    """Heatmaps (or line plots, for one swept knob) of every metric in FIGURES present in the grid."""
    x, y = choose_axes(knob_values, axes)
    written = []
    if x is None:
        return written
    out_dir.mkdir(parents=True, exist_ok=True)
    x_values, y_values = list(knob_values[x]), (list(knob_values[y]) if y else None)
    for suffix, rows in facets(grid, knob_values, x, y):
        for column, title, transform, center in FIGURES:
            if column not in rows[0]:
                continue
            matrix = grid_matrix(rows, column, x, y, x_values, y_values)
            if transform is not None:
                with np.errstate(divide="ignore", invalid="ignore"):
                    matrix = transform(matrix)
            path = out_dir / f"{column.removesuffix('_mean')}{suffix}.png"
            if y:
                plots.heatmap(matrix, x_values, y_values, x, y, title + suffix.replace("__", "  "), path, center)
            else:
                plots.lines(x_values, {title: matrix[0]}, plots.KNOB_LABELS[x], title, title + suffix, path)
            written.append(path)
    return written


def add_phases(grid: Sequence[dict], thresholds: phases.Thresholds) -> None:
    """Set each grid row's 'phase' by `phases.classify` on its means ('?' where an input is missing)."""
    column = lambda name: [r.get(name, math.nan) for r in grid]
    labels = phases.classify(column("train_loss_mean"), column("mc_mean"), column("cka_softmax_mean"), thresholds)
    for row, label in zip(grid, labels):
        row["phase"] = str(label)


def arrays_by_point(outcome, kind: str, name: str) -> dict[tuple, list[np.ndarray]]:
    """The per-member (kind 'member') or per-pair ('pair') array `name` of every grid point, as a list over its
    members (pairs), diverged members (pairs with one) left out."""
    out: dict[tuple, list[np.ndarray]] = {}
    for group, arrays in zip(outcome.groups, outcome.group_metrics):
        if f"{kind}/{name}" not in arrays:
            continue
        values, diverged = arrays[f"{kind}/{name}"], arrays["member/diverged"]
        owners = [(p,) for p in range(len(group.members))] if kind == "member" else \
            list(zip(arrays["pair/a"], arrays["pair/b"]))
        for i, owner in enumerate(owners):
            if not any(diverged[p] for p in owner):
                out.setdefault(outcome.members[group.members[owner[0]]].point, []).append(values[i])
    return out


def _representative(values: list, most: int) -> list:
    """At most `most` values spread evenly over the list, the ends included."""
    if len(values) <= most:
        return values
    return [values[i] for i in np.unique(np.linspace(0, len(values) - 1, most).round().astype(int))]


def _point(rows_knobs: dict, x: str, xv, y: str | None, yv) -> tuple:
    knobs = {**rows_knobs, x: xv, **({y: yv} if y else {})}
    return tuple(knobs[k] for k in ensemble.KNOBS)


def write_panel_figures(outcome, grid: Sequence[dict], out_dir: Path) -> list[Path]:
    """Spectral densities and the error along the curves, one panel per grid point of a representative set
    (at most 6 x 4 points per facet)."""
    from lljax import curves, hessian

    knob_values = outcome.config.knob_values()
    x, y = choose_axes(knob_values)
    if x is None:
        return []
    nodes, weights = arrays_by_point(outcome, "member", "hessian_density_nodes"), \
        arrays_by_point(outcome, "member", "hessian_density_weights")
    along = {name: arrays_by_point(outcome, "pair", name)
             for name in ("curve_train_err", "line_train_err", "curve_test_err")}
    x_values = _representative(list(knob_values[x]), 6)
    y_values = _representative(list(knob_values[y]), 4) if y else [None]
    written = []
    for suffix, rows in facets(grid, knob_values, x, y):
        fixed = {k: rows[0][k] for k in ensemble.KNOBS}
        points = [[_point(fixed, x, xv, y, yv) for xv in x_values] for yv in y_values]
        if any(nodes.get(p) for row in points for p in row):
            panels = [[[] for _ in x_values] for _ in y_values]
            for i, row in enumerate(points):
                for j, p in enumerate(row):
                    if not nodes.get(p) or np.asarray(nodes[p]).size == 0:
                        continue
                    n = np.concatenate([a.ravel() for a in nodes[p]])
                    w = np.concatenate([a.ravel() for a in weights[p]])
                    w = w / len(nodes[p]) / max(1, nodes[p][0].shape[0])  # mean over members and runs: mass 1
                    finite = n[np.isfinite(n)]
                    low, high = finite.min(), finite.max()
                    pad = 0.05 * (high - low) + 1e-6
                    grid_t = np.linspace(low - pad, high + pad, 400)
                    density = np.asarray(hessian.smooth_density(n, w, grid_t, (high - low + 1e-6) / 100))
                    panels[i][j] = [(grid_t, np.maximum(density, 1e-8), "density", {"lw": 1})]
            path = out_dir / f"hessian_density{suffix}.png"
            plots.panels(panels, x_values, y_values if y else [""], x, y or "", "Hessian eigenvalue", "density",
                         "Hessian spectral density (SLQ, smoothed; mean over seeds)" + suffix.replace("__", "  "),
                         path, logy=True)
            written.append(path)
        if any(along["curve_train_err"].get(p) for row in points for p in row):
            panels = [[[] for _ in x_values] for _ in y_values]
            for i, row in enumerate(points):
                for j, p in enumerate(row):
                    if not along["curve_train_err"].get(p):
                        continue
                    mean = {k: np.mean(v[p], axis=0) for k, v in along.items()}
                    ts = curves.default_ts(len(mean["curve_train_err"]))
                    panels[i][j] = [(ts, mean["curve_train_err"], "Bezier curve, training error", {"lw": 1.2}),
                                    (ts, mean["curve_test_err"], "Bezier curve, test error", {"lw": 1, "ls": ":"}),
                                    (ts, mean["line_train_err"], "straight line, training error",
                                     {"lw": 1, "ls": "--"})]
            path = out_dir / f"curves_along_t{suffix}.png"
            plots.panels(panels, x_values, y_values if y else [""], x, y or "", "t", "error",
                         "error along the path between two seeds (mean over pairs)" + suffix.replace("__", "  "), path)
            written.append(path)
    return written


def write_phase_figures(grid: Sequence[dict], knob_values: dict[str, Sequence], out_dir: Path) -> list[Path]:
    """The phase map (phases with boundaries, mean test accuracy in each cell) and double-descent curves (test
    error against the load knob, one line per temperature)."""
    x, y = choose_axes(knob_values)
    if x is None:
        return []
    x_values, y_values = list(knob_values[x]), (list(knob_values[y]) if y else None)
    written = []
    for suffix, rows in facets(grid, knob_values, x, y):
        labels = grid_matrix(rows, "phase", x, y, x_values, y_values)
        accuracy = grid_matrix(rows, "test_acc_mean", x, y, x_values, y_values)
        path = out_dir / f"phase_map{suffix}.png"
        plots.category_map(labels, phases.PHASES, PHASE_COLORS, x_values, y_values or [""], x, y or "",
                           "phases (cell: phase and mean test accuracy)" + suffix.replace("__", "  "), path,
                           overlay_YX=accuracy)
        written.append(path)
        error = 1 - accuracy
        spread = grid_matrix(rows, "test_acc_std", x, y, x_values, y_values)
        series = {(f"{y} = {v:g}" if y else "test error"): error[i] for i, v in enumerate(y_values or [0])}
        errors = {(f"{y} = {v:g}" if y else "test error"): spread[i] for i, v in enumerate(y_values or [0])}
        path = out_dir / f"double_descent{suffix}.png"
        plots.lines(x_values, series, plots.KNOB_LABELS[x], "test error", "test error vs " +
                    plots.KNOB_LABELS[x] + suffix.replace("__", "  "), path, errors=errors)
        written.append(path)
    return written


def curve_rows(outcome) -> list[dict]:
    """One row per (pair, t): the point's knobs, both seeds, t and the losses and errors along the fitted
    curve and the straight line."""
    from lljax import curves

    names = ("curve_train_err", "curve_train_loss", "curve_test_err", "curve_test_loss", "line_train_err",
             "line_train_loss", "line_test_err")
    rows = []
    for group, arrays in zip(outcome.groups, outcome.group_metrics):
        if "pair/curve_train_err" not in arrays:
            continue
        ts = curves.default_ts(arrays["pair/curve_train_err"].shape[1])
        for p, (a, b) in enumerate(zip(arrays["pair/a"], arrays["pair/b"])):
            ma, mb = outcome.members[group.members[a]], outcome.members[group.members[b]]
            for k, t in enumerate(ts):
                row = {knob: getattr(ma, knob) for knob in ensemble.KNOBS}
                row.update(seed_a=ma.seed, seed_b=mb.seed, t=float(t))
                row.update({name: arrays[f"pair/{name}"][p, k] for name in names})
                rows.append(row)
    return rows


def _fmt_knobs(row: dict, knobs: Sequence[str]) -> str:
    return ", ".join(f"{k}={row[k]:g}" if isinstance(row[k], float) else f"{k}={row[k]}" for k in knobs)


def _best(grid: Sequence[dict]) -> dict:
    return max(grid, key=lambda r: -1 if math.isnan(r.get("test_acc_mean", math.nan)) else r["test_acc_mean"])


def phase_table(rows: Sequence[dict], x: str, y: str | None, knob_values: dict) -> list[str]:
    """Markdown table of the grid: rows y (largest first), columns x, cells 'phase (test accuracy)'."""
    x_values, y_values = list(knob_values[x]), (list(knob_values[y]) if y else [None])
    labels = grid_matrix(rows, "phase", x, y, x_values, y_values if y else None)
    accuracy = grid_matrix(rows, "test_acc_mean", x, y, x_values, y_values if y else None)
    lines = [f"| {y or ''} \\ {x} | " + " | ".join(f"{v:g}" for v in x_values) + " |",
             "|---|" + "---|" * len(x_values)]
    for i in reversed(range(len(y_values))):
        cells = [f"{labels[i, j]} ({accuracy[i, j]:.3f})" for j in range(len(x_values))]
        lines.append(f"| {y_values[i]:g} | " + " | ".join(cells) + " |" if y else "| | " + " | ".join(cells) + " |")
    return lines


def report(outcome, grid: Sequence[dict], figures: Sequence[Path], out_dir: Path) -> str:
    """DIR/report.md: the run, the phase map, where the best test accuracy lies, the correlation table, the grid
    and every figure."""
    config = outcome.config
    knob_values = config.knob_values()
    swept = [k for k in ensemble.KNOBS if len(knob_values[k]) > 1]
    x, y = choose_axes(knob_values)
    t = config.thresholds
    best = _best(grid)
    counts = {p: sum(r["phase"] == p for r in grid) for p in (*phases.PHASES, phases.UNKNOWN)}
    lines = [f"# lljax report: {config.model} on {config.dataset}", "",
             f"{len(outcome.members)} members = {len(grid)} grid points x {config.seeds} seeds, "
             f"{len(outcome.groups)} compiled groups, {config.epochs} epochs ({config.schedule} schedule); "
             f"run time {outcome.seconds:.0f} s. Swept: " +
             "; ".join(f"{k} = {', '.join(f'{v:g}' for v in knob_values[k])}" for k in swept) +
             f". Metrics: {', '.join(config.metrics)}. Configuration: [config.json](config.json).", "",
             "## Phases", "",
             f"Rule (lljax.phases): fitted when mean training loss < {t.train_loss:g} nats; barrier when "
             f"mc < -{t.mc_band:g} (mc on training error, a fraction); fitted points: III with a barrier, else "
             f"IV-B when CKA of softmax outputs >= {t.cka:g}, else IV-A; not fitted: I with a barrier, else II. "
             "'?' = an input the rule needs was not measured.", "",
             "Counts: " + ", ".join(f"{p}: {n}" for p, n in counts.items() if n), ""]
    if x is not None:
        for suffix, rows in facets(grid, knob_values, x, y):
            if suffix:
                lines += [f"**{suffix.replace('__', ' ').strip()}**", ""]
            lines += phase_table(rows, x, y, knob_values) + [""]
            lines += [f"![phase map](figures/phase_map{suffix}.png) ![test accuracy](figures/test_acc{suffix}.png)",
                      ""]
    lines += ["## Best test accuracy", "",
              f"{best.get('test_acc_mean', math.nan):.4f} (std {best.get('test_acc_std', math.nan):.4f}) at "
              f"{_fmt_knobs(best, swept) or 'the only point'}, phase **{best.get('phase', '?')}**.", ""]
    by_phase = {p: [r["test_acc_mean"] for r in grid if r["phase"] == p and not math.isnan(r["test_acc_mean"])]
                for p in phases.PHASES}
    lines += ["| phase | points | mean test accuracy | best |", "|---|---:|---:|---:|"]
    lines += [f"| {p} | {len(v)} | {np.mean(v):.4f} | {max(v):.4f} |" for p, v in by_phase.items() if v] + [""]
    metrics = {name.removesuffix("_mean"): [r.get(name, math.nan) for r in grid] for name in CORRELATED
               if any(name in r for r in grid)}
    table = phases.correlation_table(metrics, [r["test_acc_mean"] for r in grid], [r["phase"] for r in grid])
    lines += ["## Correlation with test accuracy", "",
              "Rank correlation over grid points, pooled and within each phase (pooled correlations can mislead: "
              "Yang et al. 2021).", "", phases.format_correlation_table(table), ""]
    columns = [k for k in swept] + ["phase"] + [c for c in ("train_loss_mean", "test_acc_mean",
                                                            "hessian_top_eig_mean", "hessian_trace_mean", "mc_mean",
                                                            "barrier_linear_mean", "cka_softmax_mean", "l2_mean")
                                                if any(c in r for r in grid)]
    lines += ["## Grid", "", "Means over seeds (full table with spreads: [grid.csv](grid.csv); per model: "
              "[members.csv](members.csv); per pair: [pairs.csv](pairs.csv); along the curves: "
              "[curves.csv](curves.csv)).", "",
              "| " + " | ".join(c.removesuffix("_mean") for c in columns) + " |", "|" + "---|" * len(columns)]
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in grid] + [""]
    lines += ["## Figures", ""] + [f"- [{p.stem}](figures/{p.name})" for p in figures] + [""]
    text = "\n".join(lines)
    checkpoint.write_atomic(out_dir / "report.md", text)
    return text


def summary(outcome, grid: Sequence[dict], out_dir: Path) -> str:
    """The one-screen summary printed at the end of a run."""
    config = outcome.config
    knob_values = config.knob_values()
    x, y = choose_axes(knob_values)
    lines = [f"lljax: {len(outcome.members)} members ({len(grid)} grid points x {config.seeds} seeds) in "
             f"{len(outcome.groups)} compiled groups, {config.model} on {config.dataset}, {config.epochs} epochs, "
             f"{outcome.seconds:.0f} s"]
    diverged = sum(r["diverged"] for r in grid)
    if diverged:
        lines.append(f"diverged members: {diverged} (excluded from means)")
    best = _best(grid)
    swept = [k for k in ensemble.KNOBS if len(knob_values[k]) > 1]
    lines.append(f"best mean test accuracy {best.get('test_acc_mean', math.nan):.4f} at "
                 f"{_fmt_knobs(best, swept) or 'the only point'} (phase {best.get('phase', '?')})")
    if x is not None:
        for suffix, rows in facets(grid, knob_values, x, y):
            lines.append(f"phase (mean test accuracy){suffix.replace('__', ' ')}")
            lines += [line.replace("|---", "").strip("|") for line in phase_table(rows, x, y, knob_values)
                      if not line.startswith("|---")]
    lines.append(f"results in {out_dir}/: report.md config.json members.csv pairs.csv grid.csv curves.csv figures/")
    return "\n".join(lines)


def write_all(outcome, out_dir: str | os.PathLike) -> dict[str, list]:
    """Write members.csv, pairs.csv, grid.csv, curves.csv, figures/ and report.md into the run folder; print
    the summary."""
    out_dir = Path(out_dir)
    members, pairs = member_rows(outcome), pair_rows(outcome)
    grid = grid_rows(members, pairs)
    add_phases(grid, outcome.config.thresholds)
    checkpoint.write_atomic(out_dir / "members.csv", to_csv(members))
    checkpoint.write_atomic(out_dir / "pairs.csv", to_csv(pairs) if pairs else
                            ",".join(list(ensemble.KNOBS) + ["seed_a", "seed_b", "group"]) + "\n")
    checkpoint.write_atomic(out_dir / "grid.csv", to_csv(grid))
    checkpoint.write_atomic(out_dir / "curves.csv", to_csv(curve_rows(outcome)))
    figures_dir = out_dir / "figures"
    figures = write_figures(grid, outcome.config.knob_values(), figures_dir)
    figures += write_phase_figures(grid, outcome.config.knob_values(), figures_dir)
    figures += write_panel_figures(outcome, grid, figures_dir)
    report(outcome, grid, figures, out_dir)
    print(summary(outcome, grid, out_dir))
    return {"members": members, "pairs": pairs, "grid": grid}
