"""Curve-fitting speed: P Bezier curves between pairs of trained MNIST-1D MLPs, lljax (all pairs in one vmapped
program) vs PyTorch one pair after another as the reference code does it (issue 4).

    python benchmarks/curves.py [--pairs 64] [--width 32] [--batch-size 64] [--epochs 20] [--quick]
                                [--torch-pairs K] [--out FILE.json]

Setup (not timed in the comparison): 2P MLPs (depth 2) are trained on MNIST-1D with lljax; pair i joins member
i and member P + i. Then the same P quadratic Bezier curves (one bend, initialised at the midpoint, endpoints
fixed) are fitted two ways, with the same data, batch size, number of steps, t values and minibatches:

  lljax    `curves.init_curves` + `curves.fit_curves` over the pair axis: SGD momentum 0.9, one t ~ U(0, 1)
           per minibatch, loss = CE(w(t)) + 0.5 wd ||w(t)||^2, Garipov's constant-then-linear-decay lr.
           Timed once including compilation and once more warm (compile excluded).
  PyTorch  Garipov et al.'s dnn-mode-connectivity as used by Yang et al.: a curve-twin network (`CurveLinear`
           modules holding weight_0/1/2 and bias_0/1/2, weights recomputed from the Bezier coefficients on
           every forward, l2 summed over them), a DataLoader over a TensorDataset, torch.optim.SGD over the
           trainable bend, their `train` loop (loss.item() and accuracy bookkeeping every step, per-step lr
           hook), one pair after another. Minibatches and t are taken from lljax's `minibatch_plan`, so both
           follow the same trajectory up to float32 rounding; the script reports how far the fitted bends
           and the resulting mode connectivity are apart.
  torch.func PyTorch's own ensembling (`fit_torch_func`): all P curves at once, the bends stacked, the one-pair
           loss vmapped with its gradient, torch.optim.SGD on the stacked bends, the same t, minibatches and
           schedule; its bends must agree with lljax's (checked: the script fails otherwise).

The machine (CPU, cores, load average) is printed first; PyTorch uses as many intra-op threads as there are
cores. The last lines are `speedup_vs_torch_func: X.XX` (torch.func seconds over lljax's warm seconds) and
`speedup_vs_pytorch: X.XX`: PyTorch seconds over lljax seconds for all P curves (the ratios with lljax's
compilation included are printed above them). --torch-pairs K fits only K pairs in
PyTorch and scales its time by P / K (each pair costs the same there); by default all P are run.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from common import load_average, machine
from lljax import curves, data, models, train

NUM_INPUTS = 40  # MNIST-1D signal length
TRAIN_LR, CURVE_LR, WEIGHT_DECAY, MOMENTUM = 0.05, 0.01, 5e-4, 0.9
BEND_AGREEMENT = 1e-3  # largest relative bend difference of the torch.func curves from lljax's (float rounding)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=None, help="number of curves P (default 64; --quick 32)")
    p.add_argument("--width", type=int, default=32, help="MLP hidden width (default 32)")
    p.add_argument("--batch-size", type=int, default=64, help="minibatch size (default 64, the pipeline's)")
    p.add_argument("--epochs", type=int, default=None, help="curve-fitting epochs (default 20; --quick 10)")
    p.add_argument("--train-epochs", type=int, default=None,
                   help="epochs to train the endpoint models (default 20; --quick 10)")
    p.add_argument("--torch-pairs", type=int, default=None,
                   help="fit only this many pairs in PyTorch and scale its time by P / K (default: all P)")
    p.add_argument("--quick", action="store_true", help="short run, about 2 minutes")
    p.add_argument("--out", default=None, help="write all figures to this JSON file")
    args = p.parse_args(argv)
    args.pairs = args.pairs or (32 if args.quick else 64)
    args.epochs = args.epochs or (10 if args.quick else 20)
    args.train_epochs = args.train_epochs or (10 if args.quick else 20)
    args.torch_pairs = min(args.torch_pairs or args.pairs, args.pairs)
    if min(args.pairs, args.width, args.batch_size, args.epochs, args.train_epochs, args.torch_pairs) <= 0:
        p.error("--pairs, --width, --batch-size, --epochs, --train-epochs and --torch-pairs must be positive")
    return args


# ------------------------------------------------------------------------------------------------- lljax

def train_endpoints(spec: models.ModelSpec, count, batch_size, epochs, dataset):
    """`count` MLPs trained with lljax (step schedule, SGD momentum, weight decay): their params, member axis."""
    tspec = train.TrainSpec(spec, batch_size, epochs, dataset.x_train.shape[0], "step")
    const = lambda v: jnp.full((count,), v, jnp.float32)
    hyper = train.Hyper(const(TRAIN_LR), const(WEIGHT_DECAY), const(MOMENTUM), const(1.0), const(0.0))
    state, member = train.init_ensemble(tspec, jax.random.split(jax.random.key(0), count), hyper,
                                        jnp.asarray(dataset.y_train), (NUM_INPUTS,))
    state = train.train_ensemble(tspec, state, member, jnp.asarray(dataset.x_train), 0, epochs)
    _, acc = train.evaluate_ensemble(spec, state.params, state.batch_stats, jnp.asarray(dataset.x_test),
                                     jnp.broadcast_to(jnp.asarray(dataset.y_test), (count, len(dataset.y_test))))
    return state.params, np.asarray(acc)


def fit_lljax(apply_fn, starts, ends, x, y, keys, epochs, batch_size):
    def run():
        initial = curves.init_curves(starts, ends, 1)
        fitted, losses = curves.fit_curves(apply_fn, initial, x, y, keys, epochs=epochs, batch_size=batch_size,
                                           lr=CURVE_LR, weight_decay=WEIGHT_DECAY, momentum=MOMENTUM)
        return jax.block_until_ready((fitted, losses))

    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    start = time.perf_counter()
    fitted, losses = run()
    warm = time.perf_counter() - start
    return fitted, np.asarray(losses), first, warm


# ----------------------------------------------------------------------------------------------- PyTorch

def torch_reference(torch):
    """Garipov et al.'s curves.Bezier / curves.Linear / CurveNet / l2_regularizer and utils.train, for an MLP."""
    from scipy.special import binom
    nn, F = torch.nn, torch.nn.functional

    class Bezier(nn.Module):
        def __init__(self, num_bends):
            super().__init__()
            self.register_buffer("binom", torch.tensor(binom(num_bends - 1, np.arange(num_bends)), dtype=torch.float32))
            self.register_buffer("range", torch.arange(0, float(num_bends)))
            self.register_buffer("rev_range", torch.arange(float(num_bends - 1), -1, -1))

        def forward(self, t):
            return self.binom * torch.pow(t, self.range) * torch.pow(1.0 - t, self.rev_range)

    class CurveLinear(nn.Module):
        def __init__(self, in_features, out_features, fix_points):
            super().__init__()
            self.fix_points, self.l2 = fix_points, 0.0
            for i, fixed in enumerate(fix_points):
                self.register_parameter(f"weight_{i}", nn.Parameter(torch.empty(out_features, in_features),
                                                                    requires_grad=not fixed))
            for i, fixed in enumerate(fix_points):
                self.register_parameter(f"bias_{i}", nn.Parameter(torch.empty(out_features), requires_grad=not fixed))

        def compute_weights_t(self, coeffs_t):
            w_t = []
            self.l2 = 0.0
            for name in ("weight", "bias"):
                w = None
                for j, coeff in enumerate(coeffs_t):
                    p = getattr(self, f"{name}_{j}") * coeff
                    w = p if w is None else w + p
                self.l2 = self.l2 + torch.sum(w ** 2)
                w_t.append(w)
            return w_t

        def forward(self, x, coeffs_t):
            weight_t, bias_t = self.compute_weights_t(coeffs_t)
            return F.linear(x, weight_t, bias_t)

    class MLPCurve(nn.Module):  # the curve twin of models.MLP
        def __init__(self, sizes, fix_points):
            super().__init__()
            self.layers = nn.ModuleList(CurveLinear(a, b, fix_points) for a, b in zip(sizes[:-1], sizes[1:]))

        def forward(self, x, coeffs_t):
            for k, layer in enumerate(self.layers):
                x = layer(x, coeffs_t)
                if k < len(self.layers) - 1:
                    x = F.relu(x)
            return x

    class CurveNet(nn.Module):
        def __init__(self, sizes, num_bends=3):
            super().__init__()
            self.coeff_layer = Bezier(num_bends)
            self.net = MLPCurve(sizes, [True] + [False] * (num_bends - 2) + [True])
            self.curve_modules = list(self.net.layers)
            self.l2 = 0.0

        def forward(self, x, t=None):
            if t is None:
                t = x.data.new(1).uniform_()
            output = self.net(x, self.coeff_layer(t))
            self.l2 = sum(module.l2 for module in self.curve_modules)
            return output

    def l2_regularizer(weight_decay):
        return lambda model: 0.5 * weight_decay * model.l2

    def train_epoch(loader, model, optimizer, criterion, regularizer, lr_schedule, ts):
        """utils.train, with t from the plan passed to the model as its `t` argument."""
        loss_sum, correct = 0.0, 0.0
        num_iters = len(loader)
        model.train()
        for it, (inputs, target) in enumerate(loader):
            lr = lr_schedule(it / num_iters)
            for group in optimizer.param_groups:
                group["lr"] = lr
            output = model(inputs, ts[it])
            loss = criterion(output, target)
            if regularizer is not None:
                loss += regularizer(model)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * inputs.size(0)
            pred = output.data.argmax(1, keepdim=True)
            correct += pred.eq(target.data.view_as(pred)).sum().item()
        return loss_sum / (num_iters * loader.batch_sampler_size), correct

    return CurveNet, l2_regularizer, train_epoch


