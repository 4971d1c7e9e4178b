"""Figures: heatmaps over a 2-D grid of knobs, line plots over one knob, the phase map, small multiples per grid
point. matplotlib (imported when the first figure is drawn), Agg backend, PNG files."""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from lljax import grid as grids
from lljax import phases, tables

PHASE_COLORS = ("#d95f02", "#fdb863", "#7570b3", "#b2abd2", "#1b9e77")  # I, II, III, IV-A, IV-B
LIU_COLORS = ("#1b9e77", "#7570b3", "#fdb863", "#d95f02")  # comprehension, grokking, memorization, confusion


@functools.cache
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


KNOB_LABELS = {"width": "width", "data_fraction": "data fraction", "label_noise": "label-noise fraction",
               "batch_size": "batch size", "lr": "learning rate", "weight_decay": "weight decay",
               "momentum": "momentum", "loss": "loss", "sam_rho": "SAM radius"}


def _ticks(values) -> list[str]:
    return [f"{v:g}" if isinstance(v, float) else str(v) for v in values]


def heatmap(values_YX: np.ndarray, x_values: Sequence, y_values: Sequence, x_knob: str, y_knob: str, title: str,
            path: str | os.PathLike, center: float | None = None, cmap: str = "viridis", annotate: bool = True
            ) -> None:
    """One metric over the grid: cell (i, j) is values_YX[i, j] at (x_values[j], y_values[i]).
    `center` gives a diverging colour map symmetric about it (for mode connectivity)."""
    plt = _pyplot()
    values_YX = np.asarray(values_YX, float)
    fig, ax = plt.subplots(figsize=(1.1 + 0.75 * len(x_values), 1.2 + 0.55 * len(y_values)), dpi=110)
    kwargs = {"cmap": cmap}
    finite = values_YX[np.isfinite(values_YX)]
    if center is not None:
        half = max(np.abs(finite - center).max(), 1e-12) if finite.size else 1.0
        kwargs = {"cmap": "RdBu", "vmin": center - half, "vmax": center + half}
    image = ax.imshow(values_YX, origin="lower", aspect="auto", **kwargs)
    fig.colorbar(image, ax=ax, shrink=0.85)
    ax.set_xticks(range(len(x_values)), _ticks(x_values))
    ax.set_yticks(range(len(y_values)), _ticks(y_values))
    ax.set_xlabel(KNOB_LABELS.get(x_knob, x_knob))
    ax.set_ylabel(KNOB_LABELS.get(y_knob, y_knob))
    ax.set_title(title, fontsize=10)
    if annotate and values_YX.size <= 200:
        for (i, j), v in np.ndenumerate(values_YX):
            if np.isfinite(v):
                bright = center is not None or image.norm(v) > 0.6  # dark text on light cells
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=7,
                        color="black" if bright else "white")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _draw_categories(ax, labels_YX, categories, colors, overlay_YX=None, hatch_YX=None) -> None:
    """Cells coloured by category, boundaries where neighbours differ, optional numbers and hatching."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Rectangle

    index = {c: i for i, c in enumerate(categories)}
    codes = np.vectorize(lambda c: index.get(c, -1))(np.asarray(labels_YX, object)).astype(float)
    codes[codes < 0] = np.nan
    ax.imshow(codes, origin="lower", aspect="auto", cmap=ListedColormap(colors), vmin=-0.5,
              vmax=len(categories) - 0.5)
    rows, cols = codes.shape
    for i in range(rows):  # boundaries: a line wherever neighbouring cells differ
        for j in range(cols):
            if j + 1 < cols and codes[i, j] != codes[i, j + 1]:
                ax.plot([j + 0.5, j + 0.5], [i - 0.5, i + 0.5], color="black", lw=2)
            if i + 1 < rows and codes[i, j] != codes[i + 1, j]:
                ax.plot([j - 0.5, j + 0.5], [i + 0.5, i + 0.5], color="black", lw=2)
    if hatch_YX is not None:
        for (i, j), flag in np.ndenumerate(np.asarray(hatch_YX, bool)):
            if flag:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="black",
                                       lw=0, alpha=0.6))
    for (i, j), label in np.ndenumerate(np.asarray(labels_YX, object)):
        text = str(label) if overlay_YX is None or not np.isfinite(overlay_YX[i, j]) else \
            f"{label}\n{overlay_YX[i, j]:.3g}"
        ax.text(j, i, text, ha="center", va="center", fontsize=7)


def _legend(ax, categories, colors, hatched: bool) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label=k) for k, c in zip(categories, colors)]
    if hatched:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="///", label="unstable"))
    ax.legend(handles=handles, bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=8, title="phase")


def _axes_labels(ax, x_values, y_values, x_knob, y_knob) -> None:
    ax.set_xticks(range(len(x_values)), _ticks(x_values))
    ax.set_yticks(range(len(y_values)), _ticks(y_values))
    ax.set_xlabel(KNOB_LABELS.get(x_knob, x_knob))
    ax.set_ylabel(KNOB_LABELS.get(y_knob, y_knob))


def category_map(labels_YX: np.ndarray, categories: Sequence[str], colors: Sequence[str], x_values, y_values,
                 x_knob: str, y_knob: str, title: str, path, overlay_YX: np.ndarray | None = None,
                 hatch_YX: np.ndarray | None = None) -> None:
    """A grid coloured by category (e.g. phases), boundaries between categories drawn, an optional number
    written in each cell (e.g. test accuracy), and cells where `hatch_YX` is true hatched (unstable labels)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.8 + 0.75 * len(x_values), 1.2 + 0.55 * len(y_values)), dpi=110)
    _draw_categories(ax, labels_YX, categories, colors, overlay_YX, hatch_YX)
    _legend(ax, categories, colors, hatch_YX is not None and bool(np.any(hatch_YX)))
    _axes_labels(ax, x_values, y_values, x_knob, y_knob)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def category_maps(labels: Sequence[np.ndarray], titles: Sequence[str], categories: Sequence[str],
                  colors: Sequence[str], x_values, y_values, x_knob: str, y_knob: str, title: str, path) -> None:
    """Several category maps side by side (e.g. the phases at every tracked epoch), one legend."""
    plt = _pyplot()
    size = (1.6 + (0.7 * len(x_values) + 0.6) * len(labels), 1.4 + 0.55 * len(y_values))
    fig, axes = plt.subplots(1, len(labels), figsize=size, dpi=100, squeeze=False)
    for ax, labels_YX, subtitle in zip(axes[0], labels, titles):
        _draw_categories(ax, labels_YX, categories, colors)
        _axes_labels(ax, x_values, y_values, x_knob, y_knob)
        ax.set_title(subtitle, fontsize=9)
    _legend(axes[0][-1], categories, colors, False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def lines(x_values: Sequence, series: dict[str, np.ndarray], x_label: str, y_label: str, title: str, path,
          errors: dict[str, np.ndarray] | None = None, logx: bool = False, hline: float | None = None) -> None:
    """Several named lines over the same x values, with optional error bars."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
    positions = np.arange(len(x_values)) if not logx else np.asarray(x_values, float)
    for name, ys in series.items():
        err = None if errors is None else errors.get(name)
        ax.errorbar(positions, ys, yerr=err, marker="o", ms=3, capsize=2, label=name)
    if not logx:
        ax.set_xticks(positions, _ticks(x_values))
    else:
        ax.set_xscale("log")
    if hline is not None:
        ax.axhline(hline, color="gray", lw=0.8, ls="--")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize=10)
    if len(series) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def panels(series_YX: Sequence[Sequence[Sequence[tuple]]], x_values, y_values, x_knob: str, y_knob: str,
           x_label: str, y_label: str, title: str, path, logy: bool = False) -> None:
    """Small multiples over a 2-D grid: panel (i, j) at (x_values[j], y_values[i]) draws its list of series
    (xs, ys, label, matplotlib style dict); an empty list leaves the panel blank."""
    plt = _pyplot()
    rows, cols = len(y_values), len(x_values)
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 + 2.1 * cols, 1.3 + 1.7 * rows), dpi=100, squeeze=False)
    for i in range(rows):
        for j in range(cols):
            ax = axes[rows - 1 - i, j]  # the first y value at the bottom, as in the heatmaps
            for xs, ys, label, style in series_YX[i][j]:
                ax.plot(xs, ys, label=label, **style)
            if logy:
                ax.set_yscale("log")
            ax.tick_params(labelsize=6)
            if i == 0:
                ax.set_xlabel(f"{x_label}\n{KNOB_LABELS.get(x_knob, x_knob)} = {_ticks([x_values[j]])[0]}", fontsize=7)
            if j == 0:
                ax.set_ylabel(f"{KNOB_LABELS.get(y_knob, y_knob)} = {_ticks([y_values[i]])[0]}\n{y_label}",
                              fontsize=7)
    handles, labels = [], []
    for ax in axes.flat:
        if ax.get_legend_handles_labels()[0]:
            handles, labels = ax.get_legend_handles_labels()
            break
    legend = len(labels) > 1
    if legend:
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.05 if legend else 0, 1, 1))
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ over a run's grid

def _title(results: "tables.Results", title: str, suffix: str) -> str:
    """A figure's title: what it shows, the facet, and on a second line the model and the dataset."""
    return f"{title}{suffix.replace('__', '  ')}\n{results.model} on {results.dataset}"


def write_heatmaps(results: "tables.Results", grid: Sequence[dict], out_dir: Path) -> list[Path]:
    """A heatmap (or a line plot, for one swept knob) of every family heatmap whose column the grid holds."""
    knob_values = results.knob_values
    x, y = tables.choose_axes(knob_values)
    written = []
    if x is None:
        return written
    out_dir.mkdir(parents=True, exist_ok=True)
    x_values, y_values = list(knob_values[x]), (list(knob_values[y]) if y else None)
    for suffix, rows in tables.facets(grid, knob_values, x, y):
        for spec in results.heatmaps:
            column = f"{spec.column}_mean"
            if column not in rows[0]:
                continue
            matrix = tables.grid_matrix(rows, column, x, y, x_values, y_values)
            if spec.log10:
                with np.errstate(divide="ignore", invalid="ignore"):
                    matrix = np.log10(matrix)
            path = out_dir / f"{spec.column}{suffix}.png"
            if y:
                heatmap(matrix, x_values, y_values, x, y, _title(results, spec.title, suffix), path, spec.center)
            else:
                lines(x_values, {spec.title: matrix[0]}, KNOB_LABELS[x], spec.title,
                      _title(results, spec.title, suffix), path)
            written.append(path)
    return written


def write_phase_figures(results: "tables.Results", grid: Sequence[dict], out_dir: Path) -> list[Path]:
    """The phase map (phases with boundaries, the mean test score in each cell) and double-descent curves (test
    error, or loss, against the load knob, one line per temperature)."""
    knob_values = results.knob_values
    x, y = tables.choose_axes(knob_values)
    if x is None:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    x_values, y_values = list(knob_values[x]), (list(knob_values[y]) if y else None)
    score = results.score
    what = "accuracy" if results.error_metric else "loss"
    written = []
    for suffix, rows in tables.facets(grid, knob_values, x, y):
        labels = tables.grid_matrix(rows, "phase", x, y, x_values, y_values)
        value = tables.grid_matrix(rows, score, x, y, x_values, y_values)
        limit = results.config.uncertainty.stable
        shaky = np.minimum(tables.grid_matrix(rows, "phase_stability_bootstrap", x, y, x_values, y_values),
                           tables.grid_matrix(rows, "phase_stability_thresholds", x, y, x_values, y_values)) < limit
        path = out_dir / f"phase_map{suffix}.png"
        category_map(labels, phases.PHASES, PHASE_COLORS, x_values, y_values or [""], x, y or "",
                     _title(results, f"phases (cell: phase and mean test {what}; hatched: unstable)", suffix), path,
                     overlay_YX=value, hatch_YX=shaky)
        written.append(path)
        if "liu_phase" in rows[0]:  # Liu et al.'s phases beside Yang et al.'s
            path = out_dir / f"liu_phase_map{suffix}.png"
            category_map(tables.grid_matrix(rows, "liu_phase", x, y, x_values, y_values), phases.LIU_PHASES,
                         LIU_COLORS, x_values, y_values or [""], x, y or "",
                         _title(results, f"Liu et al.'s phases (cell: mean test {what})", suffix), path,
                         overlay_YX=value)
            written.append(path)
        error = 1 - value if results.error_metric else value
        spread = tables.grid_matrix(rows, score.replace("_mean", "_std"), x, y, x_values, y_values)
        label = "test error" if results.error_metric else "test loss"
        series = {(f"{y} = {grids.format_value(v)}" if y else label): error[i] for i, v in enumerate(y_values or [0])}
        errors = {(f"{y} = {grids.format_value(v)}" if y else label): spread[i] for i, v in enumerate(y_values or [0])}
        path = out_dir / f"double_descent{suffix}.png"
        lines(x_values, series, KNOB_LABELS[x], label, _title(results, f"{label} vs {KNOB_LABELS[x]}", suffix),
              path, errors=errors)
        written.append(path)
    return written


def _representative(values: list, most: int) -> list:
    """At most `most` values spread evenly over the list, the ends included."""
    if len(values) <= most:
        return values
    return [values[i] for i in np.unique(np.linspace(0, len(values) - 1, most).round().astype(int))]


def _point_facets(results: "tables.Results", grid: Sequence[dict]):
    """The representative set of grid points (at most 6 x 5 per facet): (suffix, x_values, y_values, x, y,
    point(xv, yv) -> the grid point's knob tuple) for every facet."""
    knob_values = results.knob_values
    x, y = tables.choose_axes(knob_values)
    if x is None:
        return
    x_values = _representative(list(knob_values[x]), 6)
    y_values = _representative(list(knob_values[y]), 5) if y else [None]
    for suffix, rows in tables.facets(grid, knob_values, x, y):
        fixed = {k: rows[0].get(k) for k in grids.ALL_KNOBS}
        point = lambda xv, yv, fixed=fixed: tuple({**fixed, x: xv, **({y: yv} if y else {})}[k]
                                                  for k in grids.ALL_KNOBS)
        yield suffix, x_values, y_values, x, y, point


def point_panels(results: "tables.Results", grid: Sequence[dict], draw: Callable[[tuple], list | None],
                 out_dir: Path, stem: str, x_label: str, y_label: str, title: str, logy: bool = False
                 ) -> list[Path]:
    """Small multiples, one panel per grid point of a representative set (at most 6 x 5 points per facet):
    `draw(point) -> [(xs, ys, label, style), ...]` or None for a blank panel. One figure `stem<facet>.png` per
    facet where some panel is drawn."""
    written = []
    for suffix, x_values, y_values, x, y, point in _point_facets(results, grid):
        drawn = [[draw(point(xv, yv)) for xv in x_values] for yv in y_values]
        if not any(cell for row in drawn for cell in row):
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{stem}{suffix}.png"
        panels([[cell or [] for cell in row] for row in drawn], x_values, y_values if y else [""], x, y or "",
               x_label, y_label, _title(results, title, suffix), path, logy=logy)
        written.append(path)
    return written


def point_contours(results: "tables.Results", grid: Sequence[dict], surface: Callable[[tuple], tuple | None],
                   out_dir: Path, stem: str, x_label: str, y_label: str, title: str, log10: bool = False,
                   marks: Sequence[tuple] = ()) -> list[Path]:
    """Filled contours, one panel per grid point of the representative set, ONE colour scale per figure so the
    points compare: `surface(point) -> (xs (X,), ys (Y,), values (Y, X))` or None for a blank panel; `marks`:
    (x, y) positions drawn on every panel (the models). One figure `stem<facet>.png` per facet drawn."""
    plt = _pyplot()
    written = []
    for suffix, x_values, y_values, x, y, point in _point_facets(results, grid):
        cells = [[surface(point(xv, yv)) for xv in x_values] for yv in y_values]
        drawn = [c for row in cells for c in row if c is not None]
        if not drawn:
            continue
        scale = (lambda v: np.log10(np.maximum(v, 1e-12))) if log10 else (lambda v: np.asarray(v, float))
        values = np.concatenate([scale(c[2]).ravel() for c in drawn])
        values = values[np.isfinite(values)]
        levels = np.linspace(values.min(), values.max() + 1e-12, 21) if values.size else 21
        rows, cols = len(y_values), len(x_values)
        fig, axes = plt.subplots(rows, cols, figsize=(1.8 + 2.1 * cols, 1.3 + 1.9 * rows), dpi=100, squeeze=False)
        image = None
        for i in range(rows):
            for j in range(cols):
                ax, cell = axes[rows - 1 - i, j], cells[i][j]  # the first y value at the bottom
                ax.tick_params(labelsize=6)
                if cell is not None:
                    xs, ys, z = cell
                    image = ax.contourf(xs, ys, scale(z), levels=levels, cmap="viridis", extend="both")
                    ax.contour(xs, ys, scale(z), levels=levels[::4], colors="white", linewidths=0.4)
                    for mx, my in marks:
                        ax.plot(mx, my, "w.", ms=4)
                if i == 0:
                    ax.set_xlabel(f"{x_label}\n{KNOB_LABELS.get(x, x)} = {_ticks([x_values[j]])[0]}", fontsize=7)
                if j == 0:
                    prefix = f"{KNOB_LABELS.get(y, y)} = {_ticks([y_values[i]])[0]}\n" if y else ""
                    ax.set_ylabel(f"{prefix}{y_label}", fontsize=7)
        fig.suptitle(_title(results, title, suffix), fontsize=9)
        fig.tight_layout(rect=(0, 0, 0.9, 1))
        bar = fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02)
        bar.ax.tick_params(labelsize=6)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{stem}{suffix}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def write_trajectory_figures(results: "tables.Results", trajectories: "tables.Trajectories", out_dir: Path
                             ) -> list[Path]:
    """Along training: every tracked correlated metric against epoch (one panel per grid point of the
    representative set, mean over seeds; with accuracy milestones, the mean steps to fit and to generalise
    marked), and the phase map at every tracked epoch side by side."""
    knob_values = results.knob_values
    x, y = tables.choose_axes(knob_values)
    if x is None:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    epochs = list(trajectories.grids)
    by_point = {e: {grids.point_key(r): r for r in grid} for e, grid in trajectories.grids.items()}
    written = []
    milestones_at = {name: results.arrays_by_point("member", name)
                     for name in ("steps_to_fit", "steps_to_generalise", "step_budget")}
    for column in (c for c in results.correlated if any(f"{c}_mean" in r for r in trajectories.grids[epochs[0]])):
        def draw(point, column=column):
            values = np.asarray([by_point[e].get(point, {}).get(f"{column}_mean", np.nan) for e in epochs], float)
            if not np.isfinite(values).any():
                return None
            out = [(epochs, values, column, {"lw": 1.2, "marker": "o", "ms": 3})]
            span = [np.nanmin(values), np.nanmax(values)]
            for name, style in (("steps_to_fit", "--"), ("steps_to_generalise", ":")):  # accuracy milestones
                steps, budget = milestones_at[name].get(point), milestones_at["step_budget"].get(point)
                at = np.mean(steps) if steps else np.nan
                if np.isfinite(at) and at < np.max(budget):
                    style = {"lw": 0.8, "ls": style, "color": "gray"}
                    out.append(([at, at], span, f"{name.replace('_', ' ')} (mean)", style))
            return out

        written += point_panels(results, trajectories.grids[epochs[-1]], draw, out_dir, f"trajectory_{column}",
                                "epoch", column, f"{column} along training (mean over seeds)")
    x_values, y_values = list(knob_values[x]), (list(knob_values[y]) if y else None)
    for suffix, _ in tables.facets(trajectories.grids[epochs[-1]], knob_values, x, y):
        maps = [tables.grid_matrix([r for s, rows in tables.facets(trajectories.grids[e], knob_values, x, y)
                                    if s == suffix for r in rows], "phase", x, y, x_values, y_values) for e in epochs]
        path = out_dir / f"phase_trajectory{suffix}.png"
        category_maps(maps, [f"epoch {e}" for e in epochs], phases.PHASES, PHASE_COLORS, x_values, y_values or [""],
                      x, y or "", _title(results, "phases along training", suffix), path)
        written.append(path)
    return written


