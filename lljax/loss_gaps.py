"""Zhou et al. 2022's heat map for a grid over losses: |mean test accuracy of a loss - that of cross-entropy| per
width and tracked epoch ("Are all losses created equal": the gaps close at large width and long training).

Made from the tracked members' rows (`tables.Trajectories.members`, every tracked epoch, the last included) of a
run whose losses include cross-entropy and another one; written as loss_gaps.csv, figures/loss_gaps.png (the
largest gap over the losses) and figures/loss_gaps_<loss>.png, and a report section. Tracked epochs are
snapshots of one run: with a decaying schedule (the default step) they are not runs of that length (with
`--schedule constant` they are).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from lljax import figures, store, tables

REFERENCE = "cross_entropy"


def gaps(rows: Sequence[dict]) -> list[dict]:
    """One row per (width, epoch, loss other than cross-entropy): the loss's mean test accuracy over seeds and
    `gap_to_ce` = |that - cross-entropy's|; [] without cross-entropy and another loss."""
    losses = {r.get("loss") for r in rows}
    if len(losses) < 2 or REFERENCE not in losses:
        return []
    acc: dict[tuple, list[float]] = {}
    for r in rows:
        acc.setdefault((int(r["width"]), int(r["epoch"]), r["loss"]), []).append(float(r["test_acc"]))
    mean = {k: sum(v) / len(v) for k, v in acc.items()}
    return [dict(width=w, epoch=e, loss=loss, test_acc=a, gap_to_ce=abs(a - mean[(w, e, REFERENCE)]))
            for (w, e, loss), a in sorted(mean.items()) if loss != REFERENCE and (w, e, REFERENCE) in mean]


def table(rows: Sequence[dict]) -> tuple[list[int], list[int], dict[str, np.ndarray]]:
    """(widths, epochs, {loss or 'max': gap_to_ce (widths, epochs)}) of `gaps`' rows, 'max' over the losses."""
    widths, epochs = sorted({g["width"] for g in rows}), sorted({g["epoch"] for g in rows})
    names = sorted({g["loss"] for g in rows})
    out = {name: np.full((len(widths), len(epochs)), np.nan) for name in names}
    for g in rows:
        out[g["loss"]][widths.index(g["width"]), epochs.index(g["epoch"])] = g["gap_to_ce"]
    out["max"] = np.max(np.stack([out[name] for name in names]), axis=0)
    return widths, epochs, out


def write(rows: Sequence[dict], out_dir: Path) -> list[Path]:
    """loss_gaps.csv and the heat maps of `gaps`' rows (nothing for none); the figures' paths."""
    if not rows:
        return []
    store.write_atomic(out_dir / "loss_gaps.csv", tables.to_csv(list(rows)))
    widths, epochs, values = table(rows)
    (out_dir / "figures").mkdir(exist_ok=True)
    paths = []
    for name, grid in values.items():
        path = out_dir / "figures" / ("loss_gaps.png" if name == "max" else f"loss_gaps_{name}.png")
        title = ("max over losses of" if name == "max" else name) + " |test acc - test acc(CE)|"
        figures.heatmap(grid, epochs, widths, "epoch (tracked)", "width", title, path, cmap="magma_r")
        paths.append(path)
    return paths


def report_lines(rows: Sequence[dict]) -> list[str]:
    """The report's section: the largest gap over the losses per width (rows) and tracked epoch (columns)."""
    if not rows:
        return []
    widths, epochs, values = table(rows)
    lines = ["## Loss gaps (Zhou et al. 2022's heat map)", "",
             "Largest |mean test accuracy of a loss - that of cross-entropy| over the other losses, per width and "
             "tracked epoch (loss_gaps.csv; figures/loss_gaps.png, one map per loss in figures/loss_gaps_<loss>.png). "
             "Tracked epochs are snapshots of one run: with a decaying schedule (the default step) they are not runs "
             "of that length (with --schedule constant they are).", "",
             "| width \\ epoch | " + " | ".join(map(str, epochs)) + " |", "|---" * (len(epochs) + 1) + "|"]
    return lines + [f"| {w} | " + " | ".join(f"{v:.3f}" for v in row) + " |" for w, row in zip(widths, values["max"])]
