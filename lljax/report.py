"""The run's outputs: members.csv, pairs.csv, grid.csv, figures/, every family's own outputs, report.md, and
the one-screen summary printed at the end of a run."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from lljax import correlations, figures, loss_gaps, phases, store, tables, timings, uncertainty
from lljax import grid as grids
from lljax.tables import Results, Tables


def _fmt_knobs(row: dict, knobs: Sequence[str]) -> str:
    return ", ".join(f"{k}={row[k]:g}" if isinstance(row[k], float) else f"{k}={row[k]}" for k in knobs)


def _strategies(results: Results) -> str:
    """The convolution strategies the groups trained with (`--conv` as resolved; lljax.conv)."""
    used = sorted({str(a["meta/conv"]) for a in results.group_metrics if "meta/conv" in a})
    return "/".join(used) if used else results.config.conv


def best_point(results: Results, grid: Sequence[dict]) -> dict | None:
    """The grid point with the best mean test score (highest accuracy, or lowest loss), None if no point has
    one (every member diverged)."""
    sign = 1 if results.error_metric else -1
    scored = [r for r in grid if math.isfinite(r.get(results.score, math.nan))]
    return max(scored, key=lambda r: sign * r[results.score]) if scored else None


def phase_table(results: Results, rows: Sequence[dict], x: str, y: str | None) -> list[str]:
    """Markdown table of the grid: rows y (largest first), columns x, cells 'phase (test score)'."""
    knob_values = results.knob_values
    x_values, y_values = list(knob_values[x]), (list(knob_values[y]) if y else [None])
    labels = tables.grid_matrix(rows, "phase", x, y, x_values, y_values if y else None)
    score = tables.grid_matrix(rows, results.score, x, y, x_values, y_values if y else None)
    lines = [f"| {y or ''} \\ {x} | " + " | ".join(grids.format_value(v) for v in x_values) + " |",
             "|---|" + "---|" * len(x_values)]
    for i in reversed(range(len(y_values))):
        cells = [f"{labels[i, j]} ({score[i, j]:.3f})" for j in range(len(x_values))]
        lines.append(f"| {grids.format_value(y_values[i])} | " + " | ".join(cells) + " |" if y else
                     "| | " + " | ".join(cells) + " |")
    return lines


def liu_lines(results: Results, grid: Sequence[dict], x: str | None, y: str | None) -> list[str]:
    """Liu et al.'s phases of grokking (with accuracy milestones): the rule, the map (cells: phase and the mean
    steps to fit / to generalise), the figures beside Yang et al.'s map, and the cross-table of the two."""
    if not grid or "liu_phase" not in grid[0]:
        return []
    m = results.config.milestones
    lines = ["## Liu et al.'s phases of grokking", "",
             f"Steps to fit / to generalise: the first step (checked every {m.every}) at which training / test "
             f"accuracy reaches {m.threshold:g}, the step budget where never. Per member (Liu et al. 2022): both "
             f"reached, comprehension if they are less than {m.gap:g} steps apart, else grokking; only training: "
             "memorization; neither: confusion. A grid point's label is its seeds' majority "
             "(`liu_phase_stability`: the fraction of resampled seeds keeping it).", ""]
    if x is not None:
        knob_values = results.knob_values
        for suffix, rows in tables.facets(grid, knob_values, x, y):
            x_values, y_values = list(knob_values[x]), (list(knob_values[y]) if y else [None])
            cell = lambda name: tables.grid_matrix(rows, name, x, y, x_values, y_values if y else None)
            labels, fit, general = cell("liu_phase"), cell("steps_to_fit_mean"), cell("steps_to_generalise_mean")
            lines += [f"| {y or ''} \\ {x} | " + " | ".join(grids.format_value(v) for v in x_values) + " |",
                      "|---|" + "---|" * len(x_values)]
            for i in reversed(range(len(y_values))):
                cells = [f"{labels[i, j]} ({fit[i, j]:.0f} / {general[i, j]:.0f})" for j in range(len(x_values))]
                lines.append((f"| {grids.format_value(y_values[i])} | " if y else "| | ") + " | ".join(cells) + " |")
            lines += ["", f"![phase map](figures/phase_map{suffix}.png) "
                      f"![Liu et al.'s phases](figures/liu_phase_map{suffix}.png)", ""]
    yang = [*phases.PHASES, phases.UNKNOWN]
    liu = [*phases.LIU_PHASES, phases.UNKNOWN]
    count = lambda a, b: sum(r["phase"] == a and r["liu_phase"] == b for r in grid)
    used_liu = [b for b in liu if any(count(a, b) for a in yang)]
    lines += ["Grid points by Yang et al.'s phase (rows) and Liu et al.'s (columns):", "",
              "| | " + " | ".join(used_liu) + " |", "|---|" + "---:|" * len(used_liu)]
    lines += [f"| {a} | " + " | ".join(str(count(a, b)) for b in used_liu) + " |"
              for a in yang if any(count(a, b) for b in used_liu)]
    return lines + [""]


