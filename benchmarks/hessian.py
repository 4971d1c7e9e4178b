"""Hessian metrics speed and accuracy: lljax (Lanczos top eigenvalue + trace, all N members in one vmapped
program) vs the PyHessian procedure the paper used, in PyTorch, one model at a time (issue 3).

    python benchmarks/hessian.py [--members 16] [--width 32] [--samples 1000] [--train-epochs 20] [--quick]
                                 [--repeats 5] [--out FILE.json]

Setup (not timed): N MLPs (depth 2) are trained on MNIST-1D with lljax (`train.train_ensemble`, SGD momentum
0.9, lr 0.05, wd 5e-4, batch 64, different seeds); the Hessian batch is the first `--samples` training
examples. Then, on the SAME weights (flax params copied into torch modules, the losses printed side by side) and
the same samples:

  exact     float64 dense Hessian (one float64 HVP per parameter), all its eigenvalues (LAPACK syevd) and its
            trace: the reference both are scored against.
  PyHessian the procedure of PyHessian (Yao et al. 2020) as Yang et al. ran it: loss.backward(create_graph=True)
            once, HVPs by torch.autograd.grad double-backward with retain_graph; top eigenvalue by power
            iteration (random normal start, stop when the relative change < 1e-3, at most 100 iterations);
            trace by Hutchinson with Rademacher probes (stop when the running mean changes by < 1e-3
            relative, at most 100 probes); float32, one model after another. Each timed pass runs with 1 and
            with all cores' threads and the faster counts (printed).
  lljax     `hessian.hessian_metrics` (top_k=1, no density), float32, `jax.jit(jax.vmap(...))` over the N
            members, in two configurations:
            default  the pipeline's `HessianConfig` (32 Lanczos steps with full reorthogonalisation; trace
                     'auto': exact up to 1024 parameters, else 99 Rademacher probes deflated by the Lanczos
                     basis): 131 HVPs per member, far more than PyHessian spends;
            matched  PyHessian's own budget, read off its first pass: Lanczos steps = its mean power iterations,
                     trace probes = its mean Hutchinson probes (rounded up).
            Compile time is reported apart from the warm time.

Timing: after one untimed pass of each, the three runs alternate --repeats times (different random keys/seeds
each time) and the median is reported, so a change in the machine's load hits all of them. Errors are pooled over
members and repeats. The torch.func peer (`TorchFuncHessian`): PyTorch's own ensembling of the same procedure,
every member at once by vmapped `jvp(grad)` HVPs, at PyHessian's budget as 'matched' (the line
`speedup_vs_torch_func: X.XX`: its seconds over 'matched''s).
Printed: the machine (CPU, cores, load average), wall times, HVP counts, relative errors
(median and max) of the top eigenvalue and the trace. The last line is `speedup_vs_pyhessian: X.XX`: PyHessian
seconds over lljax 'matched' warm seconds for all N members (same HVP budget; its accuracy is printed and
compared above it, as is the speedup of the 'default' configuration and the ratios with compile included).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

# Before numpy loads OpenBLAS: the exact reference's dense eigh ran 10-20x slower with 2 OpenBLAS threads than
# with 1 on this shared 2-core machine (threads spinning against other processes).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from common import load_average, machine
from lljax import data, hessian, models, train

NUM_INPUTS = 40  # MNIST-1D signal length
LR, WEIGHT_DECAY, MOMENTUM, BATCH = 0.05, 5e-4, 0.9, 64
PYHESSIAN_TOL, PYHESSIAN_MAX_ITER = 1e-3, 100


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, default=None, help="number of models N (default 16; --quick 8)")
    p.add_argument("--width", type=int, default=32, help="MLP hidden width (default 32)")
    p.add_argument("--samples", type=int, default=None,
                   help="training samples in the Hessian batch (default 1000; --quick 500; the paper used 200)")
    p.add_argument("--train-epochs", type=int, default=None, help="training epochs (default 20; --quick 10)")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed alternating passes of PyHessian and lljax to take the median of (default 5)")
    p.add_argument("--quick", action="store_true", help="short run, about 2 minutes")
    p.add_argument("--out", default=None, help="write all figures to this JSON file")
    args = p.parse_args(argv)
    args.members = args.members or (8 if args.quick else 16)
    args.samples = args.samples or (500 if args.quick else 1000)
    args.train_epochs = args.train_epochs or (10 if args.quick else 20)
    if min(args.members, args.width, args.samples, args.train_epochs, args.repeats) <= 0:
        p.error("--members, --width, --samples, --train-epochs and --repeats must be positive")
    return args


def train_members(args, dataset):
    """N trained MLPs (params with a leading member axis) and the model spec."""
    spec = train.TrainSpec(models.ModelSpec("mlp", args.width), BATCH, args.train_epochs,
                           dataset.x_train.shape[0], "step")
    n = args.members
    hyper = train.Hyper(*(jnp.full((n,), value, jnp.float32) for value in (LR, WEIGHT_DECAY, MOMENTUM, 1.0, 0.0)))
    keys = jax.random.split(jax.random.key(0), n)
    state, member = train.init_ensemble(spec, keys, hyper, jnp.asarray(dataset.y_train), (NUM_INPUTS,))
    state = train.train_ensemble(spec, state, member, jnp.asarray(dataset.x_train), 0, args.train_epochs)
    return spec.model, jax.block_until_ready(state.params), state.batch_stats


def exact_reference(spec, params, batch):
    """(top eigenvalue (N,), trace (N,)) from the float64 dense Hessian of every member."""
    tops, traces = [], []
    with jax.enable_x64(True):
        x, y = jnp.asarray(batch[0], jnp.float64), jnp.asarray(batch[1])
        loss_fn = models.loss_fn(spec, {})
        member = lambda i: ravel_pytree(jax.tree.map(lambda a: np.asarray(a[i], np.float64), params))
        unravel = member(0)[1]

        @jax.jit
        def dense(flat):
            # column j = H e_j, exact up to float64 rounding; the tests check hvp against jax.hessian
            _, matvec = jax.linearize(jax.grad(lambda f: loss_fn(unravel(f), (x, y))), flat)
            return jax.lax.map(matvec, jnp.eye(flat.shape[0], dtype=flat.dtype), batch_size=128)

        for i in range(jax.tree.leaves(params)[0].shape[0]):
            h = np.asarray(dense(jnp.asarray(member(i)[0])))
            eigenvalues = np.linalg.eigvalsh(h)  # reads one triangle: symmetric by construction
            tops.append(eigenvalues[-1])
            traces.append(np.trace(h))
    return np.array(tops), np.array(traces)


def lljax_program(spec, batch, config):
    """The compiled vmapped Hessian metrics for all members (compile seconds reported by the caller)."""

    def metrics(params, batch_stats, keys):
        one = lambda p, bs, k: hessian.hessian_metrics(models.loss_fn(spec, bs), p, batch, k, config)
        return jax.vmap(one)(params, batch_stats, keys)

    return jax.jit(metrics)


def hvps_per_member(config, num_params):
    trace_method = config.trace_method
    if trace_method == "auto":
        trace_method = "exact" if num_params <= config.exact_trace_max_params else "krylov"
    trace_hvps = num_params if trace_method == "exact" else config.trace_probes
    return min(config.lanczos_steps, num_params) + trace_hvps, trace_method


def run_lljax(compiled, params, batch_stats, members, seed):
    """One timed call: (seconds, top eigenvalues (N,), traces (N,), trace standard errors (N,), residuals (N,))."""
    keys = jax.random.split(jax.random.key(seed), members)
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(params, batch_stats, keys))
    seconds = time.perf_counter() - start
    fields = (out.top_eigenvalues[:, 0], out.trace, out.trace_se, out.top_residuals[:, 0])
    return seconds, *(np.asarray(a, np.float64) for a in fields)


# ------------------------------------------------------------------------------------- PyHessian in PyTorch

def torch_mlp(torch, params_i, width, depth=2):
    """nn.Sequential MLP holding one member's flax weights (Dense kernel (in, out) -> Linear weight (out, in))."""
    nn = torch.nn
    layers, fan_in = [nn.Flatten()], NUM_INPUTS
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width), nn.ReLU()]
        fan_in = width
    layers.append(nn.Linear(fan_in, params_i[f"Dense_{depth}"]["bias"].shape[0]))
    model = nn.Sequential(*layers)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for k, linear in enumerate(linears):
            linear.weight.copy_(torch.from_numpy(np.asarray(params_i[f"Dense_{k}"]["kernel"]).T.copy()))
            linear.bias.copy_(torch.from_numpy(np.asarray(params_i[f"Dense_{k}"]["bias"]).copy()))
    return model