def fit_torch(torch, sizes, start_layers, end_layers, x, y, ts_S, idx_SB, epochs):
    """Fit one curve in PyTorch as the reference code does; returns the bend [(W (out, in), b)] and epoch losses."""
    CurveNet, l2_regularizer, train_epoch = torch_reference(torch)
    model = CurveNet(sizes)
    with torch.no_grad():
        for layer, (k0, b0), (k2, b2) in zip(model.net.layers, start_layers, end_layers):
            layer.weight_0.copy_(torch.from_numpy(np.ascontiguousarray(k0.T)))
            layer.bias_0.copy_(torch.from_numpy(b0))
            layer.weight_2.copy_(torch.from_numpy(np.ascontiguousarray(k2.T)))
            layer.bias_2.copy_(torch.from_numpy(b2))
            layer.weight_1.copy_(0.5 * layer.weight_0 + 0.5 * layer.weight_2)  # CurveNet.init_linear
            layer.bias_1.copy_(0.5 * layer.bias_0 + 0.5 * layer.bias_2)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=CURVE_LR,
                                momentum=MOMENTUM, weight_decay=0.0)
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y).long())
    steps_per_epoch = idx_SB.shape[0] // epochs
    batches = idx_SB.reshape(epochs, steps_per_epoch, -1)
    ts = torch.from_numpy(np.array(ts_S, np.float32)).reshape(epochs, steps_per_epoch, 1)
    factor = lr_factor
    losses = []
    for epoch in range(epochs):
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=[list(b) for b in batches[epoch]])
        loader.batch_sampler_size = batches.shape[-1]
        schedule = lambda frac, e=epoch: CURVE_LR * factor((e + frac) / epochs)
        loss, _ = train_epoch(loader, model, optimizer, torch.nn.functional.cross_entropy,
                              l2_regularizer(WEIGHT_DECAY), schedule, ts[epoch])
        losses.append(loss)
    bend = [(layer.weight_1.detach().numpy().T.copy(), layer.bias_1.detach().numpy().copy())
            for layer in model.net.layers]
    return bend, np.array(losses)


