"""The run's configuration: core fields, the phase rule, one section per metric family; presets; validation.

`Config` is a frozen dataclass. Every field is declared with `lljax.options.option` (help, bounds, choices), so
the command line's flags are generated from it (`lljax.cli`). Metric families' options live in `families`
(family name -> its options dataclass; a family not listed there uses its defaults); in config.json each is a
section under the family's name, beside the sections 'phase' (the phase rule's thresholds) and 'uncertainty'
(intervals and stability). Flat keys `<prefix>_<field>`
(`hessian_samples`, `curve_lr`, `phase_cka`) are accepted everywhere a configuration is read from a dict:
presets, `Config.from_dict`, `Config.replace`.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping

from lljax import conv, data, losses, metrics, milestones, models, options, phases, precision, probe, registry, tasks
from lljax import tracking, train, uncertainty
from lljax.errors import LLJaxError

option = options.option


def parse_batch_size(value: str) -> int:
    """A command-line batch size: an integer, or 'full' (`train.FULL_BATCH`)."""
    return train.FULL_BATCH if value == "full" else int(value)


KNOB_FIELDS = {"widths": "width", "batch_sizes": "batch_size", "lrs": "lr", "weight_decays": "weight_decay",
               "momentum": "momentum", "label_noise": "label_noise", "data_fractions": "data_fraction"}


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole study. List-valued knob fields are swept; the grid is their cartesian product x `seeds`."""

    dataset: str = option("mnist1d", "mnist1d, cifar10, mnist, a generated task (modular, sparse_parity, counter: "
                                     "--task-...), or PATH.npz holding x_train, y_train, x_test, y_test",
                          metavar="NAME|PATH.npz")
    data_dir: str | None = option(None, "folder holding cifar-10-batches-py or the MNIST IDX files")
    model: str = option("mlp", "a registered model (mlp, cnn, resnet18, transformer) or package.module:factory, a "
                               "factory(width, num_classes) -> flax.linen.Module, (..., *, rngs) -> nnx.Module or "
                               "(..., *, key) -> eqx.Module", metavar="NAME|MODULE:FACTORY")
    depth: int | None = option(None, "passed to a model factory that takes `depth` (mlp: hidden layers, default 2)",
                               low=1)
    loss: str = option("cross_entropy", "per-example loss: cross_entropy (integer labels) or mse (float targets), "
                                        "or package.module:attribute of an lljax.losses.Loss",
                       metavar="NAME|MODULE:LOSS")
    losses: tuple[str, ...] | None = option(
        None, "losses swept as a knob, each a group of its own (Zhou et al. 2022): cross_entropy, label_smoothing, "
              "focal, mse_onehot; one value: as --loss, with a loss column in the tables",
        flag="--losses", choices=losses.SWEPT_LOSSES)
    label_smoothing: float = option(0.05, "label_smoothing's a: (1 - a) CE + a mean_k(-log p_k), in [0, 1)")
    focal_gamma: float = option(3.0, "focal's gamma: -(1 - p_y)^gamma log p_y, at least 0")
    mse_scale: float = option(15.0, "mse_onehot's target: the one-hot label times this scale, above 0")
    fitted_error: float = option(
        0.01, "in a grid over losses (--losses), the phase rule's fitted test: mean training error below this (the "
              "training loss's units differ by loss)", low=0, low_open=True, high=1)
    sam_rhos: tuple[float, ...] | None = option(None, "radii of sharpness-aware minimisation (Foret et al. 2021) "
                                                      "swept as a temperature-like knob; 0: plain training",
                                                flag="--sam-rho", metavar="RHO")
    optimizer: str = option("sgd", "sgd (momentum, coupled weight decay: the paper's), adam, adamw, or "
                                   "package.module:attribute", metavar="NAME|MODULE:OPTIMIZER")
    widths: tuple[int, ...] = option((8, 32, 128), "model widths (the load the model factory receives)")
    batch_sizes: tuple[int, ...] = option((64,), "minibatch sizes; full (or 0): full-batch training, every step "
                                                 "on the member's whole subset", parse=parse_batch_size,
                                          metavar="B|full")
    lrs: tuple[float, ...] = option((0.05,), "learning rates")
    weight_decays: tuple[float, ...] = option((5e-4,), "weight decays")
    momentum: tuple[float, ...] = option((0.9,), "momenta (Adam: beta1)")
    beta2: float | None = option(None, "Adam's and AdamW's second-moment decay (default: 0.999, optax's; the grokking "
                                       "literature's 0.98)", low=0, high=1)
    warmup_steps: int = option(0, "linear learning-rate warm-up over the first steps (0: none)", low=0)
    label_noise: tuple[float, ...] = option((0.0,), "fractions of training labels replaced by a random class")
    data_fractions: tuple[float, ...] = option((1.0,), "fractions of the training set each model sees")
    seeds: int = option(2, "models per grid point", low=1)
    shared_data: bool = option(True, "all seeds at a grid point see one training view (subset and noisy labels), "
                                     "as the paper", negate="--per-seed-data")
    epochs: int = option(30, "training epochs", low=1)
    schedule: str = option("step", "learning-rate schedule: step = x0.1 at 75%% of training (the paper's), "
                                   "cosine, constant", choices=train.SCHEDULES)
    metrics: tuple[str, ...] | None = option(None, "metric families to compute (default: every family on by "
                                                   "default); 'loss' is always computed", metavar="NAME")
    seed: int = option(0, "base random seed")
    eval_batch_size: int = option(1000, "examples per evaluation chunk", low=1)
    max_pairs: int | None = option(None, "pairs of seeds per grid point for the pair families (default: all)", low=1)
    max_members_per_chunk: int | None = option(None, "cap on models per compiled call (default: sized from device "
                                                     "memory)", low=1)
    conv: str = option("auto", "convolution strategy for ensembles: auto (im2col on a CPU; elsewhere the fastest of a "
                               "timed probe, cached), grouped, map, im2col (lljax.conv)", choices=conv.STRATEGIES)
    conv_chunk: int = option(1, "members per slice of the map convolution strategy", low=1)
    conv_probe: str = option("accelerator", "when --conv auto probes: accelerator (not on a CPU), on, off "
                                            "(conv.rule decides)", choices=probe.MODES)
    precision: str = option("float32", "training arithmetic: float32 (full-precision matmuls), tf32, bf16 "
                                       "(bfloat16 compute, float32 master weights); metrics stay float32",
                            choices=tuple(precision.POLICIES))
    phase: phases.Thresholds = dataclasses.field(default_factory=phases.Thresholds)
    uncertainty: uncertainty.UncertaintyOptions = dataclasses.field(default_factory=uncertainty.UncertaintyOptions)
    track: tracking.TrackOptions = dataclasses.field(default_factory=tracking.TrackOptions)
    transformer: models.TransformerOptions = dataclasses.field(default_factory=models.TransformerOptions)
    task: tasks.TaskOptions = dataclasses.field(default_factory=tasks.TaskOptions)
    milestones: milestones.MilestoneOptions = dataclasses.field(default_factory=milestones.MilestoneOptions)
    families: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    # ------------------------------------------------------------------------------------------ access

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The families to compute: 'loss' first, then the requested ones in registration order."""
        requested = metrics.default_names() if self.metrics is None else self.metrics
        return ("loss", *[name for name in metrics.with_companions(requested) if name != "loss"])

    def options(self, name: str):
        """The options of family `name`: as configured, else its defaults (a companion family: the tuple of its
        families' options)."""
        family = metrics.get(name)
        if family.companion_of:
            return tuple(self.options(other) for other in family.companion_of)
        return self.families.get(name) or family.default_options()

    @property
    def thresholds(self) -> phases.Thresholds:
        return self.phase

    def knob_values(self) -> dict[str, tuple]:
        """Every knob's values; the recipe knobs (`grid.RECIPE_KNOBS`) only where the run has them
        (`loss_is_knob`, `uses_sam`)."""
        values = {knob: getattr(self, name) for name, knob in
                  (("widths", "width"), ("batch_sizes", "batch_size"), ("lrs", "lr"),
                   ("weight_decays", "weight_decay"), ("momentum", "momentum"), ("data_fractions", "data_fraction"),
                   ("label_noise", "label_noise"))}
        if self.loss_is_knob:
            values["loss"] = tuple(self.losses)
        if self.uses_sam:
            values["sam_rho"] = tuple(self.sam_rhos)
        return values

    @property
    def loss_is_knob(self) -> bool:
        """Whether the loss is a knob of the grid: --losses given, other than cross-entropy alone (which is plain
        training's loss and leaves the tables as they were)."""
        return self.losses is not None and tuple(self.losses) != ("cross_entropy",)

    @property
    def uses_sam(self) -> bool:
        """Whether the run trains with SAM: --sam-rho given with a radius above 0 (radius 0 alone is plain
        training, the same program and numbers as without the option)."""
        return self.sam_rhos is not None and any(r != 0 for r in self.sam_rhos)

    def loss_named(self, name) -> losses.Loss:
        """A loss by name with this run's parameters (--label-smoothing, --focal-gamma, --mse-scale)."""
        return losses.build(name, self.label_smoothing, self.focal_gamma, self.mse_scale)

    @property
    def dataset_name(self) -> str:
        return data.dataset_name(self.dataset)

    # ------------------------------------------------------------------------------------------ dicts

    def to_dict(self) -> dict:
        """The resolved configuration: core fields, 'phase', and a section for every family with options."""
        out = {f.name: getattr(self, f.name) for f in options.fields(Config)}
        if all(out[k] == v for k, v in RECIPE_DEFAULTS.items()):  # config.json as before the recipe knobs existed
            out = {k: v for k, v in out.items() if k not in RECIPE_DEFAULTS}
        out["metrics"] = list(self.metric_names)
        out.update({name: dataclasses.asdict(getattr(self, name)) for name in CORE_SECTIONS})
        for name in self.metric_names:
            opts = None if metrics.get(name).companion_of else self.options(name)
            if opts is not None:
                out[name] = dataclasses.asdict(opts)
        return json.loads(json.dumps(out))  # tuples -> lists, as config.json holds them

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def same_run(self, other: "Config") -> bool:
        return self.to_dict() == other.to_dict()

    def differences(self, other: "Config") -> list[str]:
        a, b = self.to_dict(), other.to_dict()
        return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]

    def training_differences(self, other: "Config") -> list[str]:
        """The differences that change what is trained (every key but the measurement's, `measurement_keys`)."""
        measured = set(measurement_keys(self.to_dict())) | set(measurement_keys(other.to_dict()))
        return [k for k in self.differences(other) if k not in measured]

    def measurement_digest(self) -> str:
        """A digest of the settings that only change what is measured on the trained models (the families and
        their options, the pairs, the evaluation chunk, the phase rule and the intervals)."""
        import hashlib

        values = self.to_dict()
        part = {k: values[k] for k in measurement_keys(values)}
        return hashlib.sha1(json.dumps(part, sort_keys=True).encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Config":
        """A configuration from core fields, sections ('phase', family names) and flat `<prefix>_<field>` keys;
        an unknown key is a one-line LLJaxError; config.json's 'resolved' section (what the run read from its data,
        `store.prepare_out_dir`) is not configuration and is ignored."""
        return cls().replace(**{k: v for k, v in values.items() if k != "resolved"})

    def replace(self, **values) -> "Config":
        """A copy with the given core fields, sections or flat section keys changed."""
        core = {f.name for f in dataclasses.fields(Config)} - {*CORE_SECTIONS, "families"}
        sections_: dict[str, dict] = {}
        changes: dict[str, Any] = {}
        known = sections()

        def add(section, value):
            as_dict = value if isinstance(value, Mapping) else dataclasses.asdict(value)
            sections_.setdefault(section, {}).update(as_dict)

        for key, value in values.items():
            if key in core:
                changes[key] = value
            elif key == "families":
                for name, section in value.items():
                    add(name, section)
            elif key in known:
                add(key, value)
            else:
                section, name = _flat_key(key)
                sections_.setdefault(section, {})[name] = value
        changes = options.coerce(Config, changes)
        families = dict(self.families)
        for section, fields_ in sections_.items():
            if section in CORE_SECTIONS:
                changes[section] = _section(CORE_SECTIONS[section], getattr(self, section), fields_, section)
            else:
                family = metrics.get(section)
                if family.options is None:
                    raise LLJaxError(f"metric family {section!r} has no options, got {', '.join(fields_)}")
                families[section] = _section(family.options, self.options(section), fields_, family.flag_prefix)
        return dataclasses.replace(self, **changes, families=families)


# the training-recipe fields and their defaults: config.json records them when any differs
RECIPE_DEFAULTS = {"losses": None, "label_smoothing": 0.05, "focal_gamma": 3.0, "mse_scale": 15.0, "sam_rhos": None,
                   "fitted_error": 0.01}

# sections of every run (not of a metric family): name -> options dataclass; the name is the flags' prefix
CORE_SECTIONS = {"phase": phases.Thresholds, "uncertainty": uncertainty.UncertaintyOptions,
                 "track": tracking.TrackOptions, "transformer": models.TransformerOptions, "task": tasks.TaskOptions,
                 "milestones": milestones.MilestoneOptions}


def measurement_keys(values: Mapping[str, Any]) -> list[str]:
    """The keys of a configuration dict that do not change training: a run folder can be measured again with
    other values of them (`store.prepare_out_dir`) without training again."""
    keys = {"metrics", "max_pairs", "eval_batch_size", "phase", "uncertainty"}
    families = {name for name, family in metrics.FAMILIES.items() if family.options is not None}
    return sorted(k for k in values if k in keys or k in families)


def sections() -> dict[str, tuple[type, str]]:
    """section name -> (options dataclass, flag prefix): the phase rule, the uncertainty analysis and every
    family with options."""
    out = {name: (cls, name) for name, cls in CORE_SECTIONS.items()}
    out.update({name: (family.options, family.flag_prefix) for name, family in metrics.FAMILIES.items()
                if family.options is not None})
    return out


def _flat_key(key: str) -> tuple[str, str]:
    for section, (cls, prefix) in sections().items():
        name = key[len(prefix) + 1:] if key.startswith(prefix + "_") else None
        if name and name in {f.name for f in dataclasses.fields(cls)}:
            return section, name
    raise LLJaxError(f"unknown configuration field {key!r}")


def _section(cls, current, values: Mapping[str, Any], prefix: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise LLJaxError(f"unknown {prefix} option(s): {', '.join(unknown)}")
    return dataclasses.replace(current, **options.coerce(cls, dict(values)))


# ------------------------------------------------------------------------------------------ presets

PAPER_WIDTHS = (2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128)
PAPER_BATCH_SIZES = (16, 19, 24, 27, 32, 44, 64, 92, 128, 180, 256, 364, 512, 724, 1024)

PRESETS: dict[str, dict[str, Any]] = {
    # <= 2 minutes on a 2-core CPU: the paper's picture in miniature (width x learning rate).
    "quick": dict(model="mlp", widths=(8, 32, 128, 256), lrs=(0.03, 0.1, 0.3), batch_sizes=(64,), seeds=2,
                  epochs=40, curve_epochs=60, hessian_samples=500),
    # <= 10 minutes on a 2-core CPU.
    "default": dict(model="mlp", widths=(4, 8, 16, 32, 64, 128, 256), lrs=(0.01, 0.03, 0.1, 0.3), batch_sizes=(64,),
                    seeds=3, epochs=60),
    # The paper's main grid (Yang et al. 2021 Figure 2): ResNet18 on CIFAR-10 (--data-dir), 13 widths x 15 batch
    # sizes x 5 seeds = 975 models, 100 epochs, every metric. For GPUs; see docs/distributed.md.
    "paper": dict(dataset="cifar10", model="resnet18", widths=PAPER_WIDTHS, batch_sizes=PAPER_BATCH_SIZES,
                  lrs=(0.05,), weight_decays=(5e-4,), seeds=5, epochs=100, curve_lr=0.05, eval_batch_size=500),
}


# ------------------------------------------------------------------------------------------ validation

def validate(config: Config, custom_dataset: bool = False) -> None:
    """Every check that needs no data: raises LLJaxError naming the first problem. `custom_dataset`: the data
    is passed in Python, so `config.dataset` only names it."""
    if not custom_dataset and not data.is_file_dataset(config.dataset) and config.dataset not in data.DATASETS:
        raise LLJaxError(f"unknown dataset {config.dataset!r}; choose one of {', '.join(data.DATASETS)} or give a "
                         "PATH.npz")
    for rho in config.sam_rhos or ():
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not math.isfinite(rho) or rho < 0:
            raise LLJaxError(f"SAM radius (--sam-rho) must be a non-negative number, got {rho}")
    for name in config.losses or ():
        if name not in losses.SWEPT_LOSSES:
            raise LLJaxError(f"unknown loss {name!r} in --losses; choose from {', '.join(losses.SWEPT_LOSSES)}")
    if config.losses is not None and config.loss != "cross_entropy":
        raise LLJaxError("give the loss by --loss or by --losses, not both")
    for name in ("label_smoothing", "focal_gamma", "mse_scale"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise LLJaxError(f"{name.replace('_', ' ')} must be a finite number, got {value!r}")
    losses.check_parameters(config.label_smoothing, config.focal_gamma, config.mse_scale)
    for name, values in {**config.knob_values(), "loss": tuple(config.losses or ("x",)),
                         "sam_rho": tuple(config.sam_rhos or (0.0,))}.items():
        if len(values) == 0:
            raise LLJaxError(f"empty grid: no values for {name}")
        if len(set(values)) != len(values):
            raise LLJaxError(f"repeated values for {name}: {list(values)}")
    for w in config.widths:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not float(w).is_integer() or w <= 0:
            raise LLJaxError(f"width must be a positive integer, got {w}")
    for b in config.batch_sizes:
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not float(b).is_integer() or b < 0:
            raise LLJaxError(f"batch size must be a positive integer or full (0), got {b}")
    if config.beta2 is not None and config.beta2 >= 1:
        raise LLJaxError(f"beta2 must be below 1, got {config.beta2:g}")
    for name, values, low_open in (("data fraction", config.data_fractions, True),
                                   ("label-noise fraction", config.label_noise, False),
                                   ("momentum", config.momentum, False)):
        for v in values:
            if not math.isfinite(v) or not (0 < v <= 1 if low_open else 0 <= v <= 1):
                raise LLJaxError(f"{name} must be in {'(0, 1]' if low_open else '[0, 1]'}, got {v}")
    for name, values in (("learning rate", config.lrs), ("weight decay", config.weight_decays)):
        for v in values:
            if not math.isfinite(v) or v < 0 or (name == "learning rate" and v == 0):
                raise LLJaxError(f"{name} must be {'positive' if name == 'learning rate' else 'non-negative'}, "
                                 f"got {v}")
    options.check(config)
    for name in config.metrics or ():
        family = metrics.get(name)  # an unknown name is an error
        if family.companion_of:
            raise LLJaxError(f"metric family {name!r} is computed when {' and '.join(family.companion_of)} all are; "
                             f"ask for those")
    for name in config.metric_names:
        if metrics.get(name).kind == "quad" and config.seeds < 4:
            raise LLJaxError(f"metric family {name!r} needs four seeds per grid point (a surface between four "
                             f"models), got --seeds {config.seeds}")
        opts = None if metrics.get(name).companion_of else config.options(name)
        if opts is not None:
            options.check(opts, metrics.get(name).flag_prefix)
            if hasattr(opts, "validate"):
                opts.validate()
    options.check(config.uncertainty, "uncertainty")
    options.check(config.track, "track")
    options.check(config.transformer, "transformer")
    options.check(config.milestones, "milestones")
    if config.dataset in tasks.TASKS:
        options.check(config.task, "task")
        config.task.validate()
    tracking.validate(config)


def check_plugins(config: Config, model=None, loss=None, optimizer=None) -> tuple[Any, losses.Loss, Any]:
    """The model factory, loss and optimiser the run uses (the objects passed in Python, else those the config
    names), each checked: an import path that does not import or names the wrong kind of object is a one-line
    LLJaxError."""
    factory = models.factory(config.model if model is None else model)
    if config.loss_is_knob and loss is not None:
        raise LLJaxError("the losses are a knob of this run (--losses); pass no loss object")
    loss = config.loss_named(config.losses[0] if config.loss_is_knob else config.loss if loss is None else loss)
    optimizer = registry.resolve(config.optimizer if optimizer is None else optimizer, train.OPTIMIZERS,
                                 "optimizer")
    if config.depth is not None and not models.takes_depth(factory):
        raise LLJaxError(f"model {registry.describe(model or config.model)!r} takes no depth argument; "
                         "leave --depth unset")
    for name, _ in config.transformer.extras():
        if not models.takes(factory, name):
            raise LLJaxError(f"model {registry.describe(model or config.model)!r} takes no {name} argument; leave "
                             f"--transformer-{name.replace('_', '-')} unset")
    if not loss.classification and any(p > 0 for p in config.label_noise):
        raise LLJaxError(f"label noise needs class labels; the {loss.name} loss has none")
    if config.milestones.every and loss.error is None:
        raise LLJaxError(f"--milestones-every measures accuracy; the {loss.name} loss has no error metric")
    return factory, loss, optimizer


def validate_with_data(config: Config, dataset: data.Dataset, loss: losses.Loss) -> None:
    """Checks that need the dataset: its labels for the loss, batch sizes against the (smallest) training
    subset."""
    data.check_labels(dataset, loss.classification)
    n = len(dataset.y_train)
    smallest = data.subset_size_host(n, min(config.data_fractions))
    for b in config.batch_sizes:
        if b == train.FULL_BATCH:
            continue
        if b > smallest:
            where = "the training set" if smallest == n else f"the smallest training subset ({smallest} examples)"
            raise LLJaxError(f"batch size {b} is larger than {where} ({n} examples in {dataset.name})"
                             if smallest == n else f"batch size {b} is larger than {where}")