def unstable(results: Results, row: dict) -> bool:
    """Whether a grid point's phase label keeps below `uncertainty.stable` of resamples or threshold settings."""
    limit = results.config.uncertainty.stable
    return any(row.get(k, math.nan) < limit for k in ("phase_stability_bootstrap", "phase_stability_thresholds"))


def _scores(results: Results, t: Tables) -> list[list[float]]:
    """Every grid point's per-seed test scores (members that did not diverge), in grid order."""
    name = results.score.removesuffix("_mean")
    return [[float(r[name]) for r in p.kept_members if name in r] for p in tables.points_of(t.members, t.pairs)]


def claims(results: Results, t: Tables) -> list[str]:
    """The best point with its interval and the bootstrap probability that it is the best; the difference of
    the two best phases; what the seeds allow (lljax.uncertainty)."""
    config, grid = results.config, t.grid
    u = config.uncertainty
    score_name, _ = _what(results)
    larger = results.error_metric
    swept = grids.swept(results.knob_values)
    best = best_point(results, grid)
    if best is None:
        return [f"No grid point has a finite mean {score_name}.", ""]
    scores = _scores(results, t)
    index = grid.index(best)
    probability = uncertainty.best_point_probability(scores, uncertainty.generator(config.seed, "best_point"),
                                                     u.resamples, larger)[index]
    column = results.score.removesuffix("_mean")
    lines = [f"{best[results.score]:.4f} [{100 * u.level:g}% interval {best.get(f'{column}_lo', math.nan):.4f}, "
             f"{best.get(f'{column}_hi', math.nan):.4f}] (std {best.get(f'{column}_std', math.nan):.4f} over "
             f"{len(scores[index])} seeds) at {_fmt_knobs(best, swept) or 'the only point'}, phase "
             f"**{best.get('phase', '?')}**. Bootstrap probability (seeds resampled at every point) that it is "
             f"the best point: {probability:.2f}.", ""]
    if config.seeds <= 2:
        lines += [f"With {config.seeds} seed(s) per point the intervals are t intervals with "
                  f"{max(config.seeds - 1, 0)} degree of freedom (about nine standard deviations wide with two "
                  "seeds), and a bootstrap of two seeds has three distinct resamples: the data support only large "
                  "differences. More seeds narrow them.", ""]
    elif config.seeds < uncertainty.BOOTSTRAP_MIN_SEEDS:
        lines += [f"With {config.seeds} seeds per point the mean's interval is a t interval; the bootstrap "
                  "probability and the percentile intervals below resample so few seeds that they understate the "
                  "spread (a 95% percentile interval of a mean covers about 73% of the time at 3 seeds and 83% at "
                  "5, measured on normal samples): read them as optimistic.", ""]
    by_phase = {p: [r for r in grid if r["phase"] == p and math.isfinite(r.get(results.score, math.nan))]
                for p in phases.PHASES}
    pick = max if larger else min
    ranked = sorted((p for p in by_phase if by_phase[p]),
                    key=lambda p: pick(r[results.score] for r in by_phase[p]), reverse=larger)
    lines += [f"| phase | points | mean {score_name} | best |", "|---|---:|---:|---:|"]
    lines += [f"| {p} | {len(by_phase[p])} | {np.mean([r[results.score] for r in by_phase[p]]):.4f} | "
              f"{pick(r[results.score] for r in by_phase[p]):.4f} |" for p in phases.PHASES if by_phase[p]] + [""]
    if len(ranked) >= 2:
        first, second = ranked[:2]
        diff = uncertainty.phase_difference(scores, [r["phase"] for r in grid], first, second,
                                            uncertainty.generator(config.seed, "phase_difference"), u.resamples,
                                            u.level, larger)
        said = lambda d: "excludes 0: supported" if d[1] > 0 or d[2] < 0 else "includes 0: not supported by the data"
        lines += [f"The two best phases by their best point: {first} and {second}. {first} - {second}, best point: "
                  f"{diff['best'][0]:+.4f} [{diff['best'][1]:+.4f}, {diff['best'][2]:+.4f}] ({said(diff['best'])}); "
                  f"mean over the phase's points: {diff['mean'][0]:+.4f} [{diff['mean'][1]:+.4f}, "
                  f"{diff['mean'][2]:+.4f}] ({said(diff['mean'])}). Intervals: {100 * u.level:g}% percentile, "
                  "seeds resampled at every point, phases as assigned.", ""]
    return lines