def lr_factor(progress: float) -> float:
    """curves.lr_factor in plain Python: 1 to half-way, linear down to 0.01 at 90%, then 0.01."""
    return 1.0 if progress <= 0.5 else (1.0 - (progress - 0.5) / 0.4 * 0.99 if progress <= 0.9 else 0.01)


def fit_torch_func(torch, start_layers, end_layers, x, y, plans, epochs):
    """The torch.func peer: all K curves at once as a PyTorch user writes it without a compiler, the bends
    stacked (K, ...), the curve's loss for one pair (w(t) = (1-t)^2 w0 + 2t(1-t) theta + t^2 w2, CE + 0.5 wd
    ||w(t)||^2) vmapped with its gradient (`vmap(grad_and_value)`), torch.optim.SGD on the stacked bends with the
    same schedule, t and minibatches as the others (`plans`: per curve (ts (S,), idx (S, B))). Returns the
    bends [(W (K, out, in), b (K, out))] and the seconds (stacking included)."""
    from torch.func import grad_and_value, vmap
    F = torch.nn.functional

    def stacked(layers):  # per layer (W (K, out, in), b (K, out)) of K curves' [(kernel (in, out), bias)]
        return [t for n in range(len(layers[0])) for t in (
            torch.from_numpy(np.stack([np.ascontiguousarray(member[n][0].T) for member in layers])),
            torch.from_numpy(np.stack([member[n][1] for member in layers])))]

    start = time.perf_counter()
    w0, w2 = stacked(start_layers), stacked(end_layers)
    theta = [0.5 * a + 0.5 * c for a, c in zip(w0, w2)]  # the midpoint (CurveNet.init_linear)

    def curve_loss(theta, w0, w2, t, xb, yb):
        w = [(1 - t) ** 2 * a + 2 * t * (1 - t) * b + t ** 2 * c for a, b, c in zip(w0, theta, w2)]
        h = xb
        for n in range(0, len(w), 2):
            h = F.linear(h, w[n], w[n + 1])
            h = F.relu(h) if n < len(w) - 2 else h
        return F.cross_entropy(h, yb) + 0.5 * WEIGHT_DECAY * sum((v ** 2).sum() for v in w)

    step = vmap(grad_and_value(curve_loss))
    opt = torch.optim.SGD(theta, lr=CURVE_LR, momentum=MOMENTUM, weight_decay=0.0)
    ts = torch.from_numpy(np.stack([np.asarray(plan[0], np.float32) for plan in plans]))  # (K, S)
    idx = torch.from_numpy(np.stack([np.asarray(plan[1]) for plan in plans]).astype(np.int64))  # (K, S, B)
    xt, yt = torch.from_numpy(np.asarray(x)), torch.from_numpy(np.asarray(y)).long()
    total = idx.shape[1]
    with torch.no_grad():  # torch.func.grad still differentiates; nothing else builds a graph
        for s in range(total):
            for group in opt.param_groups:
                group["lr"] = CURVE_LR * lr_factor(s / total)
            grads, _ = step(theta, w0, w2, ts[:, s], xt[idx[:, s]], yt[idx[:, s]])
            for p, g in zip(theta, grads):
                p.grad = g
            opt.step()
    seconds = time.perf_counter() - start
    return [(theta[n], theta[n + 1]) for n in range(0, len(theta), 2)], seconds


