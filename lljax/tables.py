"""Results tables: members.csv, pairs.csv, grid.csv, and the views of the grid that figures and the report use.

Rows are assembled from the per-group metric arrays the pipeline saved: every per-member (per-pair) output
that is one number per member (pair) becomes a column; grid.csv holds, per grid point, the mean and standard
deviation over seeds of every column (diverged members excluded), the number of diverged members, and the
phase (`lljax.phases.classify` on the means).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
from typing import Any, Sequence

import numpy as np

from lljax import grid as grids
from lljax import phases, uncertainty


@dataclasses.dataclass
class Results:
    """What a run produced, the input of tables, figures and the report.

    config          the run's `lljax.config.Config`
    dataset         the dataset's name
    model           the model's name
    members, groups the grid (`lljax.grid`)
    group_metrics   per group: 'member/<name>' (M, ...), 'pair/<name>' (P, ...) and 'quad/<name>' (Q, ...)
                    arrays, 'pair/a', 'pair/b' and 'quad/members' (`lljax.pipeline.measure_group`)
    seconds         run time
    error_metric    whether the loss has an error metric (classification): accuracy columns and mc on error
    loss_name       the loss's name (the units of training-loss thresholds)
    correlated      grid columns (without _mean) correlated with the test score in the report
    kinds           correlated column -> its family's kind of metric (training, data-free, local, global, ...)
    heatmaps        `lljax.metrics.Heatmap`s of the families run
    families        the families run (`lljax.metrics.Family`), in registration order
    trajectories    per group: tracked epoch -> that epoch's arrays (as group_metrics), the last epoch apart
    tracked_epochs  the tracked epochs, the last included (`lljax.tracking`); () without tracking
    """

    config: Any
    dataset: str
    model: str
    members: list[grids.MemberConfig]
    groups: list[grids.Group]
    group_metrics: list[dict[str, np.ndarray]]
    seconds: float
    error_metric: bool = True
    loss_name: str = "cross_entropy"
    correlated: tuple[str, ...] = ()
    kinds: dict = dataclasses.field(default_factory=dict)
    heatmaps: tuple = ()
    families: tuple = ()
    trajectories: list = dataclasses.field(default_factory=list)
    tracked_epochs: tuple = ()

    @property
    def knob_values(self) -> dict[str, tuple]:
        return self.config.knob_values()

    @property
    def score(self) -> str:
        """The grid column that ranks points: mean test accuracy, or mean test loss without an error metric."""
        return "test_acc_mean" if self.error_metric else "test_loss_mean"

    def arrays_by_point(self, kind: str, name: str) -> dict[tuple, list[np.ndarray]]:
        """The per-member (kind 'member'), per-pair ('pair') or per-quad ('quad') array `name` of every grid
        point, as a list over its members (pairs, quads), diverged members (pairs, quads with one) left out."""
        out: dict[tuple, list[np.ndarray]] = {}
        for group, arrays in zip(self.groups, self.group_metrics):
            if f"{kind}/{name}" not in arrays:
                continue
            values, diverged = arrays[f"{kind}/{name}"], arrays["member/diverged"]
            owners = owners_of(kind, arrays, len(group.members))
            for i, owner in enumerate(owners):
                if not any(diverged[p] for p in owner):
                    out.setdefault(self.members[group.members[owner[0]]].point, []).append(values[i])
        return out


@dataclasses.dataclass
class Tables:
    """The rows of members.csv, pairs.csv and grid.csv."""

    members: list[dict]
    pairs: list[dict]
    grid: list[dict]


def _format(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)):
        return "nan" if math.isnan(value) else f"{float(value):.7g}"
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value)


def to_csv(rows: Sequence[dict], columns: Sequence[str] = ()) -> str:
    """Rows of dicts as CSV text; the columns are `columns` then the union of keys in first-seen order."""
    names: dict[str, None] = dict.fromkeys(columns)
    for row in rows:
        names.update(dict.fromkeys(row))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(names)
    for row in rows:
        writer.writerow([_format(row.get(c, "")) for c in names])
    return buffer.getvalue()


def owners_of(kind: str, arrays: dict[str, np.ndarray], members: int) -> list[tuple]:
    """The member positions (within the group) behind every entry of a kind's arrays."""
    if kind == "member":
        return [(p,) for p in range(members)]
    if kind == "pair":
        return list(zip(arrays["pair/a"], arrays["pair/b"]))
    return [tuple(q) for q in arrays.get("quad/members", np.zeros((0, 4), int))]


