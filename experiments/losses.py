"""Width (load) x loss (Zhou et al., NeurIPS 2022, "Are all losses created equal: a neural collapse perspective"):
cross-entropy, label smoothing, focal loss and MSE on a scaled one-hot, each a group of its own, on MNIST-1D MLPs;
test accuracy and neural collapse (NC1-NC4) per loss, along training (tracked epochs: the paper's width x training
length heat map of |acc(loss) - acc(CE)|, printed at the end, written to loss_gaps.csv, drawn in
figures/loss_gaps*.png and added to report.md).

    python experiments/losses.py --preset quick --out runs/losses      # about 1.5 minutes on a 2-core CPU
    python experiments/losses.py --preset default --out runs/losses    # 12 minutes at load 4-10, ~4-6 quiet

The losses' parameters are the paper's: label smoothing 0.05 (--label-smoothing), focal gamma 3 (--focal-gamma),
MSE target scale 15 (--mse-scale). In a grid over losses the phase rule's "fitted" reads the training error
(below --fitted-error), the same for every loss. What it showed on this machine: README "The loss as a knob".
"""
import csv
import sys
from pathlib import Path

import numpy as np

from lljax import cli, figures

COMMON = dict(model="mlp", batch_sizes=(64,), lrs=(0.05,), weight_decays=(5e-4,), seeds=2,
              losses=("cross_entropy", "label_smoothing", "focal", "mse_onehot"),
              metrics=("loss", "collapse", "cka", "l2"), track_metrics=("collapse", "cka"), cka_samples=512)

PRESETS = {
    # 3 widths x 4 losses x 2 seeds, tracked at 10, 20, 40 epochs (12 groups, a program each)
    "quick": dict(COMMON, widths=(8, 128, 512), epochs=40, track_epochs=(10, 20)),
    # 5 widths x 4 losses x 2 seeds, tracked at 10, 25, 50, 100 epochs (20 groups); width 1024 was dropped before
    # the first run: 35 s of training per 10 epochs of one loss (a probe, load 1-4), so ~23 minutes for 4 x 100
    "default": dict(COMMON, widths=(4, 8, 32, 128, 512), epochs=100, track_epochs=(10, 25, 50)),
}


def loss_gaps(out: Path) -> list[dict]:
    """Zhou et al.'s heat map: |mean test accuracy of a loss - that of cross-entropy| per width and tracked epoch
    (from trajectory.csv, the members at every tracked epoch), written to loss_gaps.csv; none without
    cross-entropy and another loss."""
    rows = list(csv.DictReader(open(out / "trajectory.csv"))) if (out / "trajectory.csv").exists() else []
    losses = {r.get("loss", "cross_entropy") for r in rows}
    if len(losses) < 2 or "cross_entropy" not in losses:
        return []
    acc: dict[tuple, list[float]] = {}
    for r in rows:
        acc.setdefault((int(r["width"]), int(r["epoch"]), r["loss"]), []).append(float(r["test_acc"]))
    mean = {k: sum(v) / len(v) for k, v in acc.items()}
    gaps = [dict(width=w, epoch=e, loss=loss, test_acc=a, gap_to_ce=abs(a - mean[(w, e, "cross_entropy")]))
            for (w, e, loss), a in sorted(mean.items()) if loss != "cross_entropy"]
    with open(out / "loss_gaps.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(gaps[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(gaps)
    return gaps


def gap_table(gaps: list[dict]) -> tuple[list[int], list[int], dict[str, np.ndarray]]:
    """(widths, epochs, {loss or 'max': |acc(loss) - acc(CE)| (widths, epochs)}), 'max' over the losses."""
    widths, epochs = sorted({g["width"] for g in gaps}), sorted({g["epoch"] for g in gaps})
    names = sorted({g["loss"] for g in gaps})
    table = {name: np.full((len(widths), len(epochs)), np.nan) for name in names}
    for g in gaps:
        table[g["loss"]][widths.index(g["width"]), epochs.index(g["epoch"])] = g["gap_to_ce"]
    table["max"] = np.max(np.stack([table[name] for name in names]), axis=0)
    return widths, epochs, table


def write_gap_figures(out: Path, gaps: list[dict]) -> list[Path]:
    """The heat maps (width x tracked epoch) of `loss_gaps`: figures/loss_gaps.png (the largest gap over the losses)
    and figures/loss_gaps_<loss>.png, and a section at the end of report.md with the table."""
    widths, epochs, table = gap_table(gaps)
    (out / "figures").mkdir(exist_ok=True)
    paths = []
    for name, values in table.items():
        path = out / "figures" / ("loss_gaps.png" if name == "max" else f"loss_gaps_{name}.png")
        title = ("max over losses of" if name == "max" else name) + " |test acc - test acc(CE)|"
        figures.heatmap(values, epochs, widths, "epoch (tracked)", "width", title, path, cmap="magma_r")
        paths.append(path)
    lines = ["", "## Loss gaps (Zhou et al. 2022's heat map)", "",
             "Largest |mean test accuracy of a loss - that of cross-entropy| over the other losses, per width and "
             "tracked epoch (loss_gaps.csv; figures/loss_gaps.png, one map per loss in figures/loss_gaps_<loss>.png). "
             "Tracked epochs are snapshots of one run: with a decaying schedule (the default step) they are not runs "
             "of that length (with --schedule constant they are).", "",
             "| width \\ epoch | " + " | ".join(map(str, epochs)) + " |", "|---" * (len(epochs) + 1) + "|"]
    lines += [f"| {w} | " + " | ".join(f"{v:.3f}" for v in row) + " |" for w, row in zip(widths, table["max"])]
    with open(out / "report.md", "a") as f:
        f.write("\n".join(lines) + "\n")
    return paths


if __name__ == "__main__":
    code = cli.main(description=__doc__.splitlines()[0], presets=PRESETS)
    gaps = []
    if code == 0 and "--out" in sys.argv and "--shard" not in sys.argv:
        gaps = loss_gaps(Path(sys.argv[sys.argv.index("--out") + 1]))
    if gaps:
        write_gap_figures(Path(sys.argv[sys.argv.index("--out") + 1]), gaps)
        widths, epochs, table = gap_table(gaps)
        print("max over losses of |test acc(loss) - test acc(CE)| (rows: width, columns: epoch " +
              " ".join(map(str, epochs)) + "; figures/loss_gaps.png)")
        for w, row in zip(widths, table["max"]):
            print(f"{w:>6} " + " ".join(f"{v:.3f}" for v in row))
    sys.exit(code)
