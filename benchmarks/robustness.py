"""Adversarial-attack speed: one L-infinity PGD attack on every model of a group, lljax (all models in one
vmapped program) vs PyTorch attacking the same models one after another (issue 26).

    python benchmarks/robustness.py [--models 32] [--width 32] [--samples 256] [--steps 10] [--quick]

Setup (not timed): M MLPs (depth 2) trained on MNIST-1D by lljax (`common.trained_mlps`). Then the first S test
examples are attacked, epsilon 0.1 (MNIST-1D is standardised), `steps` steps of epsilon / 4, no random start (so
both sides compute the same attack and the adversarial accuracies can be compared):

  lljax    `robustness.pgd_attack` written for one model, `jax.jit(jax.vmap(...))` over the M models; timed once
           including compilation and once warm.
  PyTorch  the models as `nn.Sequential` with the same weights, the usual PGD loop per model (advertorch's
           LinfPGDAttack without its random start: x.requires_grad, cross-entropy summed, backward, x + a
           sign(grad), clamp to the ball), one model after another, intra-op threads = cores.
  torch.func  PyTorch's own ensembling of the same attack on the same models: `vmap(grad(loss))` over the stacked
           parameters and every model's own perturbation, all models at once (the faster of 1 and all threads).

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

from common import load_average, machine, trained_mlps
from lljax import models, robustness

EPSILON = 0.1


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=int, default=None, help="models M (default 32; --quick 16)")
    p.add_argument("--width", type=int, default=32, help="MLP hidden width (default 32)")
    p.add_argument("--samples", type=int, default=256, help="test examples attacked per model (default 256)")
    p.add_argument("--steps", type=int, default=10, help="PGD steps (default 10)")
    p.add_argument("--train-epochs", type=int, default=10, help="epochs to train the models (default 10)")
    p.add_argument("--quick", action="store_true", help="a short run")
    p.add_argument("--out", default=None, help="write the numbers to this JSON file")
    args = p.parse_args(argv)
    args.models = args.models or (16 if args.quick else 32)
    if min(args.models, args.width, args.samples, args.steps, args.train_epochs) <= 0:
        p.error("--models, --width, --samples, --steps and --train-epochs must be positive")
    return args


def attack_lljax(spec, params, x, y, steps):
    def one(p):
        logits = lambda v: models.apply(spec, p, {}, v)[0]
        adv = robustness.pgd_attack(logits, x, y, epsilon=EPSILON, steps=steps, step_size=EPSILON / 4)
        return jnp.mean(jnp.argmax(logits(adv), -1) == y)

    program = jax.jit(jax.vmap(one))
    return lambda: jax.block_until_ready(program(params))


def torch_nets(torch, params, width):
    """The M lljax MLPs as `nn.Sequential` models with the same weights."""
    nn = torch.nn
    nets = []
    for i in range(len(jax.tree.leaves(params)[0])):
        layers = [params["Dense_0"], params["Dense_1"], params["Dense_2"]]
        net = nn.Sequential(nn.Linear(40, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))
        with torch.no_grad():
            for module, layer in zip([net[0], net[2], net[4]], layers):
                module.weight.copy_(torch.from_numpy(np.asarray(layer["kernel"][i]).T.copy()))
                module.bias.copy_(torch.from_numpy(np.asarray(layer["bias"][i]).copy()))
        nets.append(net.eval())
    return nets


def attack_torch(torch, nets, x, y, steps):
    F = torch.nn.functional
    xt, yt = torch.from_numpy(np.array(x)), torch.from_numpy(np.array(y)).long()

    def run():
        accs = []
        for net in nets:
            for p in net.parameters():
                p.requires_grad_(False)
            delta = torch.zeros_like(xt)
            for _ in range(steps):
                delta.requires_grad_(True)
                loss = F.cross_entropy(net(xt + delta), yt, reduction="sum")
                grad, = torch.autograd.grad(loss, delta)
                delta = torch.clamp(delta.detach() + EPSILON / 4 * grad.sign(), -EPSILON, EPSILON)
            with torch.no_grad():
                accs.append(float((net(xt + delta).argmax(-1) == yt).float().mean()))
        return np.asarray(accs)

    return run


def attack_torch_func(torch, nets, x, y, steps):
    """PyTorch's own ensembling of the same attack (`torch_peers`): every model's input gradient at once,
    `vmap(grad(loss))` over the stacked parameters and each model's own perturbation."""
    import torch_peers
    from torch.func import functional_call, grad, vmap

    F = torch.nn.functional
    xt, yt = torch.from_numpy(np.array(x)), torch.from_numpy(np.array(y)).long()
    params, buffers, base = torch_peers.stack(torch, nets)
    params = {k: v.detach() for k, v in params.items()}
    outputs = lambda p, b, delta: functional_call(base, (p, b), (xt + delta,))
    input_grad = vmap(grad(lambda delta, p, b: F.cross_entropy(outputs(p, b, delta), yt, reduction="sum")))

    def run():
        delta = torch.zeros(len(nets), *xt.shape)
        for _ in range(steps):
            delta = torch.clamp(delta + EPSILON / 4 * input_grad(delta, params, buffers).sign(), -EPSILON, EPSILON)
        with torch.no_grad():
            return (vmap(outputs)(params, buffers, delta).argmax(-1) == yt).float().mean(1).numpy()

    return run


def main(argv=None):
    args = parse_args(argv)
    import torch

    torch.set_num_threads(os.cpu_count())
    info = dict(machine(), torch=torch.__version__, load_average_start=load_average())
    print(json.dumps(info))
    ds, spec, state = trained_mlps(args.models, args.width, args.train_epochs)
    x, y = jnp.asarray(ds.x_test[:args.samples]), jnp.asarray(ds.y_test[:args.samples])
    run = attack_lljax(spec.model, state.params, x, y, args.steps)
    start = time.perf_counter()
    acc_jax = np.asarray(run())
    cold = time.perf_counter() - start
    start = time.perf_counter()
    run()
    warm = time.perf_counter() - start
    nets = torch_nets(torch, state.params, args.width)
    run_torch = attack_torch(torch, nets, x, y, args.steps)
    start = time.perf_counter()
    acc_torch = run_torch()
    torch_s = time.perf_counter() - start
    run_func = attack_torch_func(torch, nets, x, y, args.steps)
    run_func()  # untimed warm-up (torch.func's first call)
    func_s = {}
    for threads in sorted({1, os.cpu_count() or 1}):  # the faster thread count
        torch.set_num_threads(threads)
        start = time.perf_counter()
        acc_func = run_func()
        func_s[threads] = time.perf_counter() - start
    func_best = min(func_s.values())
    out = dict(info, models=args.models, width=args.width, samples=args.samples, steps=args.steps,
               lljax_s_with_compile=round(cold, 3), lljax_s_warm=round(warm, 4), pytorch_s=round(torch_s, 3),
               torch_func_s=round(func_best, 4), torch_func_s_by_threads=func_s,
               max_abs_robust_acc_difference=float(np.max(np.abs(acc_jax - acc_torch))),
               max_abs_robust_acc_difference_torch_func=float(np.max(np.abs(acc_jax - acc_func))),
               mean_robust_acc=float(acc_jax.mean()), load_average_end=load_average())
    print(json.dumps(out))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)
    print(f"warm speedup_vs_torch_func: {func_best / warm:.2f}")
    print(f"warm speedup_vs_pytorch: {torch_s / warm:.2f}")
    print(f"speedup_vs_torch_func: {func_best / cold:.2f}")
    print(f"speedup_vs_pytorch: {torch_s / cold:.2f}")


if __name__ == "__main__":
    main()