# ---------------------------------------------------------------------------------------------------- main

def pick_torch_threads(torch, sizes, steps=100) -> dict:
    """ms per curve-fitting step of the reference model at 1 thread and at one per core; the faster is used
    (on tiny matmuls extra threads only add synchronisation, and on a busy machine their spin-waits can cost
    tens of times the work)."""
    CurveNet, l2_regularizer, _ = torch_reference(torch)
    model = CurveNet(sizes)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=MOMENTUM)
    regularizer = l2_regularizer(WEIGHT_DECAY)
    x, y = torch.randn(64, sizes[0]), torch.randint(0, sizes[-1], (64,))

    def step():
        loss = torch.nn.functional.cross_entropy(model(x, torch.rand(1)), y) + regularizer(model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()

    ms = {}
    for threads in sorted({1, os.cpu_count()}):
        torch.set_num_threads(threads)
        for _ in range(10):
            step()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        ms[threads] = (time.perf_counter() - start) / steps * 1e3
    best = min(ms, key=ms.get)
    torch.set_num_threads(best)
    return {"ms_per_step": ms, "threads": best}


def main(argv=None):
    args = parse_args(argv)
    import torch
    info = machine()
    info["torch"] = torch.__version__
    print("machine:", ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"load average at start: {load_average()}")
    sizes = [NUM_INPUTS] + [args.width] * 2 + [10]
    threads = pick_torch_threads(torch, sizes)
    info["torch_threads"] = threads["threads"]
    print("PyTorch threads: " + ", ".join(f"{k}: {v:.2f} ms/step" for k, v in threads["ms_per_step"].items())
          + f" -> using {threads['threads']}")
    P, B, E = args.pairs, args.batch_size, args.epochs
    print(f"config: {P} curves between MLP(width {args.width}, depth 2) pairs on MNIST-1D, batch {B}, "
          f"{E} epochs; torch fits {args.torch_pairs} of them")

    dataset = data.mnist1d()
    x, y = dataset.x_train, dataset.y_train
    N = x.shape[0]
    spec = models.ModelSpec("mlp", args.width)
    start = time.perf_counter()
    params, acc = train_endpoints(spec, 2 * P, B, args.train_epochs, dataset)
    print(f"endpoints: {2 * P} MLPs trained {args.train_epochs} epochs with lljax in "
          f"{time.perf_counter() - start:.1f} s; test accuracy {acc.mean():.3f} +- {acc.std():.3f}")
    starts = jax.tree.map(lambda a: a[:P], params)
    ends = jax.tree.map(lambda a: a[P:], params)
    keys = jax.random.split(jax.random.key(1), P)
    apply_fn = spec  # a ModelSpec is a hashable model for the curve functions
    x_j, y_j = jnp.asarray(x), jnp.asarray(y)
    steps = E * (N // B)

    fitted, losses_j, first_s, warm_s = fit_lljax(apply_fn, starts, ends, x_j, y_j, keys, E, B)
    print(f"lljax:   {P} curves x {steps} steps: {first_s:.2f} s with compilation, {warm_s:.2f} s warm "
          f"({P * steps / warm_s:,.0f} curve-steps/s)")

    layers = sorted(params, key=lambda name: int(name.split("_")[-1]))
    as_layers = lambda tree, i: [(np.array(tree[k]["kernel"][i]), np.array(tree[k]["bias"][i])) for k in layers]
    K = args.torch_pairs
    plans = [curves.minibatch_plan(keys[i], N, B, E) for i in range(K)]
    plans = [(np.asarray(ts), np.asarray(idx)) for ts, idx in plans]
    bends_t, losses_t = [], []
    start = time.perf_counter()
    for i in range(K):
        bend, loss = fit_torch(torch, sizes, as_layers(starts, i), as_layers(ends, i), x, y, *plans[i], E)
        bends_t.append(bend)
        losses_t.append(loss)
    torch_k = time.perf_counter() - start
    torch_s = torch_k * P / K
    print(f"PyTorch: {K} curves x {steps} steps one after another: {torch_k:.2f} s "
          f"({K * steps / torch_k:,.0f} curve-steps/s)" + (f"; for all {P}: {torch_s:.2f} s (scaled)" if K < P else ""))

    all_plans = plans + [tuple(np.asarray(a) for a in curves.minibatch_plan(keys[i], N, B, E)) for i in range(K, P)]
    bends_f, func_s = fit_torch_func(torch, [as_layers(starts, i) for i in range(P)],
                                     [as_layers(ends, i) for i in range(P)], x, y, all_plans, E)
    kernels_f = [bends_f[n][0].numpy().transpose(0, 2, 1) for n in range(len(layers))]  # (P, in, out)
    rel_f = max(float(np.abs(np.asarray(fitted.bends[k]["kernel"][:, 0]) - kernels_f[n]).max()
                      / np.abs(kernels_f[n]).max()) for n, k in enumerate(layers))
    print(f"PyTorch torch.func: all {P} curves at once: {func_s:.2f} s ({P * steps / func_s:,.0f} curve-steps/s); "
          f"max |bend_lljax - bend_torch.func| / max|bend| = {rel_f:.2e}")

    # Same work? Compare the fitted bends and the mode connectivity of the two sets of curves.
    bend_j = jax.tree.map(lambda a: np.asarray(a[:K, 0]), fitted.bends)
    rel = max(np.abs(bend_j[k]["kernel"][i] - bends_t[i][n][0]).max() / np.abs(bends_t[i][n][0]).max()
              for i in range(K) for n, k in enumerate(layers))
    torch_bends = {k: {"kernel": jnp.stack([bends_t[i][n][0] for i in range(K)])[:, None],
                       "bias": jnp.stack([bends_t[i][n][1] for i in range(K)])[:, None]}
                   for n, k in enumerate(layers)}
    first_k = jax.tree.map(lambda a: a[:K], fitted)
    both = [first_k, first_k._replace(bends=torch_bends)]
    x_test, y_test = jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test)
    metrics = [curves.evaluate_curves(apply_fn, c, {}, x_j, y_j, x_test, y_test) for c in both]
    mc = [np.asarray(curves.mode_connectivity(m.train_err)) for m in metrics]
    mc_loss = [np.asarray(curves.mode_connectivity(m.train_loss)) for m in metrics]
    line, _ = curves.linear_barriers(apply_fn, starts, ends, {}, x_j, y_j, x_test, y_test)
    loss_gap = np.abs(losses_j[:K] - np.array(losses_t)).max()
    print(f"agreement: max |bend_lljax - bend_torch| / max|bend| = {rel:.2e}; final-epoch objective "
          f"{losses_j[:K, -1].mean():.4f} (lljax) vs {np.mean([l[-1] for l in losses_t]):.4f} (torch), "
          f"max gap {loss_gap:.1e}")
    print(f"mode connectivity on training error (mean over {K} curves): lljax {mc[0].mean():+.4f}, "
          f"torch {mc[1].mean():+.4f}, max |diff| {np.abs(mc[0] - mc[1]).max():.4f}; on training loss: "
          f"{mc_loss[0].mean():+.4f} vs {mc_loss[1].mean():+.4f}; straight line (no fitting, all {P}): "
          f"{np.asarray(line).mean():+.4f}")
    print(f"load average at end: {load_average()}")
    speedup, speedup_cold = torch_s / warm_s, torch_s / first_s
    print(f"speedup with lljax compilation included: {speedup_cold:.2f}; against torch.func: warm "
          f"{func_s / warm_s:.2f}, compilation included {func_s / first_s:.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": info, "args": vars(args), "lljax_seconds_with_compile": first_s,
                       "lljax_seconds_warm": warm_s, "torch_seconds": torch_s, "torch_seconds_measured": torch_k,
                       "bend_rel_diff": float(rel), "mc_lljax": mc[0].tolist(), "mc_torch": mc[1].tolist(),
                       "speedup": speedup, "speedup_with_compile": speedup_cold, "torch_func_seconds": func_s,
                       "bend_rel_diff_torch_func": rel_f, "speedup_vs_torch_func": func_s / warm_s,
                       "speedup_vs_torch_func_with_compile": func_s / first_s}, f, indent=2)
    print(f"speedup_vs_torch_func: {func_s / warm_s:.2f}")
    print(f"speedup_vs_pytorch: {speedup:.2f}")
    if not rel_f <= BEND_AGREEMENT:
        raise SystemExit(f"error: the torch.func curves disagree with lljax's: relative bend difference {rel_f:.2e}")


if __name__ == "__main__":
    main()
