"""The default phase rule applied to the paper's own measured grid (ResNet18 on CIFAR-10, Yang et al. 2021):
writes the phase map, heatmaps of its metrics and a Markdown page.

    python experiments/paper_grid_phases.py [--grid tests/data/paper_resnet18_cifar10_grid.csv] --out docs/paper_grid

The paper's mc is in percent of error; `phases.load_paper_grid` converts it to the fraction the rule expects.
"""
import argparse
import math
import sys
from pathlib import Path

import numpy as np

from lljax import figures, phases, tables
from lljax.errors import LLJaxError

DEFAULT_GRID = Path(__file__).resolve().parents[1] / "tests" / "data" / "paper_resnet18_cifar10_grid.csv"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", default=str(DEFAULT_GRID), help="the paper grid CSV")
    p.add_argument("--out", required=True, help="folder for the figures and index.md")
    args = p.parse_args(argv)
    try:
        grid = phases.load_paper_grid(args.grid)
    except LLJaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    thresholds = phases.Thresholds()
    labels = phases.classify(grid["train_loss_mean"], grid["mc"], grid["cka_softmax_mean"], thresholds)
    widths, batches = sorted(set(grid["width"].astype(int))), sorted(set(grid["batch_size"].astype(int)))
    rows = [dict(width=int(w), batch_size=int(b), phase=str(label), test_acc_mean=acc / 100, mc_mean=mc,
                 cka_softmax_mean=cka, train_loss_mean=loss, log_top_eig=eig)
            for w, b, label, acc, mc, cka, loss, eig in zip(grid["width"], grid["batch_size"], labels,
                                                            grid["test_acc_mean"], grid["mc"],
                                                            grid["cka_softmax_mean"], grid["train_loss_mean"],
                                                            grid["log_hess_top_eig"])]
    matrix = lambda column: tables.grid_matrix(rows, column, "width", "batch_size", widths, batches)
    figures.category_map(matrix("phase"), phases.PHASES, figures.PHASE_COLORS, widths, batches, "width",
                         "batch_size", "paper's ResNet18 / CIFAR-10 grid: lljax's default phase rule "
                         "(cell: phase, test accuracy)", out / "phase_map.png", overlay_YX=matrix("test_acc_mean"))
    for column, title, center in (("test_acc_mean", "test accuracy", None), ("mc_mean", "mode connectivity", 0.0),
                                  ("cka_softmax_mean", "CKA of softmax outputs", None),
                                  ("train_loss_mean", "training loss", None),
                                  ("log_top_eig", "log top Hessian eigenvalue", None)):
        figures.heatmap(matrix(column), widths, batches, "width", "batch_size", f"paper grid: {title}",
                        out / f"{column.removesuffix('_mean')}.png", center, annotate=False)
    best = max((r for r in rows if not math.isnan(r["test_acc_mean"])), key=lambda r: r["test_acc_mean"])
    counts = {ph: int(np.sum(labels == ph)) for ph in (*phases.PHASES, phases.UNKNOWN)}
    lines = ["# The phase rule on the paper's own grid", "",
             "Yang et al. 2021 measured ResNet18 on CIFAR-10 over 14 widths x 15 batch sizes (5 seeds each); "
             "`tests/data/paper_resnet18_cifar10_grid.csv` holds their means. lljax's default rule "
             f"(`phases.Thresholds()`: fitted below {thresholds.train_loss:g} nats of training loss, barrier below "
             f"mc = -{thresholds.mc_band:g}, IV-B from CKA {thresholds.cka:g}) applied to it, reproduced by "
             "`python experiments/paper_grid_phases.py --out docs/paper_grid` and checked by "
             "`tests/test_phases.py::test_default_rule_recovers_the_paper_layout`.", "",
             "![phase map](phase_map.png)", "",
             "Counts: " + ", ".join(f"{k}: {v}" for k, v in counts.items() if v) + ".", "",
             f"Best test accuracy {100 * best['test_acc_mean']:.1f}% at width {best['width']}, batch size "
             f"{best['batch_size']}: phase **{best['phase']}**. Narrow models have barriers (I at small batch, "
             "where they do not fit; III where they do), the smallest batches are not fitted (I / II), and the "
             "wide, fitted, connected, similar region (IV-B) holds the best test accuracy, as the paper reads "
             "its Figure 2.", "",
             "| metric | figure |", "|---|---|"]
    names = ("test_acc", "mc", "cka_softmax", "train_loss", "log_top_eig")
    lines += [f"| {name} | ![{name}]({name}.png) |" for name in names]
    (out / "index.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out}/index.md and figures; best {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