KIND_NAMES = {"training": "training (loss)", "data-free": "data-free (weight spectra)",
              "local": "local (Hessian)", "global": "global (connectivity, CKA, L2)",
              "features": "features (neural collapse)", "robustness": "robustness (adversarial, input Hessian)"}


def kinds_of_metric(results: Results, table, intervals, score_name: str) -> list[str]:
    """How well each kind of metric ranks the grid (pooled): its best metric and the mean |Spearman|."""
    pooled = {r.metric: r for r in table if r.scope == "all" and math.isfinite(r.spearman)}
    by_kind: dict[str, list] = {}
    for name, row in pooled.items():
        by_kind.setdefault(results.kinds.get(name, ""), []).append(row)
    if len([k for k in by_kind if k]) < 2:
        return []
    lines = [f"## Which kind of metric ranks the {score_name}", "",
             "Pooled over grid points: each kind's strongest metric (Spearman, its interval) and the mean |Spearman| "
             "of the kind's metrics.", "",
             "| kind | metrics | strongest | Spearman [interval] | mean abs. Spearman |", "|---|---|---|---:|---:|"]
    for kind, rows in by_kind.items():
        best = max(rows, key=lambda r: abs(r.spearman))
        low, high = intervals.get((best.metric, "all"), (math.nan,) * 4)[:2]
        lines.append(f"| {KIND_NAMES.get(kind, kind or 'other')} | {', '.join(r.metric for r in rows)} | {best.metric} "
                     f"| {best.spearman:+.2f} [{low:+.2f}, {high:+.2f}] | "
                     f"{np.mean([abs(r.spearman) for r in rows]):.2f} |")
    return lines + [""]


def along_training(results: Results, trajectories: tables.Trajectories, grid: Sequence[dict], score_name: str
                   ) -> list[str]:
    """Does an early metric already rank the grid? Spearman of each tracked correlated metric at every tracked
    epoch with the final test score; and the grid points whose phase changed between tracked epochs."""
    epochs = list(trajectories.grids)
    final = {grids.point_key(r): r.get(results.score, math.nan) for r in grid}
    swept = grids.swept(results.knob_values)
    tracked = [c for c in results.correlated if any(f"{c}_mean" in r for r in trajectories.grids[epochs[0]])]
    lines = ["## Along training", "",
             f"Tracked epochs: {', '.join(map(str, epochs))} (trajectory.csv, pair_trajectory.csv, "
             f"phase_trajectory.csv). Spearman correlation over grid points of each metric at an epoch with the "
             f"final {score_name}:", "",
             "| metric | " + " | ".join(f"epoch {e}" for e in epochs) + " |", "|---|" + "---:|" * len(epochs)]
    for column in tracked:
        cells = []
        for e in epochs:
            rows = trajectories.grids[e]
            values = [r.get(f"{column}_mean", math.nan) for r in rows]
            scores = [final.get(grids.point_key(r), math.nan) for r in rows]
            rho = phases.correlation_table({column: values}, scores, ["?"] * len(rows))[0].spearman
            cells.append("–" if math.isnan(rho) else f"{rho:+.2f}")
        lines.append(f"| {column} | " + " | ".join(cells) + " |")
    changes = []
    for point in trajectories.grids[epochs[-1]]:
        key = grids.point_key(point)
        seq = [next(r["phase"] for r in trajectories.grids[e] if grids.point_key(r) == key)
               for e in epochs]
        steps = [f"{seq[i]} -> {seq[i + 1]} by epoch {epochs[i + 1]}" for i in range(len(seq) - 1)
                 if seq[i] != seq[i + 1] and "?" not in (seq[i], seq[i + 1])]
        if steps:
            changes.append(f"- {_fmt_knobs(point, swept) or 'the only point'}: " + "; ".join(steps))
    known = any(r["phase"] != "?" for e in epochs[:-1] for r in trajectories.grids[e])
    lines += [""] + (["Phase changes between tracked epochs:", ""] + changes if changes else
                     ["No grid point changed phase between tracked epochs." if known else
                      "Phases before the last epoch need mc: track the curves family (--track-metrics ... curves)."])
    return lines + [""]


