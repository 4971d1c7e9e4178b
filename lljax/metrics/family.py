"""What a metric family declares, and what its function for one model (or one pair) receives.

A family is written for ONE trained member (or ONE pair of members at a grid point): a pure function

    member family:  compute(ctx: Context, shared: Shared, member: Member, key) -> dict of arrays
    pair family:    compute(ctx: Context, shared: Shared, a: Member, b: Member, key) -> dict of arrays
    quad family:    compute(ctx: Context, shared: Shared, a: Member, b: Member, c: Member, d: Member, key)

(a quad: the first four seeds of a grid point with at least four) that the pipeline vmaps over a group's members
(pairs, quads), jits once per static context, runs in memory-sized chunks with the member axis sharded over every
device, and stores. Outputs that are one number per member (pair) become columns of members.csv (pairs.csv) and
grid.csv (a quad's: of grid.csv); others (curves along t, spectral densities) are kept in the group's results
file for the family's own figures and tables.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import jax

from lljax import data, losses, models, train
from lljax.errors import LLJaxError

KINDS = {"member": 1, "pair": 2, "quad": 4}  # kind -> members per call


class Shared(NamedTuple):
    """Arrays every member of a group sees (replicated on every device): the training inputs (N, ...), the test
    inputs and targets, and the family's own shared inputs (`Family.prepare`, e.g. a probe; () if none)."""

    x_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    extra: Any = ()


class Member(NamedTuple):
    """One trained member as a family sees it (a leading member axis outside the family's function): its
    parameters and BatchNorm statistics, its training view (subset and labels: `data.View`), its dynamic
    hyperparameters and whether it diverged."""

    params: Any
    batch_stats: Any
    view: data.View
    hyper: train.Hyper
    diverged: jax.Array


@dataclasses.dataclass(frozen=True)
class Context:
    """Static inputs of a family's function (hashable: one compiled program per distinct context). `options` is
    the family's options (its configuration section); `subset_size` is set for families with
    `static_subset=True`: the size of the training subset of every member (pair: of member a) in the call."""

    model: models.ModelSpec
    loss: losses.Loss
    options: Any
    epochs: int
    eval_batch_size: int
    subset_size: int | None = None


@dataclasses.dataclass(frozen=True)
class Heatmap:
    """A heatmap of a grid column's mean over seeds: title, log10 of the values, or a diverging map centred
    at `center`."""

    column: str
    title: str
    log10: bool = False
    center: float | None = None


def _resolved(value, ctx):
    return tuple(value(ctx)) if callable(value) else tuple(value)


@dataclasses.dataclass(frozen=True)
class Family:
    """A metric family, declared once.

    name        its name in --metrics, the name of its random stream and of its configuration section
    kind        'member', 'pair' or 'quad'
    compute     the function for one member or pair (module docstring)
    options     a frozen dataclass of options (fields made with `lljax.options.option`), or None: it becomes a
                section of config.json and the flags --<prefix>-<field>
    prefix      the flags' prefix (default: the name)
    columns     the scalar outputs that become table columns (or a function of the Context returning them)
    heatmaps    `Heatmap`s drawn over the grid, one per column, where the column is present
    correlated  columns whose grid means enter the report's correlation table with the test score (or a
                function of the Context returning them)
    cost        its cost for the progress bar, relative to training the group (1 = as long as training)
    default     computed when --metrics is not given (expensive families leave this False)
    prepare     `prepare(ctx, shared, key) -> pytree` computed once per group: the `Shared.extra` its function sees
    static_subset  the function needs each member's subset size as a static shape (`Context.subset_size`)
    outputs     `outputs(results, tables, figures_dir) -> [paths of figures]`: the family's own figures and
                files beyond the heatmaps (results: `lljax.tables.Results`)
    layers      `layers(ctx, params) -> [layer names]` for one member's parameters: the layers of its per-layer
                outputs, which are (L,) arrays named in `layer_columns`; they become the rows of layers.csv
    layer_columns  the per-layer outputs (or a function of the Context returning them)
    check       `check(ctx, params, batch_stats, x) -> None` on shapes (`jax.ShapeDtypeStruct`s; x a batch of
                inputs): raises an LLJaxError (one line) before anything is written when the family cannot run
                on this model or loss (for instance no features hook)
    kind_of_metric  how the report groups the family's correlated columns: 'training', 'data-free', 'local',
                'global', 'features' or 'robustness'
    sharded     run with the member axis sharded over every device (default); False runs the program on one
                device: a function that calls the host (`jax.pure_callback`) cannot be partitioned (XLA gathers
                its operands to one device and the other devices' threads wait in a collective forever)
    companion_of  names of other families: this one is computed exactly when all of them are (it cannot be asked
                for on its own) and its Context's `options` is the tuple of their options, in that order (e.g.
                'robust_curves', with 'curves' and 'robust')
    skip        `skip(ctx) -> bool`: nothing to measure in this context (the robust family on token inputs); the
                pipeline then runs nothing and stores nothing for it
    stream      the name of its random stream (default: its name); a companion that redoes another family's
                random work (refits its curves) names that family's stream to redo it identically
    x64         its program is traced and run with 64-bit types enabled (`jax.enable_x64`), so that it can
                compute in float64 where float32 is not accurate enough; its inputs keep their dtypes
    """

    name: str
    kind: str
    compute: Callable
    options: type | None = None
    prefix: str | None = None
    columns: Callable[[Context], Sequence[str]] | Sequence[str] = ()
    heatmaps: Sequence[Heatmap] = ()
    correlated: Callable[[Context], Sequence[str]] | Sequence[str] = ()
    cost: float = 0.01
    default: bool = True
    prepare: Callable | None = None
    static_subset: bool = False
    outputs: Callable | None = None
    layers: Callable | None = None
    layer_columns: Callable[[Context], Sequence[str]] | Sequence[str] = ()
    check: Callable | None = None
    kind_of_metric: str = ""
    sharded: bool = True
    companion_of: tuple[str, ...] = ()
    skip: Callable[[Context], bool] | None = None
    stream: str | None = None
    x64: bool = False

    def __post_init__(self):
        if not self.name.isidentifier():
            raise LLJaxError(f"a metric family's name must be an identifier, got {self.name!r}")
        if self.kind not in KINDS:
            raise LLJaxError(f"metric family {self.name!r}: kind must be 'member', 'pair' or 'quad', got {self.kind!r}")
        if self.options is not None and not dataclasses.is_dataclass(self.options):
            raise LLJaxError(f"metric family {self.name!r}: options must be a frozen dataclass")
        if self.companion_of and (self.options is not None or self.default):
            raise LLJaxError(f"metric family {self.name!r}: a companion family has no options of its own and is not "
                             "on by default")
        if not 0 <= self.cost < float("inf"):
            raise LLJaxError(f"metric family {self.name!r}: cost must be non-negative, got {self.cost}")

    @property
    def flag_prefix(self) -> str:
        return self.prefix or self.name

    @property
    def stream_name(self) -> str:
        return self.stream or self.name

    def default_options(self):
        return None if self.options is None else self.options()

    def column_names(self, ctx: Context) -> tuple[str, ...]:
        return _resolved(self.columns, ctx)

    def correlated_names(self, ctx: Context) -> tuple[str, ...]:
        return _resolved(self.correlated, ctx)

    def layer_column_names(self, ctx: Context) -> tuple[str, ...]:
        return _resolved(self.layer_columns, ctx)
