"""`lljax spectra PATH --out DIR`: the weight spectra of a saved model, no data (WeightWatcher's `analyze()` on a
checkpoint): every weight matrix of an lljax run folder (every member), an orbax checkpoint, a Flax msgpack file,
a safetensors file or an .npz (`lljax.checkpoints`), one layer at a time, with `lljax.spectra`'s metrics.

Layout rule (`layer_kind`; `--layout torch|flax` sets it for every tensor): a tensor whose last name component
ends in `weight` is in PyTorch's layout (Linear (out, in), Conv (out, in, kh, kw), Embedding (V, d)); one named
`kernel` or `embedding` is in Flax's (Dense (in, out), Conv (kh, kw, in, out), attention query/key/value
(in, heads, head_dim) and out (heads, head_dim, out) kernels, Embed (V, d)); any other name takes its format's
convention: safetensors files are PyTorch's (the model hubs' PyTorch weights), msgpack, orbax, run folders and
.npz Flax's. Leaves of fewer than 2 dimensions, non-float tensors and those named bias, scale, mean or var
(GPT-2's causal-mask buffer `attn.bias` among them) are not weights. The layout matters only for tensors of 3+
dimensions: a 2-D matrix and its transpose have the same singular values, so GPT-2's Conv1D `weight`, stored
(in, out) under a PyTorch name, gives the spectrum WeightWatcher gives it (it takes the matrix as it is).
Attention projections and embeddings are matrices as in WeightWatcher (`lljax.layers`); conv kernels are one
matrix per spatial position, pooled, scaled as WeightWatcher scales them.

Eigenvalues (float64): by default from the Gram matrix W^T W of the smaller side (`eigvalsh`, several times
faster than the SVD of a tall matrix; absolute error about 1e-14 lambda_max), and from numpy's SVD (as
`lljax.spectra` and WeightWatcher compute them) for a matrix whose smallest eigenvalue is below 1e-8 lambda_max,
where the Gram matrix would lose its relative accuracy; `--eigensolver svd` takes the SVD everywhere.

Output in DIR (written in a temporary folder beside it and renamed, never half-written; an existing non-empty DIR
is refused unless it holds this same analysis): `details.csv` (one row per layer, and per member of a run
folder: name, shape, every metric of `spectra.spectrum_metrics` under WeightWatcher's column names where it has
one), `summary.csv` (one row per model: the means over its layers, as WeightWatcher's `get_summary()`),
`spectra.json` (the settings, the input, the layers skipped and why), `esd-<layer>.png` for the layers chosen
by `--layers` (the eigenvalue histogram and the fits). One line sums it up on the terminal.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import csv
import fnmatch
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from lljax import checkpoints, layers, spectra
from lljax.errors import LLJaxError, exit_status, one_line
from lljax.progress import Progress

LAYOUTS = ("auto", "torch", "flax")
EIGENSOLVERS = ("gram", "svd")
GRAM_MIN_RATIO = 1e-8  # below this smallest / largest eigenvalue, the SVD instead of the Gram matrix
WW_NAMES = {"ks_distance": "D", "alpha_sigma": "sigma"}  # lljax's metric -> WeightWatcher's column


def layer_kind(name: str, shape: tuple, layout: str = "auto", default: str = "flax") -> str:
    """The `lljax.layers` kind of a stored tensor by the layout rule (module docstring); 'vector' for what is
    not a weight matrix. layout: 'auto', 'torch' or 'flax'; default: the format's layout for other names."""
    parts = [p for p in re.split(r"[./]", name) if p] or [name]
    last = parts[-1].lower()
    if len(shape) < 2 or last in spectra.SKIPPED_NAMES or last.endswith("_bias"):
        return "vector"
    if layout == "auto":
        layout = "torch" if last.endswith("weight") else "flax" if last in ("kernel", "embedding") else default
    leaf = "weight" if layout == "torch" else (last if last in ("kernel", "embedding") else "kernel")
    path = tuple(jax.tree_util.DictKey(p) for p in (*parts[:-1], leaf))
    return layers.kind(path, tuple(shape))