def stability_lines(results: Results, grid: Sequence[dict]) -> list[str]:
    """How many phase labels are stable, and the unstable points."""
    u = results.config.uncertainty
    swept = grids.swept(results.knob_values)
    known = [r for r in grid if r["phase"] in phases.PHASES]
    shaky = [r for r in known if unstable(results, r)]
    lines = [f"Phase stability: {len(known) - len(shaky)} of {len(known)} labelled points keep their phase in at "
             f"least {100 * u.stable:g}% of {u.resamples} bootstrap resamples of their seeds and of the 729 threshold "
             "settings around the chosen ones (train_loss and mc_band x 0.5-2, 1 - cka x 0.5-2; "
             "lljax.uncertainty). Unstable points are hatched in the phase map."]
    if shaky:
        lines += ["", "| point | phase | seeds resampled | thresholds moved |", "|---|---|---:|---:|"]
        lines += [f"| {_fmt_knobs(r, swept) or 'the only point'} | {r['phase']} | "
                  f"{r['phase_stability_bootstrap']:.2f} | {r['phase_stability_thresholds']:.2f} |" for r in shaky]
    return lines + [""]


def _what(results: Results) -> tuple[str, str]:
    """(the test score in words, the units of the training loss)."""
    if results.error_metric:
        return "test accuracy", "nats" if results.loss_name == "cross_entropy" else f"units of {results.loss_name}"
    return "test loss", f"units of the {results.loss_name} loss"


def data_lines(out_dir: Path) -> list[str]:
    """What the run read from its data (config.json's 'resolved'): inputs, targets and the CKA probe."""
    import json

    try:
        r = json.loads((Path(out_dir) / "config.json").read_text()).get("resolved") or {}
    except (OSError, ValueError):
        return []
    if not r:
        return []
    inputs = f"tokens (vocabulary {r['vocab_size']})" if r.get("inputs") == "tokens" else "float"
    text = f"Data: {inputs} inputs of shape ({', '.join(map(str, r.get('input_shape', [])))}), {r.get('targets')}"
    if r.get("targets") == "per-token labels":
        text += " (every mean over the labelled positions)"
    probe = {"mixup": "training inputs mixed up (Beta(16, 16))", "inputs": "training inputs unmixed"}
    if r.get("cka_probe"):
        text += f"; CKA probe: {probe[r['cka_probe']]}"
    return [text + ".", ""]


