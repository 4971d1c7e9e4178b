"""Command line: `python experiments/<study>.py [options] --out DIR` (or the `lljax` console script).

Presets give every setting a value; options given on the command line override them. Bad input is reported as
one line starting with 'error:' and exit status 2, before the output folder is touched.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Sequence

from lljax import data, experiment, models, sharding
from lljax.errors import LLJaxError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        self.exit(2, f"error: {message} (see --help)\n")


# option -> Config field
LIST_OPTIONS = {"widths": int, "batch_sizes": int, "lrs": float, "weight_decays": float, "momentum": float,
                "label_noise": float, "data_fractions": float}


def parser(description: str, presets: dict[str, dict]) -> argparse.ArgumentParser:
    p = _Parser(description=description)
    p.add_argument("--out", required=True,
                   help="results folder (created; an existing one with the same configuration is resumed)")
    p.add_argument("--preset", choices=sorted(presets), default="quick" if "quick" in presets else None,
                   help="base settings that the options below override (default: quick)")
    p.add_argument("--dataset", choices=data.DATASETS)
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py or the MNIST IDX files")
    p.add_argument("--model", choices=models.MODELS)
    p.add_argument("--depth", type=int, help="hidden layers of the MLP (default 2)")
    for option, kind in LIST_OPTIONS.items():
        p.add_argument("--" + option.replace("_", "-"), nargs="+", type=kind, metavar=option[:-1].upper())
    p.add_argument("--seeds", type=int, help="models per grid point")
    p.add_argument("--per-seed-data", dest="shared_data", action="store_false", default=None,
                   help="each seed draws its own data subset and noisy labels (default: one view per run, "
                        "shared by all seeds, as the paper)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--schedule", choices=("step", "cosine", "constant"),
                   help="learning-rate schedule: step = x0.1 at 75%% of training (the paper's)")
    p.add_argument("--metrics", nargs="+", metavar="NAME",
                   help=f"metric families to compute (default: all of "
                        f"{', '.join(experiment.METRIC_FAMILIES + experiment.PAIR_FAMILIES)})")
    p.add_argument("--seed", type=int, help="base random seed (default 0)")
    g = p.add_argument_group("metrics")
    g.add_argument("--hessian-samples", type=int, help="training samples for the Hessian metrics (default 1000)")
    g.add_argument("--hessian-top-k", type=int, help="top Hessian eigenvalues per model (default 3)")
    g.add_argument("--max-pairs", type=int, help="pairs of seeds per grid point for curves/CKA/L2 (default all)")
    g.add_argument("--curve-epochs", type=int, help="curve-fitting epochs (default: the training epochs)")
    g.add_argument("--curve-lr", type=float, help="curve-fitting learning rate (default 0.2)")
    g.add_argument("--curve-points", type=int, help="points along t where curves are evaluated (default 21)")
    g = p.add_argument_group("phase rule (see lljax/phases.py)")
    g.add_argument("--phase-train-loss", type=float, help="fitted when mean training loss < this, nats (default 0.05)")
    g.add_argument("--phase-mc-band", type=float,
                   help="barrier when mc < -band; mc is a fraction of training error (default 0.01)")
    g.add_argument("--phase-cka", type=float, help="IV-B when CKA of softmax outputs >= this, else IV-A (default 0.7)")
    p.add_argument("--max-members-per-chunk", type=int,
                   help="cap on models per compiled call (default: sized from device memory)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace, presets: dict[str, dict]) -> experiment.Config:
    """Preset values overridden by the options given."""
    values = dict(presets.get(args.preset, {}))
    for field in dataclasses.fields(experiment.Config):
        given = getattr(args, field.name, None)
        if given is not None:
            values[field.name] = tuple(given) if isinstance(given, list) else given
    values.setdefault("metrics", experiment.METRIC_FAMILIES + experiment.PAIR_FAMILIES)
    return experiment.Config(**values)


def main(argv: Sequence[str] | None = None, description: str = "Phase diagram of a grid of models",
         presets: dict[str, dict] | None = None) -> int:
    presets = experiment.PRESETS if presets is None else presets
    args = parser(description, presets).parse_args(argv)
    try:
        sharding.initialize_distributed()  # several hosts, when the environment asks (docs/distributed.md)
        experiment.use_all_cpu_cores()
        config = config_from_args(args, presets)
        experiment.enable_compilation_cache()
        experiment.run(config, args.out, progress=not args.no_progress)
    except LLJaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