def _matrices(array: np.ndarray, kind: str) -> np.ndarray:
    """(S, a, b) float64 matrices of a tensor (`lljax.layers.matrices`), conv kernels scaled by sqrt(1/2) as
    `lljax.spectra` scales a pooled conv layer."""
    a = np.asarray(array, np.float64)
    if kind == "torch_dense":
        mats = a.T[None]
    elif kind == "torch_conv":
        mats = np.transpose(a, (*range(2, a.ndim), 1, 0)).reshape(-1, a.shape[1], a.shape[0])
    else:
        mats = np.asarray(layers.matrices(a, kind))
    if kind in layers.CONVOLUTIONS:
        mats = mats * math.sqrt(0.5)
    return mats


def eigenvalues(array: np.ndarray, kind: str, eigensolver: str = "gram") -> np.ndarray:
    """(S x min(a, b),) the ascending float64 eigenvalues of W^T W over a tensor's matrices (module docstring)."""
    out = []
    for m in _matrices(array, kind):
        if eigensolver == "gram":
            small = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
            evals = np.linalg.eigvalsh(small)
            if evals[0] >= GRAM_MIN_RATIO * evals[-1] and evals[-1] > 0:
                out.append(evals)
                continue
        out.append(np.linalg.svd(m, compute_uv=False) ** 2)
    return np.sort(np.concatenate(out))


def _selected(name: str, patterns: Sequence[str]) -> bool:
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def analyse(path: str | os.PathLike, layout: str = "auto", min_evals: int | None = None, eigensolver: str = "gram",
            bootstrap: int = 0, seed: int = 0, keep: Sequence[str] = (), progress: bool = False,
            threads: int = 2, selection: bool = True) -> dict:
    """Every weight matrix of every model in a checkpoint, read one at a time. Returns {'format', 'rows' (one
    dict per layer: the model's info, layer_id, name, shape, kind, N, M, rf, then every metric), 'skipped'
    ((model index, name, reason)), 'models' (their info), 'spectra' ((model index, name) -> eigenvalues of the
    layers matching `keep`)}; `threads` layers' eigenvalues are computed at once; `selection`: Yang et al.
    2023's fits too (`spectra.SELECTION`, one program per spectrum length). A checkpoint with no weight matrix
    is a one-line LLJaxError."""
    if layout not in LAYOUTS:
        raise LLJaxError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    if eigensolver not in EIGENSOLVERS:
        raise LLJaxError(f"eigensolver must be one of {', '.join(EIGENSOLVERS)}, not {eigensolver!r}")
    min_evals = spectra.MIN_EVALS if min_evals is None else min_evals
    fmt, models = checkpoints.open_models(path)
    default = checkpoints.DEFAULT_LAYOUTS[fmt]
    plan, skipped = [], []
    for m, model in enumerate(models):
        for tensor in model.tensors:
            if not np.issubdtype(tensor.dtype, np.floating) and tensor.dtype.name != "bfloat16":
                continue
            kind = layer_kind(tensor.name, tensor.shape, layout, default)
            if kind == "vector":
                continue
            rf, a, b = layers.matrix_shape(tensor.shape, kind)
            if min(a, b) * rf < min_evals:
                skipped.append((m, tensor.name, f"{min(a, b) * rf} eigenvalues < min_evals {min_evals}"))
                continue
            plan.append((m, tensor, kind, max(a, b), min(a, b), rf))
    if not plan:
        what = f"; {len(skipped)} with fewer than {min_evals} eigenvalues" if skipped else ""
        raise LLJaxError(f"{path} holds no weight matrix (a float tensor of at least 2 dimensions that is not a "
                         f"bias or scale){what}")
    bar = Progress(sum(math.prod(t.shape) for _, t, *_ in plan), enabled=progress)
    rows, kept = [], {}
    key = jax.random.key(seed)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    solvers = concurrent.futures.ThreadPoolExecutor(max(1, threads))

    def spectra_in_order():
        """(plan item, eigenvalues) in order; the next layers' eigenvalues computed meanwhile in `threads`
        threads (LAPACK releases the GIL), so at most `threads` layers are held at once."""
        pending = collections.deque()
        for item in plan:
            with one_line(f"reading {item[1].name}"):
                array = item[1].load()  # a memory map or an array: read where the eigenvalues are computed
            pending.append((item, solvers.submit(eigenvalues, array, item[2], eigensolver)))
            del array
            if len(pending) >= max(1, threads):
                yield pending.popleft()
        yield from pending

    try:
        # one program per (eigenvalues, N, M), compiled in a thread while LAPACK computes the first spectra
        programs = {shape: pool.submit(_compile, *shape, bootstrap)
                    for shape in dict.fromkeys((mm * rf, n, mm) for _, _, _, n, mm, rf in plan)}
        fitters = {length: pool.submit(_compile_selection, length)
                   for length in dict.fromkeys(mm * rf for _, _, _, _, mm, rf in plan)} if selection else {}
        with jax.enable_x64(True):
            for layer_id, ((m, tensor, kind, n, mm, rf), job) in enumerate(spectra_in_order()):
                with one_line(f"reading {tensor.name}"):
                    evals = job.result()
                k = jax.random.fold_in(key, layer_id) if bootstrap else None
                program = programs[(mm * rf, n, mm)].result()
                values = jax.device_get(program(jax.numpy.asarray(evals), k))
                if selection:
                    values.update(jax.device_get(fitters[mm * rf].result()(jax.numpy.asarray(evals))))
                row = {**models[m].info, "layer_id": layer_id, "name": tensor.name,
                       "shape": "x".join(map(str, tensor.shape)), "kind": kind, "N": n, "M": mm, "rf": rf}
                row.update({WW_NAMES.get(k, k): float(v) for k, v in _ordered(values).items()})
                rows.append(row)
                if _selected(tensor.name, keep):
                    kept[(m, tensor.name)] = evals
                bar.update(math.prod(tensor.shape), tensor.name)
    finally:
        solvers.shutdown(cancel_futures=True)
        pool.shutdown(cancel_futures=True)
        bar.close()
    return {"format": fmt, "rows": rows, "skipped": skipped, "models": [model.info for model in models],
            "spectra": kept}


