"""The correlation harness (lljax.correlations) on a finished run folder's tables alone: grid.csv (and, where
tracked, trajectory.csv and pair_trajectory.csv), for a folder without its groups/ (this one), where
`lljax report --out` cannot rebuild. Writes correlations.csv and figures/slice_correlations.png into OUT and
prints the report section:

    PYTHONPATH=. python docs/default_study/correlations_from_csvs.py docs/default_study docs/default_study
"""
import csv
import json
import sys
import types
from pathlib import Path

from lljax import correlations, tables
from lljax import grid as grids

# the built-in families' correlated columns, in the report's order
CORRELATED = ("train_loss", "alpha", "alpha_weighted", "log_norm", "log_spectral_norm", "stable_rank",
              "hessian_top_eig", "hessian_trace", "mc", "barrier_linear", "cka_softmax", "l2",
              "nc1", "nc2", "nc3", "nc4", "robust_acc", "input_hessian_top_eig", "mc_robust", "surface_mc",
              "slice_sharpness", "slice_sharpness_max")


def value(v: str):
    if v in ("True", "False"):
        return v == "True"
    for kind in (int, float):
        try:
            return kind(v)
        except ValueError:
            pass
    return v


def read(path: Path) -> list[dict]:
    with open(path) as f:
        return [{k: value(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]


def main(src: Path, out: Path) -> None:
    config = json.loads((src / "config.json").read_text())
    grid = read(src / "grid.csv")
    knob_values = {k: sorted({r[k] for r in grid}) for k in grids.ALL_KNOBS if k in grid[0]}
    u = config["uncertainty"]
    results = types.SimpleNamespace(
        config=types.SimpleNamespace(seed=config["seed"], uncertainty=types.SimpleNamespace(**u)),
        knob_values=knob_values, correlated=tuple(c for c in CORRELATED if f"{c}_mean" in grid[0]),
        error_metric="test_acc_mean" in grid[0], model=config["model"], dataset=config["dataset"])
    trajectories = None
    if (src / "trajectory.csv").exists():
        members, pairs = read(src / "trajectory.csv"), read(src / "pair_trajectory.csv")
        at = lambda rows, e: [{k: v for k, v in r.items() if k != "epoch"} for r in rows if r["epoch"] == e]  # noqa
        trajectories = types.SimpleNamespace(grids={e: tables.grid_rows(at(members, e), at(pairs, e), resamples=10)
                                                    for e in sorted({r["epoch"] for r in members})})
    harness = correlations.of_run(results, grid, trajectories)
    correlations.write(results, harness, out)
    print("\n".join(correlations.report_lines(results, harness)))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
