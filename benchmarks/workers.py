"""Local workers against one process (issue 14): the same study as one `lljax` process (one JAX device per core)
and as `--workers K` (K processes, a share of the cores each), whole-process wall time and the numbers of both.

    python benchmarks/workers.py [--preset default] [--workers 2] [--out FILE.json]

Each command runs twice (into fresh folders; the second with a warm compilation cache) and the faster counts.
Printed: both times, their ratio and the largest relative difference between the two members.csv / pairs.csv
(float rounding: a worker has fewer devices, so its members are sliced differently). On a GPU machine the
workers share the GPU's memory (`XLA_PYTHON_CLIENT_MEM_FRACTION`); this script was run on a CPU only.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import load_average


def timed(cmd) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def largest_difference(a: Path, b: Path) -> float:
    worst = 0.0
    for name in ("members.csv", "pairs.csv"):
        rows = [list(csv.DictReader(open(d / name))) for d in (a, b)]
        for x, y in zip(*rows):
            for k in x:
                try:
                    u, v = float(x[k]), float(y[k])
                except ValueError:
                    continue
                if u == u and v == v:
                    worst = max(worst, abs(u - v) / max(abs(u), abs(v), 1e-6))
    return worst


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="default")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="lljax-workers-"))
    base = [sys.executable, "-m", "lljax", "--preset", args.preset, "--no-progress"]
    times = {"one": [], "workers": []}
    for run in range(2):
        for kind, extra in (("one", []), ("workers", ["--workers", str(args.workers)])):
            folder = root / f"{kind}-{run}"
            times[kind].append(timed([*base, *extra, "--out", str(folder)]))
    one, workers = min(times["one"]), min(times["workers"])
    result = {"preset": args.preset, "workers": args.workers, "one_process_s": one, "workers_s": workers,
              "all_times": times, "ratio": one / workers, "load_average": load_average(),
              "largest_relative_difference": largest_difference(root / "one-1", root / "workers-1")}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    shutil.rmtree(root)
    print(f"workers_speedup: {result['ratio']:.2f}")


if __name__ == "__main__":
    main()