def _compile(num_evals: int, n: int, m: int, bootstrap: int):
    """`spectra.spectrum_metrics` compiled for float64 spectra of `num_evals` eigenvalues of N x M matrices:
    a function (evals, key or None) -> metrics."""
    with jax.enable_x64(True):  # a thread-local setting: this thread's too
        evals = jax.ShapeDtypeStruct((num_evals,), jax.numpy.float64)
        key = jax.eval_shape(lambda: jax.random.key(0)) if bootstrap else None
        program = jax.jit(spectra.spectrum_metrics, static_argnums=(1, 2, 4))
        return program.lower(evals, n, m, key, bootstrap).compile()


def _compile_selection(num_evals: int):
    """`spectra.selection_metrics` of one float64 spectrum of `num_evals` eigenvalues, compiled: evals -> metrics."""
    with jax.enable_x64(True):
        evals = jax.ShapeDtypeStruct((num_evals,), jax.numpy.float64)
        program = jax.jit(lambda x: {k: v[0] for k, v in spectra.selection_metrics([x]).items()})
        return program.lower(evals).compile()


def _ordered(values: dict) -> dict:
    """`spectrum_metrics`' values, METRICS' order first, then any other key it returns."""
    return {**{k: values[k] for k in spectra.METRICS if k in values},
            **{k: v for k, v in values.items() if k not in spectra.METRICS}}


def summaries(result: dict) -> list[dict]:
    """One row per model: its info, its layers, and the mean over its layers of each of `spectra.SUMMARY` (and of
    `spectra.SELECTION` where computed, over the layers with a fit)."""
    out = []
    for m, info in enumerate(result["models"]):
        rows = [r for r in result["rows"] if r.get("member") == info.get("member")] if info else result["rows"]
        names = spectra.SUMMARY + tuple(n for n in spectra.SELECTION if rows and n in rows[0])
        means = {name: _mean([r[WW_NAMES.get(name, name)] for r in rows], name in spectra.SELECTION)
                 for name in names}
        out.append({**info, "layers": len(rows), **means})
    return out


def _mean(values: list[float], skip_nan: bool) -> float:
    finite = [v for v in values if math.isfinite(v)] if skip_nan else values
    return float(np.mean(finite)) if finite else math.nan


