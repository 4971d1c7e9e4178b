"""Figures: heatmaps over a 2-D grid of knobs, line plots over one knob. matplotlib, Agg backend, PNG files."""
from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

KNOB_LABELS = {"width": "width", "data_fraction": "data fraction", "label_noise": "label-noise fraction",
               "batch_size": "batch size", "lr": "learning rate", "weight_decay": "weight decay",
               "momentum": "momentum"}


def _ticks(values) -> list[str]:
    return [f"{v:g}" if isinstance(v, float) else str(v) for v in values]


def heatmap(values_YX: np.ndarray, x_values: Sequence, y_values: Sequence, x_knob: str, y_knob: str, title: str,
            path: str | os.PathLike, center: float | None = None, cmap: str = "viridis", annotate: bool = True
            ) -> None:
    """One metric over the grid: cell (i, j) is values_YX[i, j] at (x_values[j], y_values[i]).
    `center` gives a diverging colour map symmetric about it (for mode connectivity)."""
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


def category_map(labels_YX: np.ndarray, categories: Sequence[str], colors: Sequence[str], x_values, y_values,
                 x_knob: str, y_knob: str, title: str, path, overlay_YX: np.ndarray | None = None) -> None:
    """A grid coloured by category (e.g. phases), boundaries between categories drawn, and an optional number
    written in each cell (e.g. test accuracy)."""
    from matplotlib.colors import ListedColormap

    index = {c: i for i, c in enumerate(categories)}
    codes = np.vectorize(lambda c: index.get(c, -1))(np.asarray(labels_YX, object)).astype(float)
    codes[codes < 0] = np.nan
    fig, ax = plt.subplots(figsize=(1.8 + 0.75 * len(x_values), 1.2 + 0.55 * len(y_values)), dpi=110)
    ax.imshow(codes, origin="lower", aspect="auto", cmap=ListedColormap(colors), vmin=-0.5,
              vmax=len(categories) - 0.5)
    rows, cols = codes.shape
    for i in range(rows):  # boundaries: a line wherever neighbouring cells differ
        for j in range(cols):
            if j + 1 < cols and codes[i, j] != codes[i, j + 1]:
                ax.plot([j + 0.5, j + 0.5], [i - 0.5, i + 0.5], color="black", lw=2)
            if i + 1 < rows and codes[i, j] != codes[i + 1, j]:
                ax.plot([j - 0.5, j + 0.5], [i + 0.5, i + 0.5], color="black", lw=2)
    for (i, j), label in np.ndenumerate(np.asarray(labels_YX, object)):
        text = str(label) if overlay_YX is None or not np.isfinite(overlay_YX[i, j]) else \
            f"{label}\n{overlay_YX[i, j]:.3g}"
        ax.text(j, i, text, ha="center", va="center", fontsize=7)
    handles = [matplotlib.patches.Patch(color=c, label=k) for k, c in zip(categories, colors)]
    ax.legend(handles=handles, bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=8, title="phase")
    ax.set_xticks(range(len(x_values)), _ticks(x_values))
    ax.set_yticks(range(len(y_values)), _ticks(y_values))
    ax.set_xlabel(KNOB_LABELS.get(x_knob, x_knob))
    ax.set_ylabel(KNOB_LABELS.get(y_knob, y_knob))
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def lines(x_values: Sequence, series: dict[str, np.ndarray], x_label: str, y_label: str, title: str, path,
          errors: dict[str, np.ndarray] | None = None, logx: bool = False, hline: float | None = None) -> None:
    """Several named lines over the same x values, with optional error bars."""
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
