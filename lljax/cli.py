"""Command line: `python experiments/<study>.py [options] --out DIR` (or `lljax ...`, `python -m lljax ...`).

Every flag is generated from the configuration (`lljax.config.Config` and the option sections of the phase
rule and of every registered metric family), so names, defaults, help and choices have one source. Presets give
every setting a value; options given on the command line override them. Bad input is reported as one line
starting with 'error:' and exit status 2, before the output folder is touched.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Sequence

from lljax import config as configs
from lljax import jobs, options, pipeline, runtime, sharding, shards
from lljax.config import Config
from lljax.errors import LLJaxError, exit_status


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        self.exit(2, f"error: {message} (see --help)\n")


def _add_flags(group, cls, prefix: str, key_prefix: str, defaults) -> None:
    """One flag per declared option of `cls`: `--<prefix>-<field>`, storing under '<key_prefix><field>'."""
    types_ = options.field_types(cls)
    for f in options.fields(cls):
        kind, _, element = types_[f.name]
        meta = f.metadata
        flag = meta.get("flag") or "--" + (f"{prefix}-" if prefix else "").replace("_", "-") + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = meta["help"] + ("" if kind is bool or default is None else f" (default: {shown})")
        dest = key_prefix + f.name
        choices = options.choices_of(f)
        if kind is bool:
            if meta.get("negate"):
                group.add_argument(meta["negate"], dest=dest, action="store_false", default=None, help=help_text +
                                   " (default); this flag turns it off")
            else:
                group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None,
                                   help=help_text)
            continue
        base = element if kind is tuple else kind
        metavar = meta.get("metavar") or (f.name.rstrip("s").upper() if kind is tuple else None)
        group.add_argument(flag, dest=dest, type=meta.get("parse") or base, default=None, choices=choices,
                           help=help_text, metavar=metavar if not choices else None,
                           **({"nargs": "+"} if kind is tuple else {}))


def parser(description: str, presets: dict[str, dict]) -> argparse.ArgumentParser:
    p = _Parser(description=description)
    p.add_argument("--out", required=True,
                   help="results folder (created; an existing one with the same configuration is resumed)")
    p.add_argument("--preset", choices=sorted(presets), default="quick" if "quick" in presets else None,
                   help="base settings that the options below override (default: quick)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--timings", action="store_true", help="print where the time went (every run writes timings.json)")
    j = p.add_argument_group("independent jobs (see docs/distributed.md)")
    j.add_argument("--shard", metavar="I/N", help="compute shard I of N of the groups into the shared --out")
    j.add_argument("--workers", type=int, metavar="K", help="run K shards as local processes sharing this "
                   "machine (one GPU each, a share of one GPU's memory, or a share of the CPU cores)")
    j.add_argument("--launcher", choices=("slurm", "local"), help="submit the shards as a job array through "
                   "submitit (local: its local executor, the same code path)")
    j.add_argument("--shards", type=int, metavar="N", help="shards of a --launcher run (default: 8, at most the "
                   "number of groups)")
    j.add_argument("--wait", action="store_true", help="with --launcher slurm: wait for every job")
    for name, kind, text in (("partition", str, "SLURM partition"), ("gpus-per-task", int, "GPUs per job"),
                             ("cpus-per-task", int, "CPUs per job"), ("time", int, "time limit per job, minutes"),
                             ("mem-gb", int, "memory per job, GB"),
                             ("array-parallelism", int, "jobs of the array running at once")):
        j.add_argument(f"--slurm-{name}", type=kind, help=text)
    defaults = Config()
    _add_flags(p.add_argument_group("run"), Config, "", "", defaults)
    for section, (cls, prefix) in configs.sections().items():
        titles = {"phase": "phase rule (see lljax/phases.py)", "uncertainty": "intervals and phase stability "
                  "(see lljax/uncertainty.py)", "track": "metrics along training (see lljax/tracking.py)",
                  "transformer": "the built-in transformer (see lljax/models.py)",
                  "task": "generated tasks: modular, sparse_parity, counter (see lljax/tasks.py)",
                  "milestones": "accuracy milestones and Liu et al.'s phases (see lljax/milestones.py)"}
        title = titles.get(section, f"metric family {section!r}")
        _add_flags(p.add_argument_group(title), cls, prefix, f"{prefix}_", cls())
    return p


def config_from_args(args: argparse.Namespace, presets: dict[str, dict]) -> Config:
    """Preset values overridden by the options given."""
    values: dict[str, Any] = dict(presets.get(args.preset, {}))
    ignored = {"out", "preset", "no_progress", "timings", "shard", "workers", "launcher", "shards", "wait"}
    ignored |= {k for k in vars(args) if k.startswith("slurm_")}
    for name, given in vars(args).items():
        if name not in ignored and given is not None:
            values[name] = tuple(given) if isinstance(given, list) else given
    return Config.from_dict(values)


def report_main(argv: Sequence[str]) -> int:
    """`lljax report --out DIR`: the tables, figures and report of a run folder again, from its stored results."""
    p = _Parser(prog="lljax report", description="Write a run folder's tables, figures and report again from its "
                "stored group results (nothing is trained); names the missing groups of an unfinished run.")
    p.add_argument("--out", required=True, help="the run folder")
    args = p.parse_args(argv)

    def rebuild():
        pipeline.rebuild(args.out)

    return exit_status(rebuild)


def main(argv: Sequence[str] | None = None, description: str = "Phase diagram of a grid of models",
         presets: dict[str, dict] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["report"]:
        return report_main(argv[1:])
    if argv[:1] == ["spectra"]:  # a saved model's weight spectra, no data (`lljax.checkpoint_spectra`)
        from lljax import checkpoint_spectra

        return checkpoint_spectra.main(argv[1:])
    presets = configs.PRESETS if presets is None else presets
    args = parser(description, presets).parse_args(argv)
    # a metric's host callback that fails (an SVD that does not converge) is reported as one line, not logged
    # with its traceback by JAX as well
    logging.getLogger("jax._src.callback").setLevel(logging.CRITICAL)

    def command():
        sharding.initialize_distributed()  # several hosts, when the environment asks (docs/distributed.md)
        runtime.use_all_cpu_cores()
        config = config_from_args(args, presets)
        configs.validate(config)
        if args.workers is not None:
            if args.workers < 1:
                raise LLJaxError(f"--workers must be at least 1, got {args.workers}")
            return jobs.run_workers(config, args.workers, args.out, not args.no_progress)
        if args.launcher is not None:
            from lljax import grid

            groups = len(grid.group_members(grid.grid_members(config.knob_values(), config.seeds)))
            count = args.shards or min(8, groups)
            if count < 1:
                raise LLJaxError(f"--shards must be at least 1, got {count}")
            slurm = {k[len("slurm_"):]: v for k, v in vars(args).items() if k.startswith("slurm_")}
            return jobs.submit(config, args.out, count, args.launcher, slurm, args.wait)
        shard = shards.parse_shard(args.shard) if args.shard else None
        runtime.enable_compilation_cache()
        pipeline.run(config, args.out, progress=not args.no_progress, shard=shard, print_timings=args.timings)

    return exit_status(command)


if __name__ == "__main__":
    sys.exit(main())
