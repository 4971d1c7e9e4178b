"""`python -m lljax [options] --out DIR`: the phase-diagram command line (see `lljax.cli`)."""
import sys

from lljax import cli

sys.exit(cli.main())