def pyhessian(torch, model, inputs, targets, seed):
    """PyHessian's `hessian(model, criterion, data=(inputs, targets))`, `.eigenvalues()` (top_n=1) and
    `.trace()` with their defaults (maxIter=100, tol=1e-3), as in the PyHessian source (which also re-normalises v
    once more per power iteration; left out, it only costs time). Returns (top eigenvalue, trace, power
    iterations, Hutchinson probes)."""
    torch.manual_seed(seed)
    model.eval()
    criterion = torch.nn.CrossEntropyLoss()
    loss = criterion(model(inputs), targets)
    loss.backward(create_graph=True)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else 0.0 for p in params]
    product = lambda xs, ys: sum(torch.sum(x * y) for x, y in zip(xs, ys))

    def normalization(v):
        s = torch.sqrt(product(v, v)).item()
        return [vi / (s + 1e-6) for vi in v]

    def hessian_vector_product(v):
        return torch.autograd.grad(grads, params, grad_outputs=v, only_inputs=True, retain_graph=True)

    iterations = probes = 0
    eigenvalue = None
    v = normalization([torch.randn(p.size(), device=p.device) for p in params])
    for _ in range(PYHESSIAN_MAX_ITER):
        model.zero_grad()
        hv = hessian_vector_product(v)
        iterations += 1
        tmp_eigenvalue = product(hv, v).item()
        v = normalization(hv)
        if eigenvalue is None:
            eigenvalue = tmp_eigenvalue
        elif abs(eigenvalue - tmp_eigenvalue) / (abs(eigenvalue) + 1e-6) < PYHESSIAN_TOL:
            break
        else:
            eigenvalue = tmp_eigenvalue

    trace_vhv, trace = [], 0.0
    for _ in range(PYHESSIAN_MAX_ITER):
        model.zero_grad()
        v = [torch.randint_like(p, high=2) for p in params]
        for vi in v:
            vi[vi == 0] = -1
        hv = hessian_vector_product(v)
        probes += 1
        trace_vhv.append(product(hv, v).item())
        if abs(np.mean(trace_vhv) - trace) / (abs(trace) + 1e-6) < PYHESSIAN_TOL:
            break
        trace = np.mean(trace_vhv)
    for p in params:  # release the double-backward graph
        p.grad = None
    return eigenvalue, float(np.mean(trace_vhv)), iterations, probes