def _scalar_columns(arrays: dict[str, np.ndarray], prefix: str, count: int) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: v for k, v in arrays.items()
            if k.startswith(prefix) and v.shape == (count,) and k not in ("pair/a", "pair/b")}


def member_rows(results: Results, group_metrics: Sequence[dict] | None = None) -> list[dict]:
    """One row per member: its knobs, seed, group and every scalar per-member metric (of `group_metrics`,
    default the run's)."""
    rows = []
    for group, arrays in zip(results.groups, results.group_metrics if group_metrics is None else group_metrics):
        columns = _scalar_columns(arrays, "member/", len(group.members))
        for pos, index in enumerate(group.members):
            m = results.members[index]
            row = grids.knob_row(m)
            row.update(seed=m.seed, group=group.index)
            row.update({k: v[pos] for k, v in columns.items()})
            rows.append(row)
    return rows


def pair_rows(results: Results, group_metrics: Sequence[dict] | None = None, kind: str = "pair") -> list[dict]:
    """One row per pair of members at the same grid point: the point's knobs, both seeds (seed_a, seed_b), every
    pair metric; kind='quad': one row per quad, its four seeds (seed_a ... seed_d) and every quad metric."""
    rows = []
    for group, arrays in zip(results.groups, results.group_metrics if group_metrics is None else group_metrics):
        owners = owners_of(kind, arrays, len(group.members))
        columns = _scalar_columns(arrays, f"{kind}/", len(owners))
        for p, owner in enumerate(owners):
            seeds = [results.members[group.members[i]] for i in owner]
            row = grids.knob_row(seeds[0])
            row.update({f"seed_{'abcd'[i]}": m.seed for i, m in enumerate(seeds)}, group=group.index)
            row.update({k: v[p] for k, v in columns.items()})
            rows.append(row)
    return rows


PAIR_KEYS = (*grids.KNOBS, "seed_a", "seed_b", "group")


def pair_keys(results: Results) -> tuple[str, ...]:
    """pairs.csv's first columns: the run's knobs (`grid.knobs_of`), both seeds and the group."""
    return (*grids.knobs_of(results.knob_values), "seed_a", "seed_b", "group")


def layer_rows(results: Results) -> list[dict]:
    """One row per member and layer: knobs, seed, group, layer and the per-layer outputs of every family that
    has them (merged by layer name; a family's columns are empty for layers it does not have)."""
    rows = []
    for group, arrays in zip(results.groups, results.group_metrics):
        families = sorted({k.split("/")[1] for k in arrays if k.startswith("meta/") and k.endswith("/layers")})
        by_layer: dict[str, dict[str, np.ndarray]] = {}
        for family in families:
            names = [str(n) for n in arrays[f"meta/{family}/layers"]]
            for column in (str(c) for c in arrays[f"meta/{family}/layer_columns"]):
                for i, name in enumerate(names):
                    by_layer.setdefault(name, {})[column.removeprefix("layer_")] = arrays[f"member/{column}"][:, i]
        for pos, index in enumerate(group.members):
            m = results.members[index]
            for name, columns in by_layer.items():
                row = grids.knob_row(m)
                row.update(seed=m.seed, group=group.index, layer=name)
                row.update({c: v[pos] for c, v in columns.items()})
                rows.append(row)
    return rows


@dataclasses.dataclass
class Point:
    """One grid point's rows: all its members, pairs and quads, and those without a diverged member (`kept_*`)."""

    knobs: dict
    members: list[dict]
    pairs: list[dict]
    kept_members: list[dict]
    kept_pairs: list[dict]
    quads: list[dict] = dataclasses.field(default_factory=list)
    kept_quads: list[dict] = dataclasses.field(default_factory=list)


