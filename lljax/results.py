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

from lljax import checkpoint, ensemble, plots

# Metrics drawn as heatmaps: (grid column, title, transform, centre of a diverging colour map or None).
FIGURES = (
    ("train_loss_mean", "training loss", None, None),
    ("train_acc_mean", "training accuracy", None, None),
    ("test_loss_mean", "test loss", None, None),
    ("test_acc_mean", "test accuracy", None, None),
    ("cka_softmax_mean", "CKA of softmax outputs", None, None),
    ("l2_mean", "L2 distance between seeds", None, None),
)


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


def summary(outcome, grid: Sequence[dict], out_dir: Path) -> str:
    """The one-screen summary printed at the end of a run."""
    config = outcome.config
    x, y = choose_axes(config.knob_values())
    lines = [f"lljax: {len(outcome.members)} members ({len(grid)} grid points x {config.seeds} seeds) in "
             f"{len(outcome.groups)} compiled groups, {config.model} on {config.dataset}, {config.epochs} epochs, "
             f"{outcome.seconds:.0f} s"]
    diverged = sum(r["diverged"] for r in grid)
    if diverged:
        lines.append(f"diverged members: {diverged} (excluded from means)")
    best = max(grid, key=lambda r: -1 if math.isnan(r.get("test_acc_mean", math.nan)) else r["test_acc_mean"])
    knobs = ", ".join(f"{k}={best[k]:g}" if isinstance(best[k], float) else f"{k}={best[k]}"
                      for k in ensemble.KNOBS if len(config.knob_values()[k]) > 1)
    lines.append(f"best mean test accuracy {best.get('test_acc_mean', math.nan):.4f} at {knobs or 'the only point'}")
    if x is not None and y is not None:
        x_values, y_values = list(config.knob_values()[x]), list(config.knob_values()[y])
        for suffix, rows in facets(grid, config.knob_values(), x, y):
            matrix = grid_matrix(rows, "test_acc_mean", x, y, x_values, y_values)
            lines.append(f"mean test accuracy{suffix.replace('__', ' ')} (rows: {y}, columns: {x})")
            lines.append(f"{y:>12} | " + " ".join(f"{v:>7g}" for v in x_values))
            for i, yv in reversed(list(enumerate(y_values))):
                lines.append(f"{yv:>12g} | " + " ".join(f"{v:7.3f}" for v in matrix[i]))
    lines.append(f"results in {out_dir}/: config.json members.csv pairs.csv grid.csv figures/")
    return "\n".join(lines)


def write_all(outcome, out_dir: str | os.PathLike) -> dict[str, list]:
    """Write members.csv, pairs.csv, grid.csv and figures/ into the run folder; print the summary."""
    out_dir = Path(out_dir)
    members, pairs = member_rows(outcome), pair_rows(outcome)
    grid = grid_rows(members, pairs)
    checkpoint.write_atomic(out_dir / "members.csv", to_csv(members))
    checkpoint.write_atomic(out_dir / "pairs.csv", to_csv(pairs) if pairs else
                            ",".join(list(ensemble.KNOBS) + ["seed_a", "seed_b", "group"]) + "\n")
    checkpoint.write_atomic(out_dir / "grid.csv", to_csv(grid))
    write_figures(grid, outcome.config.knob_values(), out_dir / "figures")
    print(summary(outcome, grid, out_dir))
    return {"members": members, "pairs": pairs, "grid": grid}
