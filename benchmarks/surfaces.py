"""Filter-normalised 2-D loss surfaces, agreement and speed: lljax (`surfaces.surface_2d`, all N members in one
vmapped program) vs the procedure of loss-landscape's `plot_surface.py` without MPI (PyTorch, one model after
another, point by point: set the weights to w + x dx + y dy, then `evaluation.eval_loss` over a DataLoader of
batch 128) on the same weights and the same directions (issue 12).

    pip install -r benchmarks/requirements-bench.txt
    python benchmarks/surfaces.py [--members 8] [--grid 51] [--width 128] [--loss-landscape PATH] [--quick]

Setup (not timed): N MLPs (depth 2, width `--width`, MNIST-1D, different seeds) trained with lljax; the
training loss is evaluated on the first `--examples` training examples. Directions: one Gaussian draw per
member and axis (lljax's keys); lljax filter-normalises it (`surfaces.filter_normalize`, biases zeroed), and so
does the reference on the same draw in torch layout (Linear weight = kernel^T).

`--loss-landscape PATH`: a checkout of tomgoldstein/loss-landscape (it is not on PyPI): the reference then
runs that code itself (`net_plotter.normalize_directions_for_weights`, `net_plotter.set_weights`,
`evaluation.eval_loss`); without it, the same steps written out here. Reported: the largest difference between
the two normalised directions and between the two sets of loss values, both wall times, and the last line
`speedup_vs_loss_landscape: X.XX` (warm lljax; its compile time apart).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from common import load_average, machine, trained_mlps
from lljax import models, surfaces


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=None, help="models N (default 8; --quick 2)")
    p.add_argument("--grid", type=int, default=None, help="points per axis on [-1, 1] (default 51; --quick 11)")
    p.add_argument("--width", type=int, default=128, help="MLP width")
    p.add_argument("--examples", type=int, default=4000, help="training examples the loss is evaluated on")
    p.add_argument("--train-epochs", type=int, default=10, help="MLP training epochs")
    p.add_argument("--loss-landscape", default=None, help="a checkout of tomgoldstein/loss-landscape to run")
    p.add_argument("--quick", action="store_true", help="short run, under a minute")
    p.add_argument("--out", default=None, help="write all figures to this JSON file")
    args = p.parse_args(argv)
    args.members = args.members or (2 if args.quick else 8)
    args.grid = args.grid or (11 if args.quick else 51)
    return args


def gaussian(key, params):
    """The raw draw `surfaces.random_direction` normalises (same keys, same leaves)."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)])


def torch_layout(tree):
    """Flax leaves in torch's parameter order and layout: per Dense layer its weight (kernel^T) then its bias."""
    out = []
    for name in sorted(tree, key=lambda n: int(n.split("_")[1])):
        out += [np.asarray(tree[name]["kernel"]).T.copy(), np.asarray(tree[name]["bias"]).copy()]
    return out


def reference_tool(path):
    """loss-landscape's own functions (its model zoo, which needs torchvision, is not imported), or None."""
    if path is None:
        return None
    sys.path.insert(0, path)
    sys.modules.setdefault("model_loader", types.ModuleType("model_loader"))
    import evaluation
    import net_plotter
    return net_plotter, evaluation


def normalize_reference(raw, weights, tool):
    import torch

    direction = [torch.tensor(d) for d in raw]
    weights = [torch.tensor(w) for w in weights]
    if tool is not None:
        tool[0].normalize_directions_for_weights(direction, weights, "filter", "biasbn")
        return direction
    for d, w in zip(direction, weights):  # the same steps: one filter = one row of a torch weight
        if d.dim() <= 1:
            d.fill_(0)
        else:
            for df, wf in zip(d, w):
                df.mul_(wf.norm() / (df.norm() + 1e-10))
    return direction


