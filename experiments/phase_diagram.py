"""The paper's main study: a phase diagram over a load-like knob (x) and a temperature-like knob (y).

    python experiments/phase_diagram.py --preset quick --out runs/quick        # ~2 minutes on a 2-core CPU
    python experiments/phase_diagram.py --preset default --out runs/default    # <= 10 minutes on a 2-core CPU

Any knob may be swept (--widths, --batch-sizes, --lrs, --weight-decays, --label-noise, --data-fractions); the
first swept load-like knob is the x axis, the first swept temperature-like knob the y axis.
"""
import sys

from lljax import cli

if __name__ == "__main__":
    sys.exit(cli.main(description=__doc__.splitlines()[0]))
