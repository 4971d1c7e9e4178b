"""Local workers against one process (issue 14): the same study as one `lljax` process (one JAX device per core)
and as `--workers K` (K processes, a share of the cores each), whole-process wall time and the numbers of both.

    python benchmarks/workers.py [--preset default] [--workers 2] [--out FILE.json]

Each command runs twice (into fresh folders; the second with a warm compilation cache) and the faster counts.
Printed: both times, their ratio, and per column of members.csv / pairs.csv the largest difference (absolute
and over the column's largest magnitude) and how many phases differ
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


def differences(a: Path, b: Path) -> dict:
    """Per numeric column of members.csv / pairs.csv: the largest |difference| between the two runs, and that
    difference over the column's largest magnitude (a column-wide scale: values near zero, such as mc, would
    make a per-value relative difference meaningless). Also the phases of grid.csv that differ."""
    out = {}
    for name in ("members.csv", "pairs.csv"):
        rows = [list(csv.DictReader(open(d / name))) for d in (a, b)]
        for column in rows[0][0]:
            try:
                u = [float(r[column]) for r in rows[0]]
                v = [float(r[column]) for r in rows[1]]
            except ValueError:
                continue
            pairs = [(x, y) for x, y in zip(u, v) if x == x and y == y]
            if not pairs:
                continue
            worst = max(abs(x - y) for x, y in pairs)
            scale = max(max(abs(x), abs(y)) for x, y in pairs) or 1.0
            out[f"{name}:{column}"] = {"abs": worst, "of_column_scale": worst / scale}
    phases = [[r["phase"] for r in csv.DictReader(open(d / "grid.csv"))] for d in (a, b)]
    return {"columns": out, "largest_of_column_scale": max(c["of_column_scale"] for c in out.values()),
            "phases_differing": sum(x != y for x, y in zip(*phases))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="default")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--runs", type=int, default=2, help="runs of each command; the fastest counts (default 2)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="lljax-workers-"))
    base = [sys.executable, "-m", "lljax", "--preset", args.preset, "--no-progress"]
    times = {"one": [], "workers": []}
    for run in range(args.runs):
        for kind, extra in (("one", []), ("workers", ["--workers", str(args.workers)])):
            folder = root / f"{kind}-{run}"
            times[kind].append(timed([*base, *extra, "--out", str(folder)]))
    one, workers = min(times["one"]), min(times["workers"])
    result = {"preset": args.preset, "workers": args.workers, "one_process_s": one, "workers_s": workers,
              "all_times": times, "ratio": one / workers, "load_average": load_average(),
              "differences": differences(root / f"one-{args.runs - 1}", root / f"workers-{args.runs - 1}")}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    shutil.rmtree(root)
    print(f"workers_speedup: {result['ratio']:.2f}")


if __name__ == "__main__":
    main()
