"""A 124M-parameter model (GPT-2-small shapes) in safetensors: `lljax spectra` against WeightWatcher 0.7.7 on the
same weights, agreement and time (issue 24).

    pip install -r benchmarks/requirements-bench.txt
    python benchmarks/weightwatcher_124m.py [--small] [--out FILE.json]

The model (not timed): GPT-2 small's weights under Hugging Face's names (12 blocks, d = 768, vocabulary 50257,
1024 positions: wte, wpe, per block attn.c_attn (768, 2304), attn.c_proj (768, 768), mlp.c_fc (768, 3072),
mlp.c_proj (3072, 768) stored (in, out) as GPT-2's Conv1D stores them, LayerNorm scales and biases, biases, and
the causal-mask buffer attn.bias (1, 1, 1024, 1024)), float32, random with a fixed seed: Student-t entries (3
degrees of freedom, heavy-tailed spectra) x 0.02. `--small`: 2 blocks, d = 128, vocabulary 5000, 256 positions.

Timed, in this one process, one after the other:
- lljax: `lljax spectra FILE --out DIR --no-progress --no-selection` (WeightWatcher has no E-TPL/EXP fits;
  `checkpoint_spectra.main`, float64, the file memory-mapped,
  a layer at a time): cold (its programs compiled, JAX's persistent compilation cache pointed at an empty folder),
  then WeightWatcher, then lljax again (compiled programs kept), the 1-minute load recorded after each.
- WeightWatcher: `WeightWatcher(model=...).analyze(mp_fit=True, max_N=100000)` on a torch model of nn.Embedding
  (wte, wpe) and nn.Linear layers holding the same float32 weights (Linear weight = the Conv1D weight
  transposed). mp_fit=True: WeightWatcher then computes mp_softrank as lljax does; max_N: its default (50000)
  skips wte (N = 50257). The model is built before the clock starts.

Agreement: every metric WeightWatcher reports (benchmarks/spectra.py's COLUMNS) against details.csv, matched by
layer name, as the worst relative difference over the layers (target for alpha: 1e-4). The last line is
`speedup_vs_weightwatcher: X.XX` (WeightWatcher's time / lljax's cold time).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from common import load_average, machine
from spectra import COLUMNS, TARGETS

SIZES = {"full": dict(blocks=12, d=768, vocab=50257, positions=1024),
         "small": dict(blocks=2, d=128, vocab=5000, positions=256)}


def gpt2_weights(blocks: int, d: int, vocab: int, positions: int, seed: int = 0) -> dict[str, np.ndarray]:
    """GPT-2's tensors (Hugging Face names and layouts), float32, Student-t(3) x 0.02 weights."""
    rng = np.random.default_rng(seed)
    heavy = lambda *shape: (0.02 * rng.standard_t(3, size=shape)).astype(np.float32)
    w = {"wte.weight": heavy(vocab, d), "wpe.weight": heavy(positions, d)}
    mask = np.tril(np.ones((positions, positions), np.float32))[None, None]
    for i in range(blocks):
        h = f"h.{i}."
        w.update({h + "ln_1.weight": np.ones(d, np.float32), h + "ln_1.bias": np.zeros(d, np.float32),
                  h + "attn.bias": mask, h + "attn.c_attn.weight": heavy(d, 3 * d),
                  h + "attn.c_attn.bias": np.zeros(3 * d, np.float32), h + "attn.c_proj.weight": heavy(d, d),
                  h + "attn.c_proj.bias": np.zeros(d, np.float32), h + "ln_2.weight": np.ones(d, np.float32),
                  h + "ln_2.bias": np.zeros(d, np.float32), h + "mlp.c_fc.weight": heavy(d, 4 * d),
                  h + "mlp.c_fc.bias": np.zeros(4 * d, np.float32), h + "mlp.c_proj.weight": heavy(4 * d, d),
                  h + "mlp.c_proj.bias": np.zeros(d, np.float32)})
    w.update({"ln_f.weight": np.ones(d, np.float32), "ln_f.bias": np.zeros(d, np.float32)})
    return w


def torch_model(weights: dict[str, np.ndarray]):
    """A torch module holding the weight matrices as nn.Embedding (wte, wpe) and nn.Linear layers (weight =
    the Conv1D weight transposed), named as the tensors without '.weight' (WeightWatcher reads weights only)."""
    import torch

    model = torch.nn.Module()
    for name, w in weights.items():
        if not name.endswith(".weight") or w.ndim != 2:
            continue
        if name in ("wte.weight", "wpe.weight"):
            layer = torch.nn.Embedding(*w.shape)
            layer.weight.data = torch.from_numpy(w.copy())
        else:
            layer = torch.nn.Linear(*w.shape, bias=False)
            layer.weight.data = torch.from_numpy(np.ascontiguousarray(w.T))
        model.add_module(name[:-len(".weight")].replace(".", "_"), layer)
    return model