class PyHessianRunner:
    """PyHessian over the N members one after another, on torch copies of the same weights and samples."""

    def __init__(self, params, batch, width, device="cpu"):
        import torch

        self.torch = torch
        self.inputs = torch.from_numpy(np.asarray(batch[0]).copy()).to(device)
        self.targets = torch.from_numpy(np.asarray(batch[1]).astype(np.int64)).to(device)
        self.members = jax.tree.leaves(params)[0].shape[0]
        self.models = [torch_mlp(torch, jax.tree.map(lambda a: np.asarray(a[i]), params), width).to(device)
                       for i in range(self.members)]
        with torch.no_grad():
            self.losses = [float(torch.nn.functional.cross_entropy(m(self.inputs), self.targets))
                           for m in self.models]
        pyhessian(torch, self.models[0], self.inputs, self.targets, seed=0)  # PyTorch's lazy initialisation
        self.thread_options = sorted({1, os.cpu_count()}) if device == "cpu" else [torch.get_num_threads()]
        self.wins = {t: 0 for t in self.thread_options}

    def run(self, seed):
        """One timed pass over all members with each thread count; the faster pass counts (a single thread-count
        trial picked 2 threads on a 1-ms difference, which then ran 15x slower under the machine's load).
        Returns (seconds, tops (N,), traces (N,), iterations (N,), probes (N,)); seeds are the same for every
        thread count, so the numbers are too."""
        passes = {}
        for threads in self.thread_options:
            self.torch.set_num_threads(threads)
            start = time.perf_counter()
            results = [pyhessian(self.torch, model, self.inputs, self.targets, seed=seed * self.members + i)
                       for i, model in enumerate(self.models)]
            passes[threads] = (time.perf_counter() - start, results)
        best = min(passes, key=lambda t: passes[t][0])
        self.wins[best] += 1
        seconds, results = passes[best]
        return seconds, *(np.array(column, np.float64) for column in zip(*results))


