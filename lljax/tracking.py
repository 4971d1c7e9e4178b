"""Metrics along training: which epochs are tracked, which families measure them, and the trajectory tables.

`--track-epochs E ...` / `--track-every K` snapshot each group's ensemble at those epochs (and the last); the
training itself is unchanged (it only stops at those epochs on its way, and training is deterministic per epoch),
so a tracked run's final numbers are an untracked run's. The tracked families (`--track-metrics`; default loss,
hessian, cka, l2 and spectra, those of them the run computes; curves only when asked, each snapshot costs a
fit) measure every snapshot with the group's own keys. Snapshots (parameters, BatchNorm statistics, divergence)
are kept under checkpoints/group-<g>/[chunk-<c>/]track/<epoch>/ for re-analysis; each tracked epoch's metrics
land in groups/group-<g>.epoch-<e>.npz as soon as they are measured, so a killed run resumes without losing them.

Outputs: trajectory.csv (one row per member and tracked epoch), pair_trajectory.csv (per pair and epoch) and
phase_trajectory.csv (per grid point and epoch: the phase rule on that epoch's means; '?' where a tracked
family the rule needs, curves, is not tracked). The last epoch's rows are members.csv, pairs.csv and grid.csv's
phases. Cost: tracking K epochs multiplies the cost of the tracked families by about K + 1 and leaves the
training's cost unchanged.
"""
from __future__ import annotations

import dataclasses

from lljax import options
from lljax.errors import LLJaxError

DEFAULT_TRACKED = ("loss", "hessian", "cka", "l2", "spectra")


@dataclasses.dataclass(frozen=True)
class TrackOptions:
    epochs: tuple[int, ...] = options.option((), "epochs at which every group's ensemble is snapshot and measured "
                                                 "(the last epoch is added)", low=1, metavar="EPOCH")
    every: int | None = options.option(None, "also every K epochs", low=1, metavar="K")
    metrics: tuple[str, ...] | None = options.option(None, "families measured on the snapshots (default: loss, "
                                                           "hessian, cka, l2, spectra, those the run computes)",
                                                     metavar="NAME")


def tracked_epochs(config) -> tuple[int, ...]:
    """The tracked epochs, ascending, the last epoch included; () when nothing is tracked."""
    t = config.track
    epochs = set(t.epochs) | (set(range(t.every, config.epochs, t.every)) if t.every else set())
    return tuple(sorted(epochs | {config.epochs})) if epochs else ()


def tracked_families(config) -> tuple[str, ...]:
    """The families measured on every snapshot, in the run's order ('loss' always)."""
    wanted = DEFAULT_TRACKED if config.track.metrics is None else ("loss", *config.track.metrics)
    return tuple(name for name in config.metric_names if name in wanted)


def validate(config) -> None:
    t = config.track
    for epoch in t.epochs:
        if not 1 <= epoch <= config.epochs:
            raise LLJaxError(f"track epoch {epoch} is outside the run's epochs 1..{config.epochs}")
    for name in t.metrics or ():
        if name not in config.metric_names:
            raise LLJaxError(f"tracked metric {name!r} is not computed by the run; add it to --metrics "
                             f"({', '.join(config.metric_names)})")
