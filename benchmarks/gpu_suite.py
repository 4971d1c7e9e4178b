"""One prepared GPU suite (issue 15): everything lljax should show on an accelerator, within minutes of one.

    python benchmarks/gpu_suite.py [--budget-s 420] [--out DIR] [--widths 8 32 64 128] [--members 5 20]
                                   [--strategies grouped map im2col] [--precisions float32 tf32 bf16] [--tiny]

Writes DIR/gpu_suite.json and DIR/gpu_suite.md (default DIR: gpu_suite_out beside this script) and prints the
table. Parts, in this order (the ResNet matrix last, cut where the time budget ends, so the other parts always
run):

  (0) the device: dense matmul FLOP/s measured in JAX for each precision policy (float32 'highest', TF32,
      bfloat16), beside the vendor's dense peak for that precision where the device is known;
  (2) MLP ensembles on MNIST-1D (or, without the mnist1d package, synthetic data of its shape: said in the
      output): N vmapped lljax members against PyTorch training the same models one after another on the same
      device (the tuned loop of benchmarks/ensemble_training.py) and against PyTorch's own ensembling of all N
      at once (torch.func, `torch_peers`), model-steps/s and the ratios (issue 27's question on an accelerator);
  (3) Hessian top eigenvalue and trace for N MLPs vmapped (lljax.hessian's defaults and PyHessian's HVP
      budget) against the PyHessian procedure in PyTorch (benchmarks/hessian.py) and its torch.func ensembling
      on the same device, with the errors of each against the float64 dense Hessian;
  (1) ResNet18(k) training steps, batch 128, CIFAR-shaped random data, for each width k, member count M,
      convolution strategy (lljax.conv) and precision policy (lljax.precision): model-steps/s, images/s, the
      FLOP/s reached (the analytic count of benchmarks/resnet_throughput.py) as a fraction of the vendor peak
      and of the measured matmul for that precision, the compiled program's memory and the device's peak;
      PyTorch training the same models one after another on the same device for each (k, precision), and
      PyTorch's own ensembling of the same M members (torch.func) for each (k, M, precision; with bf16 autocast
      a vmapped BatchNorm fails on the CPU in torch 2.13, recorded as that row's error); and
      the fastest strategy per (k, M, precision), what `--conv auto` should pick there;
  (4) the `paper` preset's projected wall time on this device (975 ResNet18 models, 100 epochs) from the best
      measured rate per width and precision (resnet_throughput.project_grid).

Run it from a checkout (lljax need not be installed: the script puts the checkout on the path). Runs on JAX 0.11
/ CUDA 13 with Flax, optax, orbax and PyTorch 2.11 and no network; PyTorch and mnist1d are
optional (their parts are skipped or use synthetic data, and the output says so). To bring mnist1d to a
machine without it: `pip download mnist1d==0.0.2.post1 --no-deps -d wheels/` here, then
`pip install --no-index wheels/mnist1d-*.whl` there. `--tiny` runs every part at a toy size on a CPU in about a
minute (tests/test_gpu_suite.py), so the script is known to work before a GPU is available.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # the benchmarks beside it; lljax from this checkout, installed or not
from common import load_average, machine  # noqa: E402

# vendor dense (no sparsity) peaks, FLOP/s, per precision policy; "H100 PCIe" before "H100" (substring match)
VENDOR_PEAKS = {
    "H200": {"float32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12},
    "H100 PCIe": {"float32": 51e12, "tf32": 378e12, "bf16": 756e12},
    "H100": {"float32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12},
    "A100": {"float32": 19.5e12, "tf32": 156e12, "bf16": 312e12},
    "L4": {"float32": 30.3e12, "tf32": 60e12, "bf16": 121e12},
}
POLICIES = ("float32", "tf32", "bf16")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="wall-time budget; the ResNet matrix stops where it would overrun it (default 420)")
    p.add_argument("--out", default=os.path.join(HERE, "gpu_suite_out"))
    p.add_argument("--widths", type=int, nargs="+", default=None, help="ResNet18 widths k (default 8 32 64 128)")
    p.add_argument("--members", type=int, nargs="+", default=None, help="members per program (default 5 20)")
    p.add_argument("--strategies", nargs="+", default=None, choices=("grouped", "map", "im2col"))
    p.add_argument("--precisions", nargs="+", default=None, choices=POLICIES)
    p.add_argument("--batch-size", type=int, default=None, help="ResNet minibatch (default 128)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per ResNet configuration (default 5)")
    p.add_argument("--torch-models", type=int, default=2, help="models PyTorch trains one after another (2)")
    p.add_argument("--skip", nargs="*", default=(), choices=("mlp", "hessian", "resnet", "torch"))
    p.add_argument("--tiny", action="store_true", help="toy sizes: a CPU dry run of every part")
    args = p.parse_args(argv)
    tiny = args.tiny
    args.widths = args.widths or ([2] if tiny else [8, 32, 64, 128])
    args.members = args.members or ([2] if tiny else [5, 20])
    args.strategies = args.strategies or ["grouped", "map", "im2col"]
    args.precisions = args.precisions or (["bf16"] if tiny else list(POLICIES))
    args.batch_size = args.batch_size or (8 if tiny else 128)
    args.steps = args.steps or (2 if tiny else 5)
    args.image = (8, 8, 3) if tiny else (32, 32, 3)
    return args


def vendor_peak(device_kind: str) -> dict | None:
    return next((peaks for name, peaks in VENDOR_PEAKS.items() if name in device_kind), None)


def matmul_peaks(n: int, repeats: int = 5) -> dict:
    """Best dense n x n matmul FLOP/s in JAX per precision policy."""
    from lljax import precision

    out = {}
    for policy in POLICIES:
        dtype = jnp.bfloat16 if policy == "bf16" else jnp.float32
        a = jax.random.normal(jax.random.key(1), (n, n), dtype)
        b = jax.random.normal(jax.random.key(2), (n, n), dtype)
        with precision.scope(policy):
            product = jax.jit(lambda a, b: a @ b)
            product(a, b).block_until_ready()
        best = 0.0
        for _ in range(repeats):
            start = time.perf_counter()
            product(a, b).block_until_ready()
            best = max(best, 2 * n ** 3 / (time.perf_counter() - start))
        out[policy] = best
    return out


def device_peak_bytes() -> int | None:
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 -- CPUs report none
        stats = None
    return None if not stats else int(stats.get("peak_bytes_in_use", 0)) or None


def torch_device(torch):
    return "cuda" if torch is not None and torch.cuda.is_available() else "cpu"


# ------------------------------------------------------------------------------------------ (2) MLP ensembles

def mnist1d_or_synthetic():
    from lljax import data

    try:
        return data.mnist1d(), "mnist1d"
    except Exception as e:  # noqa: BLE001 -- the package is optional on a GPU image
        rng = np.random.default_rng(0)
        x = rng.normal(size=(5000, 40)).astype(np.float32)
        y = rng.integers(0, 10, 5000).astype(np.int32)
        return data.Dataset("synthetic", x[:4000], y[:4000], x[4000:], y[4000:], 10), \
            f"synthetic data of MNIST-1D's shape (mnist1d unavailable: {type(e).__name__})"


def mlp_part(args, torch) -> dict:
    import ensemble_training as et

    dataset, source = mnist1d_or_synthetic()
    members, widths, epochs = (4, [8], 1) if args.tiny else (64, [32, 128], 10)
    batch = 64
    rows = {}
    for width in widths:
        spec, fresh = et.lljax_setup(width, members, batch, epochs, dataset)
        a = et.run_vmapped(spec, fresh, jnp.asarray(dataset.x_train), repeats=2)
        steps = epochs * spec.steps_per_epoch
        row = {"lljax_model_steps_per_s": members * steps / min(a["seconds_all"]),
               "lljax_compile_s": a["compile_seconds"]}
        if torch is not None:
            count = 2 if args.tiny else 4
            init, orders = et.initial_params(fresh, members), et.lljax_batch_orders(spec, fresh, members)
            x_np, y_np = np.asarray(dataset.x_train), np.asarray(dataset.y_train)
            device = torch_device(torch)
            et.run_torch_tuned(torch, init[:1], x_np, y_np, orders[:1, :1], device)  # warm-up
            b = et.run_torch_tuned(torch, init[:count], x_np, y_np, orders[:count], device)
            row["pytorch_model_steps_per_s"] = steps / float(np.median(b["seconds_per_model"]))
            row["speedup_vs_pytorch"] = row["lljax_model_steps_per_s"] / row["pytorch_model_steps_per_s"]
            row["final_loss_max_diff"] = float(np.max(np.abs(b["final_loss"] - a["final_loss"][:count])))
            # PyTorch's own ensembling, all members at once on the same device (the faster of two runs)
            et.run_torch_func(torch, init, x_np, y_np, orders[:, :1, :2], device)  # warm-up
            e = min((et.run_torch_func(torch, init, x_np, y_np, orders, device) for _ in range(2)),
                    key=lambda r: r["seconds"])
            row["torch_func_model_steps_per_s"] = members * steps / e["seconds"]
            row["speedup_vs_torch_func"] = row["lljax_model_steps_per_s"] / row["torch_func_model_steps_per_s"]
            row["torch_func_final_loss_max_diff"] = float(np.max(np.abs(e["final_loss"] - a["final_loss"])))
        rows[str(width)] = row
    return {"data": source, "members": members, "epochs": epochs, "batch_size": batch, "widths": rows}


# ------------------------------------------------------------------------------------------ (3) Hessian

def hessian_part(args, torch) -> dict:
    import hessian as hb
    from jax.flatten_util import ravel_pytree

    from lljax import hessian

    dataset, source = mnist1d_or_synthetic()
    members, width, samples, epochs = (2, 8, 64, 1) if args.tiny else (16, 32, 1000, 10)
    spec, params, batch_stats = hb.train_members(argparse.Namespace(width=width, members=members,
                                                                    train_epochs=epochs), dataset)
    batch = (jnp.asarray(dataset.x_train[:samples]), jnp.asarray(dataset.y_train[:samples]))
    exact_top, exact_trace = hb.exact_reference(spec, params, batch)
    num_params = ravel_pytree(jax.tree.map(lambda a: a[0], params))[0].shape[0]
    out = {"data": source, "members": members, "width": width, "samples": samples, "num_params": num_params}
    budget = None
    if torch is not None:
        reference = hb.PyHessianRunner(params, batch, width, torch_device(torch))
        reference.run(seed=10_000)  # warm-up
        runs = [reference.run(seed=r) for r in range(2)]
        _, _, _, iterations, probes = runs[0]
        out["pyhessian"] = hb.summary("PyHessian", runs, exact_top, exact_trace)
        budget = (int(np.ceil(iterations.mean())), max(2, int(np.ceil(probes.mean()))))
        peer = hb.TorchFuncHessian(reference, *budget)  # PyTorch's own ensembling of the same procedure
        peer.run(seed=10_000)  # warm-up
        out["torch_func"] = hb.summary("torch.func", [peer.run(seed=r) for r in range(2)], exact_top, exact_trace)
    configs = {"default": hessian.HessianConfig(num_samples=samples, top_k=1, density_runs=0)}
    if budget is not None:
        configs["matched"] = hessian.HessianConfig(num_samples=samples, top_k=1, density_runs=0,
                                                   lanczos_steps=budget[0], trace_probes=budget[1])
    for name, config in configs.items():
        start = time.perf_counter()
        program = hb.lljax_program(spec, batch, config).lower(
            params, batch_stats, jax.random.split(jax.random.key(0), members)).compile()
        compile_s = time.perf_counter() - start
        hb.run_lljax(program, params, batch_stats, members, seed=10_000)  # warm-up
        out[name] = hb.summary(name, [hb.run_lljax(program, params, batch_stats, members, seed=r) for r in range(2)],
                               exact_top, exact_trace)
        out[name]["compile_s"] = compile_s
        for peer in ("pyhessian", "torch_func"):
            if peer in out:
                out[name][f"speedup_vs_{peer}"] = out[peer]["seconds"] / out[name]["seconds"]
    return out


# ------------------------------------------------------------------------------------------ (1) ResNet18

def resnet_configs(args) -> list[tuple[int, int, str, str]]:
    """(k, M, strategy, policy) in the order they run: every strategy and policy of one (k, M) together,
    (k, M) from the middle of the range outwards, so a budget cut leaves whole comparisons."""
    widths = sorted(args.widths, key=lambda k: abs(math.log(k / 32)))
    pairs = [(k, m) for m in args.members for k in widths]
    return [(k, m, s, p) for k, m in pairs for p in args.precisions for s in args.strategies]


def resnet_part(args, torch, peaks, deadline) -> dict:
    import resnet_throughput as rt

    from lljax import sharding

    mesh = sharding.member_mesh()
    vendor = vendor_peak(jax.devices()[0].device_kind) or {}
    rows, torch_rows, func_rows, estimate = [], {}, {}, 0.0
    for k, m, strategy, policy in resnet_configs(args):
        row = {"k": k, "members": m, "strategy": strategy, "precision": policy}
        if time.perf_counter() + estimate > deadline:
            rows.append({**row, "skipped": "time budget"})
            continue
        start = time.perf_counter()
        try:
            run = rt.lljax_run(jax, jnp, np, k, m, args.batch_size, args.steps, 1, mesh, strategy, policy,
                               args.image)
        except Exception as e:  # noqa: BLE001 -- out of memory, an unsupported kernel: recorded, next one
            rows.append({**row, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"})
            estimate = time.perf_counter() - start
            continue
        estimate = 1.2 * (time.perf_counter() - start)
        rate = m * args.steps / run["seconds"]
        flops = rate * args.batch_size * 6.0 * rt.resnet18_macs(k, size=args.image[0])
        row.update(model_steps_per_s=rate, images_per_s=rate * args.batch_size, flops_per_s=flops,
                   fraction_of_vendor_peak=flops / vendor[policy] if policy in vendor else None,
                   fraction_of_measured_matmul=flops / peaks[policy], compile_s=run["compile_seconds"],
                   program_bytes=run["program_bytes"], device_peak_bytes=device_peak_bytes(),
                   diverged=run["diverged"], epoch0_loss=[float(v) for v in run["epoch0_loss"]])
        if torch is not None and "torch" not in args.skip and (k, policy) not in torch_rows:
            try:
                b = rt.torch_run(torch, np, k, run, min(args.torch_models, m), torch_device(torch), policy)
                torch_rows[(k, policy)] = {"model_steps_per_s": min(args.torch_models, m) * args.steps / b["seconds"],
                                           "epoch0_loss": [float(v) for v in b["epoch0_loss"]]}
            except Exception as e:  # noqa: BLE001
                torch_rows[(k, policy)] = {"error": f"{type(e).__name__}: {e}"[:200]}
        if torch is not None and "torch" not in args.skip and (k, m, policy) not in func_rows:
            try:  # PyTorch's own ensembling of the same M members (torch.func)
                e = rt.torch_func_run(torch, np, k, run, m, torch_device(torch), policy)
                func_rows[(k, m, policy)] = {"model_steps_per_s": m * args.steps / e["seconds"],
                                             "epoch0_loss": [float(v) for v in e["epoch0_loss"]]}
            except Exception as e:  # noqa: BLE001
                func_rows[(k, m, policy)] = {"error": f"{type(e).__name__}: {e}"[:200]}
        if (k, policy) in torch_rows and "model_steps_per_s" in torch_rows[(k, policy)]:
            row["speedup_vs_pytorch"] = rate / torch_rows[(k, policy)]["model_steps_per_s"]
        if "model_steps_per_s" in func_rows.get((k, m, policy), {}):
            row["speedup_vs_torch_func"] = rate / func_rows[(k, m, policy)]["model_steps_per_s"]
        rows.append(row)
    winners = {}
    for row in rows:
        if "model_steps_per_s" in row:
            key = f"k={row['k']} M={row['members']} {row['precision']}"
            if key not in winners or row["model_steps_per_s"] > winners[key]["model_steps_per_s"]:
                winners[key] = {"strategy": row["strategy"], "model_steps_per_s": row["model_steps_per_s"]}
    return {"batch_size": args.batch_size, "steps": args.steps, "image": list(args.image), "rows": rows,
            "pytorch": {f"k={k} {p}": v for (k, p), v in torch_rows.items()},
            "torch_func": {f"k={k} M={m} {p}": v for (k, m, p), v in func_rows.items()}, "fastest_strategy": winners}


def projection_part(resnet: dict) -> dict:
    """The paper preset's wall time on this device from the best measured FLOP/s per width, per policy."""
    import resnet_throughput as rt

    out = {}
    for policy in POLICIES:
        measured = {}
        for row in resnet["rows"]:
            if row.get("precision") == policy and "flops_per_s" in row:
                fpe = rt.train_flops_per_example(row["k"])
                measured[fpe] = max(measured.get(fpe, 0.0), row["flops_per_s"])
        if measured:
            grid = rt.project_grid(measured)
            out[policy] = {"total_seconds": grid["total_seconds"], "total": rt.hours(grid["total_seconds"]),
                           "measured_widths": sorted({r["k"] for r in resnet["rows"]
                                                      if r.get("precision") == policy and "flops_per_s" in r})}
    return out