def _write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def esd_figure(evals: np.ndarray, title: str, path: Path) -> None:
    """The eigenvalue histogram (log-log density) of one layer and the fits of its tail: WeightWatcher's power law
    (alpha, xmin) and Yang et al.'s truncated power law and exponential (`spectra.fit`)."""
    from lljax.figures import _pyplot

    plt = _pyplot()
    x = np.sort(evals[evals > spectra.EVALS_THRESH])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    bins = np.logspace(np.log10(x[0]), np.log10(x[-1]), min(100, max(10, len(x) // 5)))
    ax.hist(x, bins=bins, density=True, color="0.75", label=f"ESD ({len(x)} eigenvalues)")
    grid = np.logspace(np.log10(x[0]), np.log10(x[-1]), 200)
    with jax.enable_x64(True):
        for distribution, color in (("power_law", "C3"), ("truncated_power_law", "C0"), ("exponential", "C2")):
            f = jax.device_get(spectra.fit(x, distribution, optimizer="newton"))
            xmin = float(f.xmin)
            if not np.isfinite(xmin):
                continue
            share = float(f.num_tail) / len(x)  # the fitted density covers the tail's share of the eigenvalues
            t = grid[grid >= xmin]
            if distribution == "power_law":
                alpha = float(f.exponent)
                density = (alpha - 1) / xmin * (t / xmin) ** -alpha
                label = f"power law, alpha {alpha:.3f}"
            elif distribution == "exponential":
                lam = float(f.lam)
                density = lam * np.exp(-lam * (t - xmin))
                label = f"exponential, lambda {lam:.3g}"
            else:
                beta, lam = float(f.exponent), float(f.lam)
                log_z = float(spectra.tpl_log_normaliser(beta, lam, xmin))
                density = np.exp(-beta * np.log(t) - lam * t - log_z)
                label = f"E-TPL, beta {beta:.3f}, lambda {lam:.3g}"
            ax.plot(t, share * density, color=color, label=label)
            if distribution == "power_law":
                ax.axvline(xmin, color=color, linestyle="--", linewidth=0.8, label=f"xmin {xmin:.3g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue of W^T W")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _identity(path: Path, settings: dict) -> dict:
    """What makes two analyses the same: the input (its absolute path, size and modification time: the newest
    file's for a folder) and the settings."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    stamp = max((p.stat().st_mtime_ns for p in files), default=0)
    size = sum(p.stat().st_size for p in files)
    return {"input": str(path.absolute()), "input_bytes": size, "input_mtime_ns": stamp, **settings}


def _check_out(out: Path, identity: dict) -> bool:
    """True when `out` already holds this analysis; an LLJaxError when it exists and holds something else."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise LLJaxError(f"output path {out} exists and is not a folder")
    if not any(out.iterdir()):
        return False
    try:
        previous = json.loads((out / "spectra.json").read_text())
    except (OSError, ValueError):
        previous = None
    if previous is not None and previous.get("identity") == identity:
        return True
    raise LLJaxError(f"output folder {out} is not empty and holds another analysis; use a new --out folder")


def write(result: dict, out: Path, identity: dict, layers: Sequence[str]) -> list[Path]:
    """details.csv, summary.csv, spectra.json and the ESD figures, in a temporary folder renamed to `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_csv(tmp / "details.csv", result["rows"])
        _write_csv(tmp / "summary.csv", summaries(result))
        figures = []
        for (m, name), evals in result["spectra"].items():
            info = result["models"][m]
            prefix = f"member-{info['member']}-" if info else ""
            file = f"esd-{prefix}{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
            esd_figure(evals, f"{prefix}{name}", tmp / file)
            figures.append(file)
        meta = {"identity": identity, "format": result["format"], "layers": len(result["rows"]),
                "skipped": [[m, name, why] for m, name, why in result["skipped"]], "figures": figures,
                "models": result["models"], "unmatched_layers": [p for p in layers if not any(
                    _selected(r["name"], [p]) for r in result["rows"])]}
        (tmp / "spectra.json").write_text(json.dumps(meta, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked): replaced by the complete folder
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out / f for f in figures]


def summary_line(result: dict, out: Path) -> str:
    """The one-line summary: layers, models, the means over every row of WeightWatcher's summary metrics."""
    rows = result["rows"]
    mean = lambda k: float(np.nanmean([r[k] for r in rows]))
    models = len(result["models"])
    return (f"{len(rows)} layers" + (f" of {models} models" if models > 1 else "") +
            (f" ({len(result['skipped'])} skipped)" if result["skipped"] else "") +
            f": mean alpha {mean('alpha'):.3f}, alpha_weighted {mean('alpha_weighted'):.3f}, log_norm "
            f"{mean('log_norm'):.3f}, log_spectral_norm {mean('log_spectral_norm'):.3f}, stable_rank "
            f"{mean('stable_rank'):.1f}; {out / 'details.csv'}")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        self.exit(2, f"error: {message} (see --help)\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lljax spectra", description="Weight spectra of a saved model, no data: every weight matrix "
                "of an lljax run folder, orbax checkpoint, Flax msgpack, safetensors or .npz file, with "
                "WeightWatcher 0.7.7's metrics (see lljax/checkpoint_spectra.py for the layout rule).")
    p.add_argument("path", help="the checkpoint: a file or a folder")
    p.add_argument("--out", required=True, help="results folder (created; never overwritten)")
    p.add_argument("--layout", choices=LAYOUTS, default="auto", help="the weights' layout: auto (by name and "
                   "format, see the rule), torch or flax (default: auto)")
    p.add_argument("--layers", nargs="+", default=(), metavar="NAME", help="ESD figures with the fits for these "
                   "layers (names as in details.csv; shell-style patterns such as '*c_attn*')")
    p.add_argument("--min-evals", type=int, default=None, help="layers with fewer eigenvalues are skipped "
                   "(default: 10)")
    p.add_argument("--eigensolver", choices=EIGENSOLVERS, default="gram", help="gram: W^T W's eigenvalues, "
                   "the SVD where they would be inaccurate; svd: the SVD of every matrix (default: gram)")
    p.add_argument("--bootstrap", type=int, default=0, help="resamples for alpha_se, the bootstrap standard "
                   "error of alpha (default: 0, alpha_se empty, as WeightWatcher has none)")
    p.add_argument("--seed", type=int, default=0, help="the bootstrap's random seed (default: 0)")
    p.add_argument("--no-selection", action="store_true", help="leave out Yang et al. 2023's fits (alpha_xmax, "
                   "etpl_*, exp_*: a few seconds of compilation per spectrum length)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    logging.getLogger("jax._src.callback").setLevel(logging.CRITICAL)
    out, path = Path(args.out), Path(args.path)

    def command():
        if args.min_evals is not None and args.min_evals < 1:
            raise LLJaxError(f"--min-evals must be at least 1, got {args.min_evals}")
        if args.bootstrap < 0 or args.bootstrap == 1:
            raise LLJaxError(f"--bootstrap must be 0 or at least 2, got {args.bootstrap}")
        if not path.exists():
            raise LLJaxError(f"no such file or folder: {path}")
        settings = {"layout": args.layout, "layers": list(args.layers), "min_evals": args.min_evals,
                    "eigensolver": args.eigensolver, "bootstrap": args.bootstrap, "seed": args.seed,
                    "selection": not args.no_selection}
        identity = _identity(path, settings)
        if _check_out(out, identity):
            print(f"{out} already holds this analysis (nothing to do)")
            return 0
        from lljax import runtime

        runtime.enable_compilation_cache()
        result = analyse(path, args.layout, args.min_evals, args.eigensolver, args.bootstrap, args.seed,
                         args.layers, progress=not args.no_progress, selection=not args.no_selection)
        write(result, out, identity, args.layers)
        print(summary_line(result, out))
        unmatched = [p for p in args.layers if not any(_selected(r["name"], [p]) for r in result["rows"])]
        if unmatched:
            print(f"note: --layers {' '.join(unmatched)} matched no analysed layer", file=sys.stderr)

    return exit_status(command, interrupted="nothing was written")


if __name__ == "__main__":
    sys.exit(main())
