"""Width (load) x learning rate (temperature): the phase diagram with the learning rate as temperature.

    python experiments/width_lr.py --preset quick --out runs/width_lr      # about 2 minutes on a 2-core CPU
    python experiments/width_lr.py --preset default --out runs/width_lr    # about 10 minutes

The same study as `phase_diagram.py`'s presets (which it shares); kept as its own script beside the others.
"""
import sys

from lljax import cli, experiment

PRESETS = experiment.PRESETS

if __name__ == "__main__":
    sys.exit(cli.main(description=__doc__.splitlines()[0], presets=PRESETS))
