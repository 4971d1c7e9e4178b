"""Sharpness-aware minimisation speed: an ensemble of MLPs trained with SAM, each member with its own radius, in one
vmapped lljax program vs PyTorch's usual two-pass SAM training the same models one after another (issue 25).

    python benchmarks/sam.py [--models 16] [--width 32] [--epochs 3] [--quick]

MNIST-1D (4000 training examples), MLPs of depth 2, batch 64, SGD (lr 0.05, momentum 0.9, weight decay 5e-4), the
radii spread over 0.01-0.2. Timed:

  lljax    `train.train_ensemble` with `Hyper.sam_rho` (M,): one program, timed once including compilation and once
           warm; and the same ensemble without SAM (plain training) warm, for the cost of SAM's second gradient.
  PyTorch  per model, the usual two-pass SAM step (davda54/sam): loss.backward(); e = rho g / ||g||; w += e;
           loss.backward() at w + e; w -= e; SGD step; one model after another, intra-op threads = cores.
  torch.func  PyTorch's own ensembling of the same two-pass step (`torch_peers`): the same models and batches as
           the loop (its seeds and permutations), every member at once: vmapped gradients at w and at w + e
           (each member its own radius and norm), torch.optim.SGD on the stacked tensors; its final losses must
           agree with the loop's (the script fails otherwise).

The machine (CPU, cores, load average) is printed first; the last lines are `speedup_vs_torch_func: X.XX` and
`speedup_vs_pytorch: X.XX` (the peer's seconds over lljax's including compilation; the warm ratios above them).
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
from lljax import data, models, train

LR, WD, MOMENTUM, BATCH = 0.05, 5e-4, 0.9, 64
LOSS_AGREEMENT = 1e-3  # largest |last-step loss difference| of torch.func and the loop (same models, batches)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=int, default=None, help="models M (default 16; --quick 8)")
    p.add_argument("--width", type=int, default=32, help="MLP hidden width (default 32)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default 3; --quick 1)")
    p.add_argument("--quick", action="store_true", help="a short run")
    p.add_argument("--out", default=None, help="write the numbers to this JSON file")
    args = p.parse_args(argv)
    args.models = args.models or (8 if args.quick else 16)
    args.epochs = args.epochs or (1 if args.quick else 3)
    if min(args.models, args.width, args.epochs) <= 0:
        p.error("--models, --width and --epochs must be positive")
    return args


def lljax_program(ds, width, epochs, n, rhos=None):
    """Train n MLPs from scratch: with SAM at radii `rhos` (n,), or plain training (None: no SAM in the program)."""
    spec = train.TrainSpec(models.ModelSpec("mlp", width), BATCH, epochs, len(ds.y_train), "constant")
    full = lambda v: jnp.full((n,), v, jnp.float32)
    hyper = train.Hyper(full(LR), full(WD), full(MOMENTUM), full(1.0), full(0.0),
                        sam_rho=None if rhos is None else jnp.asarray(rhos, jnp.float32))
    keys = jax.random.split(jax.random.key(0), n)
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)

    def run():
        state, member = train.init_ensemble(spec, keys, hyper, y, x.shape[1:])
        state = train.train_ensemble(spec, state, member, x, 0, epochs)
        return np.asarray(jax.block_until_ready(state.loss))

    return run


def torch_mlp(torch, num_inputs, width):
    nn = torch.nn
    return nn.Sequential(nn.Linear(num_inputs, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 10))


def torch_sam(torch, ds, width, epochs, rhos):
    F = torch.nn.functional
    x, y = torch.from_numpy(np.asarray(ds.x_train)), torch.from_numpy(np.asarray(ds.y_train)).long()

    def run():
        losses = []
        for i, rho in enumerate(rhos):
            torch.manual_seed(i)
            net = torch_mlp(torch, x.shape[1], width)
            opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
            params = list(net.parameters())
            for _ in range(epochs):
                order = torch.randperm(len(y))
                for j in range(len(y) // BATCH):
                    idx = order[j * BATCH:(j + 1) * BATCH]
                    loss = F.cross_entropy(net(x[idx]), y[idx])
                    opt.zero_grad()
                    loss.backward()
                    with torch.no_grad():  # first step: climb to w + rho g / ||g||
                        norm = torch.norm(torch.stack([p.grad.norm(2) for p in params]), 2)
                        eps = [p.grad * (rho / (norm + 1e-12)) for p in params]
                        for p, e in zip(params, eps):
                            p.add_(e)
                    opt.zero_grad()
                    F.cross_entropy(net(x[idx]), y[idx]).backward()
                    with torch.no_grad():  # second step: back to w, descend with the gradient at w + e
                        for p, e in zip(params, eps):
                            p.sub_(e)
                    opt.step()
            losses.append(float(loss.detach()))
        return np.asarray(losses)

    return run


def torch_members(torch, count, num_inputs, width, n, epochs):
    """(models, orders (M, epochs, n)) as `torch_sam`'s loop draws them: per member its seed, its network's
    initialisation, then one permutation per epoch from the global generator."""
    nets, orders = [], []
    for i in range(count):
        torch.manual_seed(i)
        nets.append(torch_mlp(torch, num_inputs, width))
        orders.append(torch.stack([torch.randperm(n) for _ in range(epochs)]))
    return nets, torch.stack(orders)


def torch_func_sam(torch, ds, width, epochs, rhos):
    """PyTorch's own ensembling of `torch_sam`'s two-pass step: the same models and batches, all members at once."""
    import torch_peers

    F = torch.nn.functional
    x, y = torch.from_numpy(np.asarray(ds.x_train)), torch.from_numpy(np.asarray(ds.y_train)).long()

    def run():
        nets, orders = torch_members(torch, len(rhos), x.shape[1], width, len(y), epochs)
        params, buffers, base = torch_peers.stack(torch, nets)
        step = torch_peers.vmapped_step(torch, base, F.cross_entropy)
        opt = torch.optim.SGD(list(params.values()), lr=LR, momentum=MOMENTUM, weight_decay=WD)
        rho = torch.as_tensor(rhos)
        with torch.no_grad():
            for e in range(epochs):
                for j in range(len(y) // BATCH):
                    idx = orders[:, e, j * BATCH:(j + 1) * BATCH]  # (M, B)
                    grads, loss = step(params, buffers, x[idx], y[idx])
                    norm = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads.values()]).sum(0).sqrt()
                    scale = rho / (norm + 1e-12)  # (M,): each member's climb to w + rho g / ||g||
                    eps = {k: g * scale.view(-1, *[1] * (g.dim() - 1)) for k, g in grads.items()}
                    for k, p in params.items():
                        p.add_(eps[k])
                    grads, _ = step(params, buffers, x[idx], y[idx])
                    for k, p in params.items():  # back to w, descend with the gradient at w + e
                        p.sub_(eps[k])
                        p.grad = grads[k]
                    opt.step()
        return loss.numpy()

    return run


def main(argv=None):
    args = parse_args(argv)
    import torch

    torch.set_num_threads(os.cpu_count())
    info = dict(machine(), torch=torch.__version__, load_average_start=load_average())
    print(json.dumps(info))
    ds = data.mnist1d()
    rhos = np.linspace(0.01, 0.2, args.models).astype(np.float32)
    timed = {}
    for name, run in (("sam", lljax_program(ds, args.width, args.epochs, args.models, rhos)),
                      ("plain", lljax_program(ds, args.width, args.epochs, args.models))):
        start = time.perf_counter()
        run()
        timed[f"{name}_cold"] = time.perf_counter() - start
        start = time.perf_counter()
        run()
        timed[f"{name}_warm"] = time.perf_counter() - start
    run_torch = torch_sam(torch, ds, args.width, args.epochs, rhos)
    start = time.perf_counter()
    torch_losses = run_torch()
    torch_s = time.perf_counter() - start
    func_s, func_losses = {}, None
    for threads in sorted({1, os.cpu_count() or 1}):  # the faster thread count
        torch.set_num_threads(threads)
        start = time.perf_counter()
        func_losses = torch_func_sam(torch, ds, args.width, args.epochs, rhos)()
        func_s[threads] = time.perf_counter() - start
    func_best = min(func_s.values())
    agreement = float(np.max(np.abs(func_losses - torch_losses)))
    out = dict(info, models=args.models, width=args.width, epochs=args.epochs,
               lljax_sam_s_with_compile=round(timed["sam_cold"], 3), lljax_sam_s_warm=round(timed["sam_warm"], 3),
               lljax_plain_s_warm=round(timed["plain_warm"], 3), pytorch_sam_s=round(torch_s, 3),
               torch_func_sam_s=round(func_best, 3), torch_func_s_by_threads=func_s,
               torch_func_vs_loop_max_loss_diff=agreement, load_average_end=load_average())
    print(json.dumps(out))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)
    print(f"warm speedup_vs_torch_func: {func_best / timed['sam_warm']:.2f}")
    print(f"warm speedup_vs_pytorch: {torch_s / timed['sam_warm']:.2f}")
    print(f"speedup_vs_torch_func: {func_best / timed['sam_cold']:.2f}")
    print(f"speedup_vs_pytorch: {torch_s / timed['sam_cold']:.2f}")
    if agreement > LOSS_AGREEMENT:
        raise SystemExit(f"error: torch.func and the PyTorch loop disagree on the same models: {agreement:.2e}")


if __name__ == "__main__":
    main()
