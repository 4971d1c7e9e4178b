"""Weight-spectra metrics, agreement and speed: lljax (`spectra.layer_metrics`, all N members in one vmapped
program) vs WeightWatcher 0.7.7 (`analyze(mp_fit=True)`, one model after another) on the same weights (issue 11).

    pip install -r benchmarks/requirements-bench.txt
    python benchmarks/spectra.py [--members 16] [--width 128] [--train-epochs 20] [--quick] [--out FILE.json]

Setup (not timed): N MLPs (depth 2, MNIST-1D, width `--width`) trained with lljax (SGD momentum 0.9, lr 0.05,
different seeds), and N CNNs of 2-D convolutions (lljax's `cnn` on 12 x 12 x 3 inputs, kernels 5/3/3, width
`--width` / 4, at initialisation). Each member's kernels are copied into an equivalent torch model (Linear weight
= kernel^T, Conv2d weight = kernel transposed to (out, in, kh, kw)).

Agreement: every metric WeightWatcher reports per layer against lljax's, as the worst relative difference over
members and layers, for lljax in float64 (the algorithm: targets 1e-4 for alpha, xmin and the KS distance, 1e-6
for the norms) and in float32 (the pipeline's precision).

Speed: lljax float32, bootstrap off (WeightWatcher has none), the N members in one `jit(vmap(...))` call (warm;
compile apart) against WeightWatcher's `analyze(mp_fit=True)` model by model. The last line is
`speedup_vs_weightwatcher: X.XX` (all N members, warm).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from common import load_average, machine, trained_mlps
from lljax import models, spectra

COLUMNS = {"alpha": "alpha", "xmin": "xmin", "ks_distance": "D", "alpha_sigma": "sigma",
           "num_pl_spikes": "num_pl_spikes", "log_norm": "log_norm", "log_spectral_norm": "log_spectral_norm",
           "alpha_weighted": "alpha_weighted", "log_alpha_norm": "log_alpha_norm", "stable_rank": "stable_rank",
           "entropy": "entropy", "mp_softrank": "mp_softrank", "num_evals": "num_evals"}
TARGETS = {"alpha": 1e-4, "xmin": 1e-4, "ks_distance": 1e-4, "log_norm": 1e-6, "log_spectral_norm": 1e-6,
           "log_alpha_norm": 1e-6, "stable_rank": 1e-6}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=None, help="models N of each kind (default 16; --quick 8)")
    p.add_argument("--width", type=int, default=128, help="MLP width (the CNNs get width / 4 channels)")
    p.add_argument("--train-epochs", type=int, default=None, help="MLP training epochs (default 20; --quick 5)")
    p.add_argument("--quick", action="store_true", help="short run, about a minute")
    p.add_argument("--out", default=None, help="write all figures to this JSON file")
    args = p.parse_args(argv)
    args.members = args.members or (8 if args.quick else 16)
    args.train_epochs = args.train_epochs or (5 if args.quick else 20)
    return args


def cnns(n, width):
    spec = models.ModelSpec("cnn", width)
    return jax.tree.map(np.asarray, jax.vmap(lambda k: models.init(spec, k, (12, 12, 3))[0])(
        jax.random.split(jax.random.key(1), n)))


def torch_model(params):
    """A torch model with the same weight matrices in the same order (WeightWatcher reads weights only)."""
    import torch

    layers = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if path[-1].key != "kernel":
            continue
        if leaf.ndim == 2:
            layer = torch.nn.Linear(*leaf.shape)
            layer.weight.data = torch.tensor(np.asarray(leaf, np.float64).T.copy())
        else:
            layer = torch.nn.Conv2d(leaf.shape[2], leaf.shape[3], leaf.shape[:2])
            layer.weight.data = torch.tensor(np.asarray(leaf, np.float64).transpose(3, 2, 0, 1).copy())
        layers.append(layer)
    return torch.nn.Sequential(*layers)


def weightwatcher(params_list):
    import weightwatcher as ww

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    out, start = [], time.perf_counter()
    for params in params_list:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.append(ww.WeightWatcher(model=torch_model(params)).analyze(mp_fit=True))
    return out, time.perf_counter() - start


def lljax_metrics(stacked, dtype):
    cast = jax.tree.map(lambda a: jnp.asarray(a, dtype), stacked)
    run = jax.jit(jax.vmap(lambda p: spectra.layer_metrics(p, selection=False).metrics))
    start = time.perf_counter()
    jax.block_until_ready(run(cast))
    first = time.perf_counter() - start
    start = time.perf_counter()
    result = jax.block_until_ready(run(cast))
    return jax.tree.map(np.asarray, result), first - (time.perf_counter() - start), time.perf_counter() - start


def differences(ours, theirs, n):
    worst = {}
    for i in range(n):
        for (_, row), layer in zip(theirs[i].iterrows(), ours):
            for name, column in COLUMNS.items():
                a, b = float(ours[layer][name][i]), float(row[column])
                worst[name] = max(worst.get(name, 0.0), abs(a - b) / max(abs(b), 1e-30))
    return worst


def main(argv=None):
    args = parse_args(argv)
    kinds = {"mlp": jax.tree.map(np.asarray, trained_mlps(args.members, args.width, args.train_epochs)[2].params),
             "cnn2d": cnns(args.members, max(4, args.width // 4))}
    results = {"machine": machine(), "load_average": load_average(), "members": args.members, "width": args.width}
    total_ours = total_ww = 0.0
    for name, stacked in kinds.items():
        members = [jax.tree.map(lambda a: a[i], stacked) for i in range(args.members)]
        theirs, ww_seconds = weightwatcher(members)
        with jax.enable_x64(True):
            ours64, _, _ = lljax_metrics(stacked, jnp.float64)
        ours32, compile_s, warm_s = lljax_metrics(stacked, jnp.float32)
        layers = len(theirs[0])
        assert all(len(t) == layers == len(ours64) for t in theirs), "the layers differ"
        results[name] = {"layers": layers, "float64": differences(ours64, theirs, args.members),
                         "float32": differences(ours32, theirs, args.members), "lljax_warm_s": warm_s,
                         "lljax_compile_s": compile_s, "weightwatcher_s": ww_seconds,
                         "speedup": ww_seconds / warm_s}
        total_ours, total_ww = total_ours + warm_s, total_ww + ww_seconds
        print(f"{name}: {args.members} models x {layers} layers; WeightWatcher {ww_seconds:.2f} s, "
              f"lljax {warm_s:.3f} s warm (+{compile_s:.1f} s compile): {ww_seconds / warm_s:.1f}x")
        print(f"  {'metric':18s} {'float64':>9s} {'float32':>9s} {'target':>7s}")
        for metric in COLUMNS:
            target = TARGETS.get(metric)
            print(f"  {metric:18s} {results[name]['float64'][metric]:9.1e} {results[name]['float32'][metric]:9.1e} "
                  f"{'' if target is None else f'{target:7.0e}'}")
    results["speedup_vs_weightwatcher"] = total_ww / total_ours
    print(f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, load {results['load_average']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    print(f"speedup_vs_weightwatcher: {results['speedup_vs_weightwatcher']:.2f}")


if __name__ == "__main__":
    main()