def reference_surface(weights, dx, dy, x, y, ticks, tool):
    """loss-landscape's crunch() for one model, without MPI or h5: every (x, y) point one after another."""
    import torch

    sizes = [w.shape for w in weights[::2]]
    layers = []
    for out_features, in_features in sizes:
        layers += [torch.nn.Linear(in_features, out_features), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers[:-1])
    w = [torch.tensor(a) for a in weights]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.tensor(x), torch.tensor(y).long()),
                                         batch_size=128, shuffle=False)
    criterion = torch.nn.CrossEntropyLoss()
    losses = np.zeros((len(ticks), len(ticks)))
    for i, b in enumerate(ticks):  # rows over y, as surfaces.surface_2d
        for j, a in enumerate(ticks):
            if tool is not None:
                tool[0].set_weights(net, w, [dx, dy], [a, b])
                losses[i, j] = tool[1].eval_loss(net, criterion, loader)[0]
                continue
            for p, w0, d0, d1 in zip(net.parameters(), w, dx, dy):
                p.data = w0 + d0 * a + d1 * b
            net.eval()
            total, count = 0.0, 0
            with torch.no_grad():
                for inputs, targets in loader:
                    total += criterion(net(inputs), targets).item() * inputs.size(0)
                    count += inputs.size(0)
            losses[i, j] = total / count
    return losses


def main(argv=None):
    args = parse_args(argv)
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    ds, tspec, state = trained_mlps(args.members, args.width, args.train_epochs)
    spec, stacked = tspec.model, state.params
    x, y = np.asarray(ds.x_train[:args.examples]), np.asarray(ds.y_train[:args.examples])
    keys = jax.random.split(jax.random.key(7), (args.members, 2))
    ticks = jnp.linspace(-1, 1, args.grid)
    loss_fn = models.loss_fn(spec, {})

    def one(params, member_keys):
        d1, d2 = (surfaces.random_direction(k, params) for k in member_keys)
        return surfaces.surface_2d(loss_fn, params, (jnp.asarray(x), jnp.asarray(y)), d1, d2, ticks, ticks, chunk=64)

    run = jax.jit(jax.vmap(one))
    start = time.perf_counter()
    jax.block_until_ready(run(stacked, keys))
    first = time.perf_counter() - start
    start = time.perf_counter()
    ours = np.asarray(jax.block_until_ready(run(stacked, keys)))
    warm = time.perf_counter() - start

    tool = reference_tool(args.loss_landscape)
    worst_direction = worst_loss = 0.0
    start = time.perf_counter()
    theirs = []
    for i in range(args.members):
        params = jax.tree.map(lambda a: a[i], stacked)
        weights = torch_layout(params)
        directions = []
        for k in keys[i]:
            mine = torch_layout(surfaces.filter_normalize(gaussian(k, params), params))
            ref = normalize_reference(torch_layout(gaussian(k, params)), weights, tool)
            worst_direction = max(worst_direction, max(float(np.max(np.abs(a - b.numpy()))) for a, b in
                                                       zip(mine, ref)))
            directions.append(ref)
        theirs.append(reference_surface(weights, *directions, x, y, np.asarray(ticks), tool))
    reference_s = time.perf_counter() - start  # includes the (small) direction set-up, as plot_surface.py
    theirs = np.stack(theirs)
    worst_loss = float(np.max(np.abs(ours - theirs)))
    worst_rel = float(np.max(np.abs(ours - theirs) / np.abs(theirs)))
    results = {"machine": machine(), "load_average": load_average(), "members": args.members, "grid": args.grid,
               "width": args.width, "examples": len(y), "reference": "loss-landscape code" if tool else
               "loss-landscape procedure (written out)", "torch_threads": torch.get_num_threads(),
               "lljax_compile_s": first - warm, "lljax_warm_s": warm, "reference_s": reference_s,
               "max_abs_direction_difference": worst_direction, "max_abs_loss_difference": worst_loss,
               "max_rel_loss_difference": worst_rel, "speedup_vs_loss_landscape": reference_s / warm}
    print(json.dumps(results, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    print(f"speedup_vs_loss_landscape: {reference_s / warm:.2f}")


if __name__ == "__main__":
    main()