def run_lljax(file: Path, out: Path) -> float:
    from lljax import checkpoint_spectra

    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = checkpoint_spectra.main([str(file), "--out", str(out), "--no-progress", "--no-selection"])
    assert code == 0, f"lljax spectra failed ({code})"
    return time.perf_counter() - start


def run_weightwatcher(model):
    import weightwatcher as ww

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        details = ww.WeightWatcher(model=model).analyze(mp_fit=True, max_N=100000)
    return details, time.perf_counter() - start


def differences(ours: list[dict], theirs) -> tuple[dict, int]:
    """The worst relative difference of each metric over the layers both analysed (matched by name)."""
    by_name = {row["name"][:-len(".weight")].replace(".", "_"): row for row in ours}
    worst, matched = {}, 0
    for _, row in theirs.iterrows():
        mine = by_name.get(row["longname"])
        if mine is None:
            continue
        matched += 1
        for name, column in COLUMNS.items():
            a, b = float(mine[column]), float(row[column])
            worst[name] = max(worst.get(name, 0.0), abs(a - b) / max(abs(b), 1e-30))
    return worst, matched


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="a small model (2 blocks, d = 128): a quick check")
    p.add_argument("--out", default=None, help="write all figures to this JSON file")
    args = p.parse_args(argv)
    size = SIZES["small" if args.small else "full"]
    work = Path(tempfile.mkdtemp(prefix="lljax-ww124m-"))
    os.environ["LLJAX_CACHE"] = str(work / "cache")  # cold: an empty persistent compilation cache
    import jax

    from safetensors.numpy import save_file

    weights = gpt2_weights(**size)
    params = sum(w.size for w in weights.values() if not w.ndim == 4)
    file = work / "model.safetensors"
    save_file(weights, str(file))
    model = torch_model(weights)
    del weights
    results = {"machine": machine(), "size": size, "parameters": int(params), "file_bytes": file.stat().st_size,
               "load_average_before": load_average()}
    print(f"{params / 1e6:.1f}M parameters ({size}), {file.stat().st_size / 2**20:.0f} MiB safetensors; "
          f"load {results['load_average_before']} on {results['machine']['cores']} cores")
    cold = run_lljax(file, work / "cold")
    loads = {"after_lljax_cold": load_average()}
    with open(work / "cold" / "details.csv") as f:
        ours = list(csv.DictReader(f))
    print(f"lljax spectra: {len(ours)} layers, {cold:.1f} s cold (compilation included; load "
          f"{loads['after_lljax_cold']})")
    theirs, ww_seconds = run_weightwatcher(model)
    loads["after_weightwatcher"] = load_average()
    worst, matched = differences(ours, theirs)
    print(f"WeightWatcher 0.7.7: {len(theirs)} layers, {ww_seconds:.1f} s (load "
          f"{loads['after_weightwatcher']})")
    warm = run_lljax(file, work / "warm")  # after WeightWatcher: the machine's load sampled on both sides of it
    loads["after_lljax_again"] = load_average()
    print(f"lljax spectra again (programs compiled): {warm:.1f} s (load {loads['after_lljax_again']})")
    results.update({"loads": loads, "lljax_layers": len(ours), "weightwatcher_layers": len(theirs),
                    "matched_layers": matched,
                    "lljax_cold_s": cold, "lljax_again_s": warm, "weightwatcher_s": ww_seconds,
                    "differences": worst, "load_average_after": load_average(), "jax": jax.__version__,
                    "speedup_vs_weightwatcher": ww_seconds / cold})
    print(f"  {'metric':18s} {'max rel diff':>12s} {'target':>7s}  ({matched} layers matched by name)")
    for metric in COLUMNS:
        target = TARGETS.get(metric)
        print(f"  {metric:18s} {worst.get(metric, float('nan')):12.1e} {'' if target is None else f'{target:7.0e}'}")
    print(f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, load "
          f"{results['load_average_before']} -> {results['load_average_after']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    print(f"again: {ww_seconds / warm:.2f}x")
    print(f"speedup_vs_weightwatcher: {results['speedup_vs_weightwatcher']:.2f}")
    return 0 if matched == len(ours) and worst.get("alpha", 1) <= TARGETS["alpha"] else 1


if __name__ == "__main__":
    sys.exit(main())