SEEDS = ("seed_a", "seed_b", "seed_c", "seed_d")


def points_of(members: Sequence[dict], pairs: Sequence[dict], quads: Sequence[dict] = ()) -> list[Point]:
    """The grid points of the member, pair and quad rows, in order of first appearance."""
    by_point: dict[tuple, Point] = {}
    for row in members:
        key = grids.point_key(row)
        knobs = {k: row[k] for k in grids.ALL_KNOBS if k in row}
        by_point.setdefault(key, Point(knobs, [], [], [], [])).members.append(row)
    for rows, field in ((pairs, "pairs"), (quads, "quads")):
        for row in rows:
            getattr(by_point[grids.point_key(row)], field).append(row)
    for p in by_point.values():
        diverged = {r["seed"] for r in p.members if r.get("diverged")}
        kept = lambda rows: [r for r in rows if not any(r.get(s) in diverged for s in SEEDS if s in r)]
        p.kept_members = [r for r in p.members if not r.get("diverged")]
        p.kept_pairs, p.kept_quads = kept(p.pairs), kept(p.quads)
    return list(by_point.values())


SKIP = set(grids.ALL_KNOBS) | {"seed", *SEEDS, "group", "diverged"}


def grid_rows(members: Sequence[dict], pairs: Sequence[dict], level: float = 0.95, seed: int = 0,
              resamples: int = 1000, quads: Sequence[dict] = ()) -> list[dict]:
    """One row per grid point: knobs, members, diverged, and the mean, standard deviation and `level` interval
    (`uncertainty.mean_interval`: `_lo`, `_hi`) over seeds of every metric (NaN where every member of the
    point diverged)."""
    out = []
    for index, p in enumerate(points_of(members, pairs, quads)):
        row = dict(p.knobs)
        row["members"] = len(p.members)
        row["diverged"] = len(p.members) - len(p.kept_members)
        for everything, kept in ((p.members, p.kept_members), (p.pairs, p.kept_pairs), (p.quads, p.kept_quads)):
            for name in (k for k in (everything[0] if everything else {}) if k not in SKIP):
                values = np.asarray([r[name] for r in kept], float)
                finite = values[np.isfinite(values)]
                row[f"{name}_mean"] = finite.mean() if finite.size else math.nan
                row[f"{name}_std"] = finite.std() if finite.size > 1 else math.nan
                row[f"{name}_lo"], row[f"{name}_hi"] = uncertainty.mean_interval(
                    finite, level, uncertainty.generator(seed, "interval", index, name), resamples)
        out.append(row)
    return out


def cka_column(grid: Sequence[dict]) -> str:
    """The CKA the phase rule uses: of softmax outputs (classification), else of the outputs themselves."""
    return "cka_softmax_mean" if any("cka_softmax_mean" in r for r in grid) else "cka_logits_mean"


def fitted_by_error(config) -> bool:
    """Whether the phase rule's "fitted" reads the training error (below --fitted-error) instead of the training
    loss: in a grid over losses (`Config.loss_is_knob`), whose values are in different units with different
    minima (label smoothing's is above 0), the error means the same for every loss."""
    return bool(getattr(config, "loss_is_knob", False))


def fitting(config, thresholds: phases.Thresholds | None = None) -> tuple[str, phases.Thresholds]:
    """(the per-member column the rule's "fitted" test reads, the thresholds to use): the training loss and the
    run's thresholds, or the training error ('train_error', 1 - train_acc) with train_loss set to --fitted-error
    (`fitted_by_error`)."""
    thresholds = config.phase if thresholds is None else thresholds
    if fitted_by_error(config):
        return "train_error", dataclasses.replace(thresholds, train_loss=config.fitted_error)
    return "train_loss", thresholds


def fitted_values(rows: Sequence[dict], column: str) -> list[float]:
    """Each row's `column` ('train_loss', 'train_error', or their grid means '..._mean'), NaN where absent."""
    if column.startswith("train_error"):
        acc = column.replace("train_error", "train_acc")
        return [1 - float(r.get(acc, math.nan)) for r in rows]
    return [float(r.get(column, math.nan)) for r in rows]