def accuracy_curves(results: "tables.Results", grid: Sequence[dict], out_dir: Path) -> list[Path]:
    """Training and test accuracy against steps (`lljax.milestones`, mean over seeds), one panel per grid point of
    a representative set, the mean steps to generalise marked with a dotted line."""
    every = next((int(a["meta/milestone_every"]) for a in results.group_metrics if "meta/milestone_every" in a), 0)
    if not every:
        return []
    train = results.arrays_by_point("member", "acc_curve_train")
    test = results.arrays_by_point("member", "acc_curve_test")
    general = results.arrays_by_point("member", "steps_to_generalise")

    def draw(point):
        if not train.get(point):
            return None
        mean = lambda a: np.nanmean(np.asarray(a, float), axis=0)
        steps = every * np.arange(1, len(mean(train[point])) + 1)
        out = [(steps, mean(train[point]), "training accuracy", {"lw": 1.2}),
               (steps, mean(test[point]), "test accuracy", {"lw": 1.2})]
        at = float(np.mean(general[point]))
        if at < steps[-1]:
            out.append(([at, at], [0, 1], "steps to generalise (mean)", {"lw": 0.8, "ls": ":", "color": "gray"}))
        return out

    return point_panels(results, grid, draw, out_dir, "accuracy_curves", "step", "accuracy",
                        "training and test accuracy along training (mean over seeds)")


