"""MNIST-1D accuracy check: lljax's MLP and CNN against the dataset's published baselines (Greydanus 2020:
MLP about 68%, CNN about 94% test accuracy), trained by the ordinary pipeline (SGD momentum 0.9, step schedule).

    python experiments/baselines.py --out runs/baselines      # about 5 minutes on a 2-core CPU

Writes both runs under DIR (mlp/, cnn/) and prints the mean test accuracy of each beside the published figure.
"""
import argparse
import sys
from pathlib import Path

from lljax import experiment
from lljax.errors import LLJaxError

PUBLISHED = {"mlp": 0.68, "cnn": 0.94}
RUNS = {
    # the baseline MLP has two hidden layers of 100 units; the CNN three conv layers of 25 channels
    "mlp": experiment.Config(model="mlp", widths=(100,), lrs=(0.1,), seeds=3, epochs=60, metrics=("loss",)),
    "cnn": experiment.Config(model="cnn", widths=(25,), lrs=(0.05,), seeds=3, epochs=60, metrics=("loss",)),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    experiment.use_all_cpu_cores()
    experiment.enable_compilation_cache()
    lines = []
    try:
        for name, config in RUNS.items():
            outcome = experiment.run(config, Path(args.out) / name, progress=False)
            accuracy = sum(float(m["member/test_acc"].mean()) for m in outcome.group_metrics) / len(outcome.groups)
            lines.append(f"{name}: mean test accuracy {accuracy:.3f} over {config.seeds} seeds "
                         f"(published baseline {PUBLISHED[name]:.2f}), {outcome.seconds:.0f} s")
    except LLJaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