class TorchFuncHessian:
    """PyTorch's own ensembling of PyHessian's procedure: every member at once (`torch_peers.stack` of the same
    torch models), HVPs by `vmap(jvp(grad(loss)))` over the stacked parameters, at PyHessian's own budget as
    lljax 'matched' (its mean power iterations and Hutchinson probes: a vmapped loop cannot stop member by
    member); each pass with 1 and all cores' threads, the faster counts."""

    def __init__(self, reference: PyHessianRunner, iterations: int, probes: int):
        import torch_peers
        from torch.func import functional_call, grad, jvp, vmap

        torch = self.torch = reference.torch
        params, self.buffers, base = torch_peers.stack(torch, reference.models)
        self.params = {k: v.detach() for k, v in params.items()}
        x, y = reference.inputs, reference.targets
        loss = lambda p, b: torch.nn.functional.cross_entropy(functional_call(base, (p, b), (x,)), y)
        self.hvp = vmap(lambda p, b, v: jvp(lambda q: grad(loss)(q, b), (p,), (v,))[1])
        self.iterations, self.probes, self.members = iterations, probes, reference.members
        self.thread_options = reference.thread_options

    def _once(self, seed):
        torch = self.torch
        torch.manual_seed(seed)
        dot = lambda a, b: sum((a[k] * b[k]).flatten(1).sum(1) for k in a)  # (M,)
        scale = lambda v, s: {k: t * s.view(-1, *[1] * (t.dim() - 1)) for k, t in v.items()}
        v = {k: torch.randn_like(p) for k, p in self.params.items()}
        v = scale(v, 1 / (dot(v, v).sqrt() + 1e-6))
        for _ in range(self.iterations):
            hv = self.hvp(self.params, self.buffers, v)
            top = dot(hv, v)
            v = scale(hv, 1 / (dot(hv, hv).sqrt() + 1e-6))
        trace = torch.zeros(self.members, device=top.device)
        for _ in range(self.probes):
            v = {k: torch.randint_like(p, high=2) * 2 - 1 for k, p in self.params.items()}
            trace += dot(self.hvp(self.params, self.buffers, v), v)
        return top.double().cpu().numpy(), (trace / self.probes).double().cpu().numpy()  # (waits for the device)

    def run(self, seed):
        """(seconds, tops (N,), traces (N,), iterations (N,), probes (N,)) of the faster thread count."""
        passes = {}
        for threads in self.thread_options:
            self.torch.set_num_threads(threads)
            start = time.perf_counter()
            out = self._once(seed)
            passes[threads] = (time.perf_counter() - start, out)
        seconds, (tops, traces) = min(passes.values(), key=lambda p: p[0])
        return (seconds, tops, traces, np.full(self.members, float(self.iterations)),
                np.full(self.members, float(self.probes)))