def report(results: Results, t: Tables, figure_paths: Sequence[Path], out_dir: Path,
           trajectories: tables.Trajectories | None = None, harness: correlations.Harness | None = None) -> str:
    """DIR/report.md: the run, the phase map, where the best test score lies, the correlation table, the grid
    and every figure; `harness`: the correlation harness's section (`lljax.correlations`)."""
    config, grid = results.config, t.grid
    knob_values = results.knob_values
    swept = grids.swept(knob_values)
    x, y = tables.choose_axes(knob_values)
    th = config.phase
    score_name, units = _what(results)
    best = best_point(results, grid)
    counts = {p: sum(r["phase"] == p for r in grid) for p in (*phases.PHASES, phases.UNKNOWN)}
    mc_on = "training error, a fraction" if results.error_metric else f"training {results.loss_name} loss"
    cka_on = "softmax outputs" if tables.cka_column(grid) == "cka_softmax_mean" else "outputs"
    lines = [f"# lljax report: {results.model} on {results.dataset}", "",
             f"{len(results.members)} members = {len(grid)} grid points x {config.seeds} seeds, "
             f"{len(results.groups)} compiled groups, {config.epochs} epochs ({config.schedule} schedule, "
             f"{results.loss_name if config.loss_is_knob else config.loss} loss, {config.optimizer}" +
             (f", SAM radius {', '.join(f'{r:g}' for r in config.sam_rhos)}" if config.uses_sam else "") +
             f"; {config.precision} training, convolutions "
             f"{_strategies(results)}); run time {results.seconds:.0f} s. Swept: " +
             "; ".join(f"{k} = {', '.join(grids.format_value(v) for v in knob_values[k])}" for k in swept) +
             f". Metrics: {', '.join(config.metric_names)}. Configuration: [config.json](config.json).", ""]
    lines += data_lines(out_dir)
    diverged = sum(r["diverged"] for r in grid)
    if diverged:
        lines += [f"**Diverged members: {diverged} of {len(results.members)}** (left out of every mean" +
                  ("; every member diverged, so no grid point has a measured mean)." if best is None else ")."), ""]
    lines += ["## Phases", "",
              (f"Rule (lljax.phases): fitted when mean training error < {config.fitted_error:g} (a grid over "
               "losses: the error means the same for every loss); barrier when " if tables.fitted_by_error(config)
               else f"Rule (lljax.phases): fitted when mean training loss < {th.train_loss:g} {units}; barrier when ") +
              f"mc < -{th.mc_band:g} (mc on {mc_on}); fitted points: III with a barrier, else IV-B when CKA of "
              f"{cka_on} >= {th.cka:g}, else IV-A; not fitted: I with a barrier, else II. "
              "'?' = an input the rule needs was not measured.", "",
              "Counts: " + ", ".join(f"{p}: {n}" for p, n in counts.items() if n), ""]
    score_figure = results.score.removesuffix("_mean")
    if x is not None:
        for suffix, rows in tables.facets(grid, knob_values, x, y):
            if suffix:
                lines += [f"**{suffix.replace('__', ' ').strip()}**", ""]
            lines += phase_table(results, rows, x, y) + [""]
            lines += [f"![phase map](figures/phase_map{suffix}.png) "
                      f"![{score_name}](figures/{score_figure}{suffix}.png)", ""]
    lines += stability_lines(results, grid)
    lines += liu_lines(results, grid, x, y)
    lines += [f"## Best {score_name}", ""] + claims(results, t)
    correlated = {name: [r.get(f"{name}_mean", math.nan) for r in grid] for name in results.correlated
                  if any(f"{name}_mean" in r for r in grid)}
    score = [r.get(results.score, math.nan) for r in grid]
    labels = [r["phase"] for r in grid]
    table = phases.correlation_table(correlated, score, labels)
    u = config.uncertainty
    intervals = uncertainty.correlation_intervals(correlated, score, labels,
                                                  uncertainty.generator(config.seed, "correlations"), u.resamples,
                                                  u.level)
    lines += [f"## Correlation with {score_name}", "",
              "Rank correlation over grid points, pooled and within each phase (pooled correlations can mislead: "
              f"Yang et al. 2021), each with a {100 * u.level:g}% percentile interval from resampling the grid "
              "points of its scope; * marks an interval that excludes zero.", "",
              phases.format_correlation_table(table, intervals, u.level), ""]
    lines += kinds_of_metric(results, table, intervals, score_name)
    if trajectories is not None:
        lines += along_training(results, trajectories, grid, score_name)
    lines += correlations.report_lines(results, harness)
    gap_lines = loss_gaps.report_lines(loss_gaps.gaps(trajectories.members) if trajectories is not None else [])
    lines += gap_lines + [""] * bool(gap_lines)
    columns = swept + ["phase"] + [c for c in ("train_loss_mean", results.score,
                                               *[f"{n}_mean" for n in results.correlated if n != "train_loss"])
                                   if any(c in r for r in grid)]
    lines += ["## Grid", "", "Means over seeds (full table with spreads: [grid.csv](grid.csv); per model: "
              "[members.csv](members.csv); per pair: [pairs.csv](pairs.csv)" +
              ("; along the curves: [curves.csv](curves.csv)" if (out_dir / "curves.csv").exists() else "") +
              ").", "",
              "| " + " | ".join(c.removesuffix("_mean") for c in columns) + " |", "|" + "---|" * len(columns)]
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in grid] + [""]
    lines += ["## Figures", ""] + [f"- [{p.stem}](figures/{p.name})" for p in figure_paths] + [""]
    text = "\n".join(lines)
    store.write_atomic(out_dir / "report.md", text)
    return text