def add_phases(grid: Sequence[dict], thresholds: phases.Thresholds, config=None) -> None:
    """Set each grid row's 'phase' by `phases.classify` on its means ('?' where an input is missing); `config`:
    the run's (a grid over losses reads the training error, `fitting`)."""
    column = lambda name: [r.get(name, math.nan) for r in grid]
    fitted, thresholds = ("train_loss", thresholds) if config is None else fitting(config, thresholds)
    labels = phases.classify(fitted_values(grid, f"{fitted}_mean"), column("mc_mean"), column(cka_column(grid)),
                             thresholds)
    for row, label in zip(grid, labels):
        row["phase"] = str(label)


def add_stability(grid: Sequence[dict], members: Sequence[dict], pairs: Sequence[dict], config) -> None:
    """Set each grid row's 'phase_stability_bootstrap' and 'phase_stability_thresholds'
    (`uncertainty.phase_stability`)."""
    cka = cka_column(grid).removesuffix("_mean")
    values = lambda rows, name: [float(r.get(name, math.nan)) for r in rows]
    fitted, rule = fitting(config)
    for index, (row, p) in enumerate(zip(grid, points_of(members, pairs))):
        boot, thresholds = uncertainty.phase_stability(
            fitted_values(p.kept_members, fitted), values(p.kept_pairs, "mc"), values(p.kept_pairs, cka),
            row["phase"], rule, uncertainty.generator(config.seed, "phase_stability", index),
            config.uncertainty.resamples)
        row["phase_stability_bootstrap"], row["phase_stability_thresholds"] = boot, thresholds


def add_liu_phases(grid: Sequence[dict], members: Sequence[dict], pairs: Sequence[dict], config) -> None:
    """With accuracy milestones (`lljax.milestones`): each member's 'liu_phase' (`phases.liu_phases` of its steps
    to fit and to generalise within its step budget), each grid point's 'liu_phase' (its members' majority) and
    'liu_phase_stability' (the fraction of resamples of its seeds whose majority is the same)."""
    if not members or "steps_to_fit" not in members[0]:
        return
    column = lambda name: np.asarray([r[name] for r in members], float)
    labels = phases.liu_phases(column("steps_to_fit"), column("steps_to_generalise"), column("step_budget"),
                               config.milestones.gap)
    for row, label in zip(members, labels):
        row["liu_phase"] = str(label)
    for index, (row, p) in enumerate(zip(grid, points_of(members, pairs))):
        kept = [r["liu_phase"] for r in p.kept_members]
        row["liu_phase"] = phases.majority(kept)
        rng = uncertainty.generator(config.seed, "liu_phase_stability", index)
        draws = [phases.majority(rng.choice(kept, len(kept))) for _ in range(config.uncertainty.resamples)] \
            if kept else []
        row["liu_phase_stability"] = float(np.mean([d == row["liu_phase"] for d in draws])) if draws else math.nan


def make_tables(results: Results) -> Tables:
    config = results.config
    members, pairs, quads = member_rows(results), pair_rows(results), pair_rows(results, kind="quad")
    grid = grid_rows(members, pairs, config.uncertainty.level, config.seed, config.uncertainty.resamples, quads)
    add_phases(grid, config.phase, config)
    add_stability(grid, members, pairs, config)
    add_liu_phases(grid, members, pairs, config)
    return Tables(members, pairs, grid)


@dataclasses.dataclass
class Trajectories:
    """The tracked epochs' tables (`lljax.tracking`): member, pair and grid rows with an 'epoch' column, and
    the grid rows of each epoch (with phases)."""

    members: list[dict]
    pairs: list[dict]
    phases: list[dict]
    grids: dict


def _with_epoch(row: dict, epoch: int, after: str) -> dict:
    keys = list(row)
    cut = keys.index(after) + 1
    return {**{k: row[k] for k in keys[:cut]}, "epoch": epoch, **{k: row[k] for k in keys[cut:]}}


