"""Yang et al. 2023's fits, agreement and speed: lljax (`spectra.selection_metrics`: power law to lambda_max,
E-TPL, exponential, every layer of every member in one program) vs the `powerlaw` package 1.5 itself (the version
the paper pins), on the weight spectra of lljax's own trained models (issue 24).

    pip install -r benchmarks/requirements-bench.txt          # powerlaw==1.5
    python benchmarks/powerlaw_fits.py [--members 8] [--width 128] [--train-epochs 20] [--quick] [--out FILE.json]
    python benchmarks/powerlaw_fits.py --powerlaw-python /path/to/venv/bin/python   # powerlaw 1.5 elsewhere

Setup (not timed): N MLPs (depth 2, MNIST-1D, width `--width`) trained with lljax; every weight matrix's
eigenvalues (float64). The `powerlaw` side runs in a subprocess (`--powerlaw-python`, default this Python) that
fits each spectrum as the paper's code does: `powerlaw.Fit(evals, xmin=(0.95 peak, 1.05 peak), xmax=max,
xmin_distribution=...)` for the truncated power law and the exponential, `powerlaw.Fit(evals, xmax=max)` for
the power law, peak = 10 ** the left edge of the fullest bin of a 100-bin histogram of log10 evals.

Agreement: the worst relative difference over spectra of beta, lambda (E-TPL), lambda (EXP), alpha (PL to
lambda_max), each fit's xmin and KS distance; spectra where one side finds no fit and the other does are
counted. Speed: lljax float64, warm (compile apart), against powerlaw's fits one spectrum after another.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from common import load_average, machine, trained_mlps
from lljax import spectra

POWERLAW_SIDE = r"""
import contextlib, io, json, sys, time, warnings
import numpy as np, powerlaw
warnings.filterwarnings("ignore")
data = np.load(sys.argv[1])
out, start = [], time.perf_counter()
for name in sorted(data.files, key=int):
    ev = np.sort(data[name][data[name] > 1e-5])
    h = np.histogram(np.log10(ev), bins=100)
    peak = 10 ** h[1][np.argmax(h[0])]
    row = {}
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        for key, dist in (("tpl", "truncated_power_law"), ("exp", "exponential")):
            try:
                f = powerlaw.Fit(ev, xmin=(0.95 * peak, 1.05 * peak), xmax=max(ev), xmin_distribution=dist)
                d = getattr(f, dist)
                row[key] = [float(getattr(d, "alpha", np.nan)) if dist != "exponential" else np.nan,
                            float(d.Lambda), float(f.xmin), float(d.D)]
            except Exception:
                row[key] = [np.nan] * 4
        f = powerlaw.Fit(ev, xmax=max(ev))
        row["plx"] = [float(f.power_law.alpha), np.nan, float(f.xmin), float(f.power_law.D)]
    out.append(row)
print(json.dumps({"version": powerlaw.__version__, "seconds": time.perf_counter() - start, "fits": out}))
"""
FIELDS = ("exponent", "lambda", "xmin", "ks")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=None, help="models N (default 8; --quick 2)")
    p.add_argument("--width", type=int, default=128, help="MLP width")
    p.add_argument("--train-epochs", type=int, default=None, help="training epochs (default 20; --quick 5)")
    p.add_argument("--powerlaw-python", default=sys.executable, help="a Python with powerlaw==1.5 installed")
    p.add_argument("--quick", action="store_true", help="short run")
    p.add_argument("--out", default=None, help="write all figures to this JSON file")
    args = p.parse_args(argv)
    args.members = args.members or (2 if args.quick else 8)
    args.train_epochs = args.train_epochs or (5 if args.quick else 20)
    return args


def member_spectra(stacked, n) -> list[np.ndarray]:
    """Every weight matrix's ascending eigenvalues (float64), member by member."""
    out = []
    with jax.enable_x64(True):
        for i in range(n):
            params = jax.tree.map(lambda a: jnp.asarray(a[i], jnp.float64), stacked)
            leaves = dict(jax.tree_util.tree_flatten_with_path(params)[0])
            for layer in spectra.weight_layers(params)[0]:
                out.append(np.asarray(spectra.eigenvalues(leaves[layer.path], layer)))
    return out