def summary(results: Results, t: Tables, out_dir: Path) -> str:
    """The one-screen summary printed at the end of a run."""
    config, grid = results.config, t.grid
    knob_values = results.knob_values
    x, y = tables.choose_axes(knob_values)
    score_name, _ = _what(results)
    lines = [f"lljax: {len(results.members)} members ({len(grid)} grid points x {config.seeds} seeds) in "
             f"{len(results.groups)} compiled groups, {results.model} on {results.dataset}, {config.epochs} epochs, "
             f"{results.seconds:.0f} s"]
    diverged = sum(r["diverged"] for r in grid)
    if diverged:
        lines.append(f"diverged members: {diverged} (excluded from means)")
    best = best_point(results, grid)
    swept = grids.swept(knob_values)
    if best is None:
        lines.append(f"no grid point has a finite mean {score_name}")
    else:
        lines.append(f"best mean {score_name} {best[results.score]:.4f} at "
                     f"{_fmt_knobs(best, swept) or 'the only point'} (phase {best.get('phase', '?')})")
    if x is not None:
        for suffix, rows in tables.facets(grid, knob_values, x, y):
            lines.append(f"phase (mean {score_name}){suffix.replace('__', ' ')}")
            lines += [line.replace("|---", "").strip("|") for line in phase_table(results, rows, x, y)
                      if not line.startswith("|---")]
    files = ["report.md", "config.json", "members.csv", "pairs.csv", "grid.csv"] + \
        (["curves.csv"] if (out_dir / "curves.csv").exists() else []) + \
        [name for name in ("correlations.csv", "loss_gaps.csv") if (out_dir / name).exists()] + ["figures/"]
    lines.append(f"results in {out_dir}/: {' '.join(files)}")
    return "\n".join(lines)


def write_all(results: Results, out_dir: str | os.PathLike, verbose: bool = True) -> Tables:
    """Write the tables, every figure (heatmaps, phase figures, the families' own outputs) and report.md into
    the run folder; print the summary."""
    out_dir = Path(out_dir)
    with timings.section("tables"):
        t, layers, trajectories = _tables(results, out_dir)
        harness = correlations.of_run(results, t.grid, trajectories)
    with timings.section("figures"):
        paths = figures.write_heatmaps(results, t.grid, out_dir / "figures")
        paths += figures.write_phase_figures(results, t.grid, out_dir / "figures")
        paths += figures.accuracy_curves(results, t.grid, out_dir / "figures")
        for family in results.families:
            if family.outputs is not None:
                paths += family.outputs(results, t, out_dir / "figures")
        if trajectories is not None:
            paths += figures.write_trajectory_figures(results, trajectories, out_dir / "figures")
        paths += correlations.write(results, harness, out_dir)
        if trajectories is not None:
            paths += loss_gaps.write(loss_gaps.gaps(trajectories.members), out_dir)
    with timings.section("report"):
        report(results, t, paths, out_dir, trajectories, harness)
        if verbose:
            print(summary(results, t, out_dir))
    return t


def _tables(results: Results, out_dir: Path):
    """Write members.csv, pairs.csv, grid.csv, layers.csv and the trajectories; return the tables."""
    t = tables.make_tables(results)
    store.write_atomic(out_dir / "members.csv", tables.to_csv(t.members))
    store.write_atomic(out_dir / "pairs.csv", tables.to_csv(t.pairs, tables.pair_keys(results)))
    store.write_atomic(out_dir / "grid.csv", tables.to_csv(t.grid))
    layers = tables.layer_rows(results)
    if layers:
        store.write_atomic(out_dir / "layers.csv", tables.to_csv(layers))
    trajectories = tables.trajectory_tables(results)
    if trajectories is not None:
        for name, rows in (("trajectory", trajectories.members), ("pair_trajectory", trajectories.pairs),
                           ("phase_trajectory", trajectories.phases)):
            store.write_atomic(out_dir / f"{name}.csv", tables.to_csv(rows))
    return t, layers, trajectories