def trajectory_tables(results: Results) -> Trajectories | None:
    """Every tracked epoch's members, pairs and grid (phases by the rule on that epoch's means); the last epoch
    keeps the columns the earlier ones have (the tracked families'). None without tracking."""
    epochs = results.tracked_epochs
    if not epochs:
        return None
    config, last = results.config, epochs[-1]
    members, pairs, phase_rows, grids_by_epoch = [], [], [], {}
    columns: dict[str, set] = {"members": set(), "pairs": set()}
    for e in epochs:
        metrics_e = results.group_metrics if e == last else [t[e] for t in results.trajectories]
        m_rows, p_rows = member_rows(results, metrics_e), pair_rows(results, metrics_e)
        if e != last or len(epochs) == 1:
            columns["members"].update(*(r.keys() for r in m_rows))
            columns["pairs"].update(*(r.keys() for r in p_rows))
        else:  # the last epoch's rows hold what every family measured: keep the tracked columns
            m_rows = [{k: v for k, v in r.items() if k in columns["members"]} for r in m_rows]
            p_rows = [{k: v for k, v in r.items() if k in columns["pairs"]} for r in p_rows]
        grid = grid_rows(m_rows, p_rows, config.uncertainty.level, config.seed, config.uncertainty.resamples)
        add_phases(grid, config.phase, config)
        grids_by_epoch[e] = grid
        cka = cka_column(grid)
        members += [_with_epoch(r, e, "seed") for r in m_rows]
        pairs += [_with_epoch(r, e, "seed_b") for r in p_rows]
        phase_rows += [{**{k: r[k] for k in grids.knobs_of(results.knob_values)}, "epoch": e, "phase": r["phase"],
                        **{c: r.get(c, math.nan) for c in ("train_loss_mean", "mc_mean", cka)}} for r in grid]
    return Trajectories(members, pairs, phase_rows, grids_by_epoch)


# ------------------------------------------------------------------------------------------ views of the grid

def choose_axes(knob_values: dict[str, Sequence], axes: Sequence[str] | None = None) -> tuple[str | None, str | None]:
    """The phase diagram's axes: the first swept load-like knob on x, the first swept temperature-like knob on
    y; with two swept knobs of one kind, both of that kind. `axes` overrides."""
    if axes:
        return tuple(axes) + (None,) * (2 - len(axes))
    swept = grids.swept(knob_values)
    loads = [k for k in swept if k in grids.LOAD_KNOBS]
    temps = [k for k in swept if k in grids.TEMPERATURE_KNOBS or k == "sam_rho"]
    categories = [k for k in swept if k == "loss"]  # the loss: a y axis where no temperature-like knob is swept
    x = loads[0] if loads else (temps[1] if len(temps) > 1 else None)
    y = temps[0] if temps else (loads[1] if len(loads) > 1 else categories[0] if categories else None)
    if x is None and y is not None:
        x, y = y, None
    return x, y


def facets(grid: Sequence[dict], knob_values: dict[str, Sequence], x: str | None, y: str | None):
    """Split grid rows by the values of every swept knob that is not an axis: yields (suffix, rows)."""
    others = [k for k in grids.swept(knob_values) if k not in (x, y)]
    by_value: dict[tuple, list] = {}
    for row in grid:
        by_value.setdefault(tuple(row[k] for k in others), []).append(row)
    for values, rows in by_value.items():
        yield "".join(f"__{k}={v:g}" if isinstance(v, float) else f"__{k}={v}" for k, v in zip(others, values)), rows


def grid_matrix(rows: Sequence[dict], column: str, x: str, y: str | None, x_values, y_values) -> np.ndarray:
    """(len(y_values), len(x_values)) array of a grid column (NaN where absent)."""
    matrix = np.full((len(y_values) if y else 1, len(x_values)), np.nan,
                     dtype=object if column in ("phase", "liu_phase") else float)
    for row in rows:
        i = y_values.index(row[y]) if y else 0
        matrix[i, x_values.index(row[x])] = row.get(column, np.nan)
    return matrix