def lljax_fits(evals: list[np.ndarray]):
    """{'tpl'|'exp'|'plx': (S, 4)} and (compile, warm seconds): the S spectra in one selection_metrics call."""
    with jax.enable_x64(True):
        run = jax.jit(lambda xs: spectra.selection_metrics(xs))
        xs = [jnp.asarray(e) for e in evals]
        start = time.perf_counter()
        jax.block_until_ready(run(xs))
        first = time.perf_counter() - start
        start = time.perf_counter()
        m = jax.tree.map(np.asarray, jax.block_until_ready(run(xs)))
        warm = time.perf_counter() - start
    nan = np.full(len(evals), np.nan)
    tpl = np.stack([m["etpl_beta"], m["etpl_lambda"], nan, m["etpl_ks"]], 1)
    exp = np.stack([nan, m["exp_lambda"], nan, m["exp_ks"]], 1)
    plx = np.stack([m["alpha_xmax"], nan, nan, nan], 1)
    # xmin of each fit: from `fit` itself (selection_metrics keeps the columns the paper reports)
    with jax.enable_x64(True):
        for i, e in enumerate(evals):
            x = jnp.asarray(e)
            tpl[i, 2] = float(spectra.fit(x, "truncated_power_law").xmin)
            exp[i, 2] = float(spectra.fit(x, "exponential").xmin)
            f = spectra.fit(x, "power_law_xmax")
            plx[i, 2], plx[i, 3] = float(f.xmin), float(f.ks_distance)
    return {"tpl": tpl, "exp": exp, "plx": plx}, first - warm, warm


def compare(ours: np.ndarray, theirs: np.ndarray) -> dict:
    """Worst relative difference per field over the spectra both sides fit; the count where only one does."""
    out = {}
    for j, field in enumerate(FIELDS):
        a, b = ours[:, j], theirs[:, j]
        both = np.isfinite(a) & np.isfinite(b)
        if both.any():
            out[field] = float(np.max(np.abs(a[both] - b[both]) / np.maximum(np.abs(b[both]), 1e-300)))
    out["one_side_only"] = int(np.sum(np.isfinite(ours[:, 3]) != np.isfinite(theirs[:, 3])))
    out["fitted"] = int(np.sum(np.isfinite(theirs[:, 3])))
    return out


def main(argv=None):
    args = parse_args(argv)
    stacked = jax.tree.map(np.asarray, trained_mlps(args.members, args.width, args.train_epochs)[2].params)
    evals = member_spectra(stacked, args.members)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "spectra.npz")
        np.savez(path, **{str(i): e for i, e in enumerate(evals)})
        proc = subprocess.run([args.powerlaw_python, "-c", POWERLAW_SIDE, path], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"error: the powerlaw side failed ({args.powerlaw_python}): {proc.stderr.strip().splitlines()[-1]}")
    side = json.loads(proc.stdout.strip().splitlines()[-1])
    theirs = {k: np.array([row[k] for row in side["fits"]], float) for k in ("tpl", "exp", "plx")}
    ours, compile_s, warm_s = lljax_fits(evals)
    results = {"machine": machine(), "load_average": load_average(), "powerlaw": side["version"],
               "spectra": len(evals), "sizes": sorted({len(e) for e in evals}),
               "lljax_warm_s": warm_s, "lljax_compile_s": compile_s, "powerlaw_s": side["seconds"],
               "speedup": side["seconds"] / warm_s,
               "agreement": {k: compare(ours[k], theirs[k]) for k in ("tpl", "exp", "plx")}}
    print(f"{len(evals)} spectra (sizes {results['sizes']}) of {args.members} MLPs, powerlaw {side['version']}")
    for k, name in (("tpl", "E-TPL (beta, lambda)"), ("exp", "EXP (lambda)"), ("plx", "PL to lambda_max (alpha)")):
        a = results["agreement"][k]
        shown = ", ".join(f"{f} {a[f]:.1e}" for f in FIELDS if f in a)
        print(f"  {name:26s} worst relative: {shown}; fitted by powerlaw {a['fitted']}, "
              f"one side only {a['one_side_only']}")
    print(f"powerlaw {side['seconds']:.2f} s, lljax {warm_s:.3f} s warm (+{compile_s:.1f} s compile): "
          f"{results['speedup']:.1f}x; machine: {results['machine']['cpu']}, load {results['load_average']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