def relative_errors(estimate, exact):
    err = np.abs(np.ravel(estimate) - np.ravel(exact)) / np.abs(np.ravel(exact))
    return {"median": float(np.median(err)), "max": float(np.max(err))}


def summary(name, runs, exact_top, exact_trace):
    """Median seconds and pooled relative errors of the timed runs [(seconds, tops, traces, ...), ...]."""
    seconds = [r[0] for r in runs]
    return dict(name=name, seconds=statistics.median(seconds), all_seconds=seconds,
                top_error=relative_errors([r[1] for r in runs], np.tile(exact_top, len(runs))),
                trace_error=relative_errors([r[2] for r in runs], np.tile(exact_trace, len(runs))))


def main(argv=None):
    args = parse_args(argv)
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['backend']}, jax {info['jax']}, "
          f"load average {load_average()}", flush=True)
    dataset = data.mnist1d()
    start = time.perf_counter()
    spec, params, batch_stats = train_members(args, dataset)
    batch = (jnp.asarray(dataset.x_train[:args.samples]), jnp.asarray(dataset.y_train[:args.samples]))
    num_params = ravel_pytree(jax.tree.map(lambda a: a[0], params))[0].shape[0]
    losses = np.asarray(jax.vmap(lambda p: models.loss_fn(spec, {})(p, batch))(params))
    print(f"setup: {args.members} MLPs width {args.width} ({num_params} parameters) trained {args.train_epochs} "
          f"epochs in {time.perf_counter() - start:.1f} s; Hessian batch {args.samples} samples; "
          f"mean loss on it {losses.mean():.4f}", flush=True)

    start = time.perf_counter()
    exact_top, exact_trace = exact_reference(spec, params, batch)
    print(f"exact (float64 dense Hessian + eigh): {time.perf_counter() - start:.1f} s; top eigenvalue "
          f"{np.median(exact_top):.4g} (median), trace {np.median(exact_trace):.4g} (median)", flush=True)

    # PyHessian's first pass is untimed: it fixes the 'matched' lljax budget.
    reference = PyHessianRunner(params, batch, args.width)
    _, _, _, iterations, probes = reference.run(seed=10_000)
    reference.wins = dict.fromkeys(reference.wins, 0)
    np.testing.assert_allclose(reference.losses, losses, rtol=1e-5, err_msg="torch and flax models disagree")
    configs = {
        "default": hessian.HessianConfig(num_samples=args.samples, top_k=1, density_runs=0),
        "matched": hessian.HessianConfig(num_samples=args.samples, top_k=1, density_runs=0,
                                         lanczos_steps=int(np.ceil(iterations.mean())),
                                         trace_probes=max(2, int(np.ceil(probes.mean())))),
    }
    peer = TorchFuncHessian(reference, int(np.ceil(iterations.mean())), max(2, int(np.ceil(probes.mean()))))
    peer.run(seed=10_000)  # untimed warm-up
    programs, compile_seconds = {}, {}
    for name, config in configs.items():
        start = time.perf_counter()
        programs[name] = lljax_program(spec, batch, config).lower(params, batch_stats,
                                                                  jax.random.split(jax.random.key(0), args.members))
        programs[name] = programs[name].compile()
        compile_seconds[name] = time.perf_counter() - start
        run_lljax(programs[name], params, batch_stats, args.members, seed=10_000)  # untimed warm-up
    print(f"PyHessian (PyTorch {reference.torch.__version__}): HVPs per member: power iterations "
          f"{iterations.mean():.1f} (mean), Hutchinson probes {probes.mean():.1f} (mean); "
          f"lljax compile {', '.join(f'{k} {v:.1f} s' for k, v in compile_seconds.items())}", flush=True)

    runs = {"PyHessian": [], "torch.func": [], **{name: [] for name in configs}}
    loads = []
    for r in range(args.repeats):
        runs["PyHessian"].append(reference.run(seed=r))
        runs["torch.func"].append(peer.run(seed=r))
        for name in configs:
            runs[name].append(run_lljax(programs[name], params, batch_stats, args.members, seed=r))
        loads.append(load_average())
    print(f"timed {args.repeats} alternating repeats; load average during them {min(loads)}..{max(loads)}; "
          f"PyHessian's faster thread count per repeat: "
          f"{', '.join(f'{t} thread(s) {n}x' for t, n in reference.wins.items())}")

    results = {name: summary(name, r, exact_top, exact_trace) for name, r in runs.items()}
    for name in ("PyHessian", "torch.func"):
        results[name]["hvps_per_member"] = float(np.mean([r[3] + r[4] for r in runs[name]]))
    for name, config in configs.items():
        hvps, method = hvps_per_member(config, num_params)
        within = np.concatenate([np.abs(r[2] - exact_trace) <= 3 * r[3] + 1e-6 * np.abs(exact_trace)
                                 for r in runs[name]])
        results[name].update(hvps_per_member=hvps, compile_seconds=compile_seconds[name], config=str(config),
                             trace_method=method, trace_within_3se=f"{int(within.sum())}/{within.size}",
                             median_top_residual=float(np.median([r[4] for r in runs[name]])))

    print(f"{'':10s} {'HVPs/member':>11s} {'seconds':>8s} {'ms/HVP':>7s} {'speedup':>8s} "
          f"{'top eig rel. err (med / max)':>29s} {'trace rel. err (med / max)':>27s}")
    pyhessian_seconds = results["PyHessian"]["seconds"]
    for name, result in results.items():
        # ms per HVP of one member: on a CPU, vmapping members adds no hardware, so this is the rate that counts
        result["ms_per_member_hvp"] = 1e3 * result["seconds"] / (args.members * result["hvps_per_member"])
        print(f"{name:10s} {result['hvps_per_member']:11.1f} {result['seconds']:8.3f} "
              f"{result['ms_per_member_hvp']:7.3f} {pyhessian_seconds / result['seconds']:8.2f} "
              f"{result['top_error']['median']:13.2e} / {result['top_error']['max']:.2e} "
              f"{result['trace_error']['median']:11.2e} / {result['trace_error']['max']:.2e}")
    for name in configs:
        result = results[name]
        better = all(result[k][s] < results["PyHessian"][k][s] for k in ("top_error", "trace_error")
                     for s in ("median", "max"))
        result["more_accurate_than_pyhessian"] = better
        with_compile = pyhessian_seconds / (result["seconds"] + result["compile_seconds"])
        print(f"lljax {name}: trace {result['trace_method']} ({result['trace_within_3se']} within 3 standard "
              f"errors), median top residual bound {result['median_top_residual']:.1e}; more accurate than "
              f"PyHessian (median and max of both): {'yes' if better else 'NO'}; speedup including compile "
              f"{with_compile:.2f}")
    print(f"same weights: loss of member 0 lljax {losses[0]:.6f}, torch {reference.losses[0]:.6f}")
    if args.out:
        record = dict(args=vars(args), machine=info, num_params=num_params, exact_top=exact_top.tolist(),
                      exact_trace=exact_trace.tolist(), load_average=loads, results=results,
                      pyhessian_thread_wins=reference.wins)
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1, default=float)
    print(f"speedup_default_config: {pyhessian_seconds / results['default']['seconds']:.2f}")
    print(f"speedup_vs_torch_func: {results['torch.func']['seconds'] / results['matched']['seconds']:.2f}")
    print(f"speedup_vs_pyhessian: {pyhessian_seconds / results['matched']['seconds']:.2f}")


if __name__ == "__main__":
    main()
