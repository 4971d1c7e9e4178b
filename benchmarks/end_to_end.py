"""A small study as a user times it: the whole `lljax` process against a PyTorch script doing the same training one
model after another (the original code's way), with a cold and a warm compilation cache (issue 16).

    pip install -r benchmarks/requirements-bench.txt
    python benchmarks/end_to_end.py [--repeats 2] [--skip-quick] [--out FILE.json]

(a) 64 MLPs of width 32 (MNIST-1D, 8 learning rates x 8 seeds, batch 128, 40 epochs, SGD momentum 0.9, weight
    decay 5e-4, the step schedule), loss and accuracy only: `python -m lljax ... --metrics loss` against a plain
    PyTorch script (DataLoader, torch.optim.SGD, train and test loss and accuracy at the end, a CSV written),
    each as a fresh process; lljax cold (an empty compilation cache) and warm (the same command again).
(b) the quick preset, lljax alone, cold and warm, with the load average.

MNIST-1D is generated once beforehand into the cache folders (its generation is not timed). Each measurement is
the fastest of --repeats runs. Printed: the times, lljax's own breakdown (timings.json) and the ratios; the last
line is `speedup_vs_pytorch_warm: X.XX`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from common import load_average

LRS = ("0.01", "0.02", "0.03", "0.05", "0.07", "0.1", "0.15", "0.2")
STUDY = ["--widths", "32", "--lrs", *LRS, "--seeds", "8", "--batch-sizes", "128", "--epochs", "40", "--metrics",
         "loss"]

TORCH_SCRIPT = textwrap.dedent('''
    import csv, sys
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    torch.set_num_threads(1)
    with np.load(sys.argv[1]) as f:
        x, y, x_test, y_test = (f[k] for k in ("x", "y", "x_test", "y_test"))
    train = TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64))
    xt, yt = torch.tensor(x_test, dtype=torch.float32), torch.tensor(y_test, dtype=torch.int64)
    rows = []
    for lr in [float(v) for v in sys.argv[3].split(",")]:
        for seed in range(8):
            torch.manual_seed(seed)
            model = torch.nn.Sequential(torch.nn.Linear(40, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32),
                                        torch.nn.ReLU(), torch.nn.Linear(32, 10))
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, [30], 0.1)
            loader = DataLoader(train, batch_size=128, shuffle=True, drop_last=True)
            loss_fn = torch.nn.CrossEntropyLoss()
            for epoch in range(40):
                for xb, yb in loader:
                    opt.zero_grad()
                    loss_fn(model(xb), yb).backward()
                    opt.step()
                sched.step()
            with torch.no_grad():
                out = [(loss_fn(model(a), b).item(), (model(a).argmax(1) == b).float().mean().item())
                       for a, b in ((train.tensors[0], train.tensors[1]), (xt, yt))]
            rows.append([lr, seed, *out[0], *out[1]])
    with open(sys.argv[2], "w", newline="") as f:
        csv.writer(f).writerows([["lr", "seed", "train_loss", "train_acc", "test_loss", "test_acc"], *rows])
''')


def timed(cmd, env=None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--skip-quick", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    import os

    root = Path(tempfile.mkdtemp(prefix="lljax-e2e-"))
    data_cache = root / "data-cache"
    env = dict(os.environ, LLJAX_CACHE=str(data_cache))
    subprocess.run([sys.executable, "-c", "from lljax import data; data.mnist1d()"], check=True, env=env)
    npz = next(data_cache.glob("mnist1d-*.npz"))
    script = root / "torch_mlps.py"
    script.write_text(TORCH_SCRIPT)
    result = {"load_average_start": load_average()}

    def lljax(name, extra, cold):
        best, breakdown = None, None
        for r in range(args.repeats):
            cache = root / f"cache-{name}-{r}"
            if cold or not cache.exists():
                shutil.rmtree(cache, ignore_errors=True)
                shutil.copytree(data_cache, cache)
            if not cold:  # warm: the same command once before, into its own folder
                subprocess.run([sys.executable, "-m", "lljax", *extra, "--out", str(root / f"{name}-prime-{r}"),
                                "--no-progress"], check=True, capture_output=True,
                               env={**env, "LLJAX_CACHE": str(cache)})
            out = root / f"{name}-{'cold' if cold else 'warm'}-{r}"
            seconds = timed([sys.executable, "-m", "lljax", *extra, "--out", str(out), "--no-progress"],
                            {**env, "LLJAX_CACHE": str(cache)})
            if best is None or seconds < best:
                best, breakdown = seconds, json.loads((out / "timings.json").read_text())
        return best, breakdown

    torch_s = min(timed([sys.executable, str(script), str(npz), str(root / f"torch-{r}.csv"), ",".join(LRS)])
                  for r in range(args.repeats))
    result["a"] = {"pytorch_s": torch_s}
    for cold in (True, False):
        seconds, breakdown = lljax("a", STUDY, cold)
        key = "cold" if cold else "warm"
        result["a"][f"lljax_{key}_s"], result["a"][f"lljax_{key}_timings"] = seconds, breakdown
        result["a"][f"speedup_{key}"] = torch_s / seconds
        print(f"(a) lljax {key}: {seconds:.1f} s, PyTorch {torch_s:.1f} s: {torch_s / seconds:.1f}x")
    if not args.skip_quick:
        result["b"] = {}
        for cold in (True, False):
            seconds, breakdown = lljax("b", ["--preset", "quick"], cold)
            key = "cold" if cold else "warm"
            result["b"][f"lljax_{key}_s"], result["b"][f"lljax_{key}_timings"] = seconds, breakdown
            print(f"(b) quick preset {key}: {seconds:.1f} s")
    result["load_average_end"] = load_average()
    print(json.dumps({k: v for k, v in result.items() if k not in ("a", "b")}))
    for part in ("a", "b"):
        for key in ("cold", "warm"):
            t = result.get(part, {}).get(f"lljax_{key}_timings")
            if t:
                sections = {n: s["wall"] for n, s in t["sections"].items()}
                print(f"({part}) {key} breakdown: import {t['import']:.1f}, compile {t['compile_total']:.1f}, "
                      + ", ".join(f"{n} {v:.1f}" for n, v in sorted(sections.items(), key=lambda kv: -kv[1])))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    shutil.rmtree(root, ignore_errors=True)
    print(f"speedup_vs_pytorch_warm: {result['a']['speedup_warm']:.2f}")


if __name__ == "__main__":
    main()