# ------------------------------------------------------------------------------------------ report

def _fmt(v, spec=".3g"):
    return "" if v is None else format(v, spec) if isinstance(v, (int, float)) else str(v)


def markdown(results: dict) -> str:
    info = results["machine"]
    lines = [f"# lljax GPU suite: {info['device']} ({info['backend']}), JAX {info['jax']}, "
             f"PyTorch {results.get('torch') or 'absent'}", "",
             f"Wall time {results['seconds']:.0f} s of a {results['budget_s']:.0f} s budget.", "",
             "## Matmul FLOP/s (JAX, dense)", "", "| precision | measured | vendor peak |", "|---|---:|---:|"]
    for policy, value in results["matmul_flops"].items():
        vendor = (results.get("vendor_peaks") or {}).get(policy)
        lines.append(f"| {policy} | {value / 1e12:.1f} T | {'' if vendor is None else f'{vendor / 1e12:.1f} T'} |")
    if "resnet" in results:
        r = results["resnet"]
        lines += ["", f"## ResNet18(k) training, batch {r['batch_size']}, {r['steps']} steps, images "
                  f"{'x'.join(map(str, r['image']))}", "",
                  "| k | M | strategy | precision | model-steps/s | images/s | of vendor peak | of matmul | "
                  "vs PyTorch | vs torch.func | program GiB | compile s |", "|" + "---|" * 4 + "---:|" * 8]
        for row in r["rows"]:
            head = f"| {row['k']} | {row['members']} | {row['strategy']} | {row['precision']} | "
            if "model_steps_per_s" not in row:
                lines.append(head + f"{row.get('skipped') or row.get('error')} |" + " |" * 7)
                continue
            gib = None if row["program_bytes"] is None else row["program_bytes"] / 2 ** 30
            lines.append(head + " | ".join(_fmt(v) for v in (
                row["model_steps_per_s"], row["images_per_s"], row["fraction_of_vendor_peak"],
                row["fraction_of_measured_matmul"], row.get("speedup_vs_pytorch"), row.get("speedup_vs_torch_func"),
                gib, row["compile_s"])) + " |")
        lines += ["", "Fastest strategy (what `--conv auto` should choose): " +
                  "; ".join(f"{k}: {v['strategy']}" for k, v in r["fastest_strategy"].items())]
    for name in ("mlp", "hessian", "projection"):
        if name in results:
            lines += ["", f"## {name}", "", "```", json.dumps(results[name], indent=1, default=float), "```"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    deadline = start + args.budget_s
    from lljax import runtime

    runtime.enable_compilation_cache()  # a rerun on the same machine skips compilation
    try:
        import torch
    except ImportError:
        torch = None
    info = machine()
    print(f"device: {info['device']} ({info['backend']}), JAX {info['jax']}, "
          f"PyTorch {getattr(torch, '__version__', 'absent')}, load {load_average()}", flush=True)
    results = {"machine": info, "torch": getattr(torch, "__version__", None), "budget_s": args.budget_s,
               "args": {k: v for k, v in vars(args).items()}, "vendor_peaks": vendor_peak(info["device"])}
    results["matmul_flops"] = matmul_peaks(256 if args.tiny else 8192)
    print("matmul: " + ", ".join(f"{k} {v / 1e12:.2f} TFLOP/s" for k, v in results["matmul_flops"].items()),
          flush=True)
    parts = [("mlp", lambda: mlp_part(args, torch)), ("hessian", lambda: hessian_part(args, torch)),
             ("resnet", lambda: resnet_part(args, torch, results["matmul_flops"], deadline - 20))]
    for name, part in parts:
        if name in args.skip:
            continue
        part_start = time.perf_counter()
        try:
            results[name] = part()
        except Exception as e:  # noqa: BLE001 -- one part failing must not lose the others
            results[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        print(f"{name}: {time.perf_counter() - part_start:.1f} s", flush=True)
    if "rows" in results.get("resnet", {}):
        results["projection"] = projection_part(results["resnet"])
    results["seconds"] = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_suite.json").write_text(json.dumps(results, indent=1, default=float))
    (out / "gpu_suite.md").write_text(markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