def slice_boxes(panels: Sequence[tuple], knobs: Sequence[str], title: str, path) -> None:
    """Box plots of per-slice rank correlations (Yang et al. 2023's figures): one row per panel (name,
    {metric: {knob: (S,) values, NaN left out}}, {metric: pooled value drawn as a cross}); per metric one box per
    knob, coloured by knob, with the slices' values as dots."""
    plt = _pyplot()
    metrics = list(panels[0][1])
    colors = plt.get_cmap("tab10").colors
    width = 0.8 / max(len(knobs), 1)
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(4.5, 1.6 + (0.35 * len(knobs) + 0.3) * len(metrics)),
                                                      0.9 + 2.4 * len(panels)), dpi=110, squeeze=False)
    for ax, (name, boxes, pooled) in zip(axes[:, 0], panels):
        for k, knob in enumerate(knobs):
            color = colors[k % len(colors)]
            positions = np.arange(len(metrics)) + (k - (len(knobs) - 1) / 2) * width
            data = [np.asarray(boxes[m][knob], float) for m in metrics]
            data = [d[np.isfinite(d)] for d in data]
            used = [i for i, d in enumerate(data) if d.size]
            if used:
                parts = ax.boxplot([data[i] for i in used], positions=positions[used], widths=0.8 * width,
                                   patch_artist=True, showfliers=False, manage_ticks=False,
                                   medianprops={"color": "black"})
                for box in parts["boxes"]:
                    box.set_facecolor(color)
                    box.set_alpha(0.5)
                for i in used:  # the slices themselves, spread across the box
                    offsets = np.linspace(-0.25, 0.25, data[i].size) * width if data[i].size > 1 else [0.0]
                    ax.plot(positions[i] + np.asarray(offsets), data[i], ".", color=color, ms=3)
            ax.plot([], [], "s", color=color, label=f"{KNOB_LABELS.get(knob, knob)} varied")
        ax.plot(np.arange(len(metrics)), [pooled[m] for m in metrics], "kx", ms=7, label="pooled")
        ax.axhline(0, color="gray", lw=0.8, ls="--")
        ax.set_xticks(np.arange(len(metrics)), metrics, rotation=30, ha="right", fontsize=7)
        ax.set_xlim(-0.6, len(metrics) - 0.4)
        ax.set_ylim(-1.08, 1.08)
        ax.set_ylabel(f"Spearman with\n{name}", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.75 / fig.get_figheight()))
    handles, labels = axes[0, 0].get_legend_handles_labels()
    top = 1 - 0.42 / fig.get_figheight()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=7, bbox_to_anchor=(0.5, top))
    fig.suptitle(title, fontsize=9, y=1 - 0.03 / fig.get_figheight(), va="top")
    fig.savefig(path)
    plt.close(fig)
