"""Filter-normalised 2-D loss surfaces, agreement and speed: lljax (`surfaces.surface_2d`, all N members in one
vmapped program) vs the procedure of loss-landscape's `plot_surface.py` without MPI (PyTorch, one model after
another, point by point: set the weights to w + x dx + y dy, then `evaluation.eval_loss` over a DataLoader of
batch 128) on the same weights and the same directions (issue 12).

    pip install -r benchmarks/requirements-bench.txt
    python benchmarks/surfaces.py [--model all|mlp|cnn_bn] [--members 8] [--grid 51] [--width 128]
                                  [--loss-landscape PATH] [--quick]

Setup (not timed): N MLPs (depth 2, width `--width`, MNIST-1D, different seeds) trained with lljax; the
training loss is evaluated on the first `--examples` training examples. Directions: one Gaussian draw per
member and axis (lljax's keys); lljax filter-normalises it (`surfaces.filter_normalize`, biases zeroed), and so
does the reference on the same draw in torch layout (Linear weight = kernel^T).

`--loss-landscape PATH`: a checkout of tomgoldstein/loss-landscape (it is not on PyPI): the reference then
runs that code itself (`net_plotter.normalize_directions_for_weights`, `net_plotter.set_weights`,
`evaluation.eval_loss`); without it, the same steps written out here. PyTorch's own ensembling of the same
surfaces runs beside it (`torch_func_surfaces`: the same weights and directions, every member and a few points at
once through a vmapped `functional_call`). Reported: the largest difference between the two normalised
directions and between the loss values, the wall times, and the last lines `speedup_vs_torch_func: X.XX` and
`speedup_vs_loss_landscape: X.XX` (warm lljax; its compile time apart).

The CNN-with-BatchNorm case (`--model cnn_bn`; the default `--model all` runs both, the MLP's figures on top of
the JSON, the CNN's under "cnn_bn", and the last line is still the MLP's): `--cnn-members` `SmallCNN`s (two 3x3
`nn.Conv`s, kernels (3, 3, in, out), the first with a bias, each followed by `nn.BatchNorm` and ReLU, a global
average pool, a Dense read-out) trained with lljax on synthetic 8x8x3 images (class templates plus noise; no
download); the PyTorch twin (Conv2d, BatchNorm2d, Linear) gets the same weights (Conv kernel (kh, kw, in, out) ->
weight (out, in, kh, kw), Dense kernel transposed, BatchNorm scale/bias -> weight/bias and its running mean and
variance -> the buffers). One Gaussian draw per member and axis again; every combination of
- biasbn: lljax 'zero' <-> loss-landscape ignore='biasbn' (1-D parameters zeroed: its scripts' --xignore biasbn),
  lljax 'keep' <-> ignore='' (1-D parameters set equal to the weights: plot_surface.py's default --xignore '');
- BatchNorm: 'stored': inference mode, the model's running statistics, untouched by the directions (loss-landscape
  --dir_type weights: `get_weights` is `net.parameters()`, which holds no buffers, and `eval_loss` calls
  `net.eval()`; lljax's default, `models.loss_fn`); 'recompute': the statistics recomputed at every point over the
  evaluated examples as one batch (lljax `curves.recompute_batch_stats`, chunk_size=None, as the slices family's
  --slice-recompute-bn but unchunked) vs torch's `swa_utils.update_bn` on the same single batch, its running
  variance rescaled by (n - 1) / n (torch stores the unbiased variance, Flax and lljax the biased one that
  train mode normalises with); loss-landscape itself has no such option.
Reported per combination: the largest direction difference (torch layout), the largest absolute and relative loss
differences on a `--cnn-grid` x `--cnn-grid` grid, both wall times.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from common import load_average, machine, trained_mlps
from lljax import curves, models, surfaces, train

BIASBN_IGNORE = {"zero": "biasbn", "keep": ""}  # lljax's biasbn -> loss-landscape's ignore
BN_MODES = ("stored", "recompute")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=None, help="models N (default 8; --quick 2)")
    p.add_argument("--grid", type=int, default=None, help="points per axis on [-1, 1] (default 51; --quick 11)")
    p.add_argument("--width", type=int, default=128, help="MLP width")
    p.add_argument("--examples", type=int, default=4000, help="training examples the loss is evaluated on")
    p.add_argument("--train-epochs", type=int, default=10, help="MLP training epochs")
    p.add_argument("--loss-landscape", default=None, help="a checkout of tomgoldstein/loss-landscape to run")
    p.add_argument("--model", choices=("all", "mlp", "cnn_bn"), default="all",
                   help="the MLP case, the CNN-with-BatchNorm case, or both (default)")
    p.add_argument("--cnn-members", type=int, default=None, help="CNNs (default 2; --quick 1)")
    p.add_argument("--cnn-grid", type=int, default=None, help="CNN points per axis (default 21; --quick 7)")
    p.add_argument("--cnn-width", type=int, default=16, help="CNN channels")
    p.add_argument("--cnn-examples", type=int, default=None,
                   help="synthetic 8x8x3 training images, all evaluated (default 1024; --quick 512)")
    p.add_argument("--cnn-epochs", type=int, default=None, help="CNN training epochs (default 10; --quick 6)")
    p.add_argument("--quick", action="store_true", help="short run, a few minutes")
    p.add_argument("--out", default=None, help="write all figures to this JSON file")
    args = p.parse_args(argv)
    args.members = args.members or (2 if args.quick else 8)
    args.grid = args.grid or (11 if args.quick else 51)
    args.cnn_members = args.cnn_members or (1 if args.quick else 2)
    args.cnn_grid = args.cnn_grid or (7 if args.quick else 21)
    args.cnn_examples = args.cnn_examples or (512 if args.quick else 1024)
    args.cnn_epochs = args.cnn_epochs or (6 if args.quick else 10)
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


def normalize_reference(raw, weights, tool, ignore="biasbn"):
    import torch

    direction = [torch.tensor(d) for d in raw]
    weights = [torch.tensor(w) for w in weights]
    if tool is not None:
        tool[0].normalize_directions_for_weights(direction, weights, "filter", ignore)
        return direction
    for d, w in zip(direction, weights):  # the same steps: one filter = one row of a torch weight
        if d.dim() <= 1:
            d.fill_(0) if ignore == "biasbn" else d.copy_(w)
        else:
            for df, wf in zip(d, w):
                df.mul_(wf.norm() / (df.norm() + 1e-10))
    return direction


def recompute_reference(net, inputs):
    """Every BatchNorm's running statistics set to those of `inputs` as ONE batch: `torch.optim.swa_utils.update_bn`
    on a single batch, then the running variance rescaled from torch's unbiased to the biased one (n values per
    channel) that train mode normalises with, as Flax's BatchNorm and `lljax.curves.recompute_batch_stats` keep."""
    import torch

    counts = {}
    hooks = [m.register_forward_pre_hook(lambda m, a: counts.__setitem__(m, a[0].numel() // a[0].shape[1]))
             for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    torch.optim.swa_utils.update_bn([inputs], net)
    for h in hooks:
        h.remove()
    with torch.no_grad():
        for m, n in counts.items():
            m.running_var.mul_((n - 1) / n)


def reference_surface(weights, dx, dy, x, y, ticks, tool, net=None, recompute=False):
    """loss-landscape's crunch() for one model, without MPI or h5: every (x, y) point one after another. `net`: the
    model (default: the MLP of `weights`); `recompute`: BatchNorm statistics recomputed at every point first."""
    import torch

    if net is None:
        sizes = [w.shape for w in weights[::2]]
        layers = []
        for out_features, in_features in sizes:
            layers += [torch.nn.Linear(in_features, out_features), torch.nn.ReLU()]
        net = torch.nn.Sequential(*layers[:-1])
    w = [torch.tensor(a) for a in weights]
    inputs = torch.tensor(x)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, torch.tensor(y).long()),
                                         batch_size=128, shuffle=False)
    criterion = torch.nn.CrossEntropyLoss()
    losses = np.zeros((len(ticks), len(ticks)))
    for i, b in enumerate(ticks):  # rows over y, as surfaces.surface_2d
        for j, a in enumerate(ticks):
            if tool is not None:
                tool[0].set_weights(net, w, [dx, dy], [a, b])
                if recompute:
                    recompute_reference(net, inputs)
                losses[i, j] = tool[1].eval_loss(net, criterion, loader)[0]
                continue
            for p, w0, d0, d1 in zip(net.parameters(), w, dx, dy):
                p.data = w0 + d0 * a + d1 * b
            if recompute:
                recompute_reference(net, inputs)
            net.eval()
            total, count = 0.0, 0
            with torch.no_grad():
                for inputs_, targets in loader:
                    total += criterion(net(inputs_), targets).item() * inputs_.size(0)
                    count += inputs_.size(0)
            losses[i, j] = total / count
    return losses


def torch_func_surfaces(weights, directions, x, y, ticks, chunk=2):
    """PyTorch's own ensembling of the same surfaces: every member's weights and two directions stacked (M, ...),
    `chunk` grid points at a time (2: the fastest of 1, 2, 4, 8 and 32 here, 2 MLPs of width 128 on 4000
    examples), the loss at w + a dx + b dy for all members and points by `functional_call` vmapped over members
    and points (the mean over every example, as `eval_loss`). (M, len(ticks), len(ticks)), rows over y."""
    import torch
    import torch_peers
    from torch.func import functional_call, vmap

    sizes = [w.shape for w in weights[0][::2]]
    layers = []
    for out_features, in_features in sizes:
        layers += [torch.nn.Linear(in_features, out_features), torch.nn.ReLU()]
    _, _, base = torch_peers.stack(torch, [torch.nn.Sequential(*layers[:-1])])
    names = [name for name, _ in base.named_parameters()]
    stack = lambda arrays: [torch.tensor(np.stack(leaves)) for leaves in zip(*arrays)]  # per leaf (M, ...)
    w, dx, dy = stack(weights), stack([d[0] for d in directions]), stack([d[1] for d in directions])
    xt, yt = torch.tensor(x), torch.tensor(y).long()
    loss = lambda params: torch.nn.functional.cross_entropy(functional_call(base, params, (xt,)), yt)
    losses = vmap(vmap(loss))  # members, then points
    grid_b, grid_a = torch.meshgrid(torch.tensor(ticks), torch.tensor(ticks), indexing="ij")
    a, b = grid_a.reshape(-1).float(), grid_b.reshape(-1).float()
    out = []
    with torch.no_grad():
        for start in range(0, len(a), chunk):
            ca, cb = a[start:start + chunk], b[start:start + chunk]
            at = lambda t, leaf: t.view(1, -1, *[1] * (leaf.dim() - 1))
            params = {n: w0[:, None] + at(ca, w0) * d0[:, None] + at(cb, w0) * d1[:, None]
                      for n, w0, d0, d1 in zip(names, w, dx, dy)}
            out.append(losses(params))
    return torch.cat(out, 1).reshape(len(weights), len(ticks), len(ticks)).double().numpy()


def run_mlp(args, tool):
    """The MLP case: its figures, in the JSON's top level as before the CNN case was added."""
    import torch

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

    worst_direction = worst_loss = 0.0
    start = time.perf_counter()
    theirs, all_weights, all_directions = [], [], []
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
        all_weights.append(weights)
        all_directions.append([[t.numpy() for t in d] for d in directions])
    reference_s = time.perf_counter() - start  # includes the (small) direction set-up, as plot_surface.py
    theirs = np.stack(theirs)
    worst_loss = float(np.max(np.abs(ours - theirs)))
    worst_rel = float(np.max(np.abs(ours - theirs) / np.abs(theirs)))
    start = time.perf_counter()  # the same directions, every member and point by torch.func
    batched = torch_func_surfaces(all_weights, all_directions, x, y, np.asarray(ticks))
    torch_func_s = time.perf_counter() - start
    return {"members": args.members, "grid": args.grid,
            "width": args.width, "examples": len(y), "reference": "loss-landscape code" if tool else
            "loss-landscape procedure (written out)", "torch_threads": torch.get_num_threads(),
            "lljax_compile_s": first - warm, "lljax_warm_s": warm, "reference_s": reference_s,
            "torch_func_s": torch_func_s, "max_abs_direction_difference": worst_direction,
            "max_abs_loss_difference": worst_loss, "max_rel_loss_difference": worst_rel,
            "max_abs_loss_difference_torch_func": float(np.max(np.abs(ours - batched))),
            "speedup_vs_loss_landscape": reference_s / warm, "speedup_vs_torch_func": torch_func_s / warm}


# ------------------------------------------------------------------------------------- the CNN with BatchNorm

class SmallCNN(nn.Module):
    """Two 3x3 convolutions (the second of stride 2; the first with a bias, the second without, as before a
    BatchNorm in a ResNet), each followed by BatchNorm and ReLU, a global average pool, a Dense read-out."""

    width: int
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)
        x = nn.relu(norm()(nn.Conv(self.width, (3, 3), padding=((1, 1), (1, 1)))(x)))
        x = nn.relu(norm()(nn.Conv(self.width, (3, 3), (2, 2), ((1, 1), (1, 1)), use_bias=False)(x)))
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


def small_cnn(width: int, num_classes: int) -> nn.Module:
    return SmallCNN(width, num_classes)


# torch's parameter order of `torch_cnn` (net.parameters()), as (Flax module, leaf)
CNN_PARAMETERS = (("Conv_0", "kernel"), ("Conv_0", "bias"), ("BatchNorm_0", "scale"), ("BatchNorm_0", "bias"),
                  ("Conv_1", "kernel"), ("BatchNorm_1", "scale"), ("BatchNorm_1", "bias"),
                  ("Dense_0", "kernel"), ("Dense_0", "bias"))


def torch_array(leaf):
    """A Flax leaf in torch's layout: Conv kernel (kh, kw, in, out) -> (out, in, kh, kw), Dense kernel (in, out) ->
    (out, in), 1-D leaves as they are."""
    a = np.asarray(leaf)
    return (a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T if a.ndim == 2 else a).copy()


def cnn_torch_layout(tree):
    return [torch_array(tree[module][leaf]) for module, leaf in CNN_PARAMETERS]


def torch_cnn(width, num_classes, channels, params, batch_stats):
    """The PyTorch twin of `SmallCNN` holding the same weights and BatchNorm running statistics, in eval mode."""
    import torch

    t = torch.nn
    net = t.Sequential(t.Conv2d(channels, width, 3, padding=1), t.BatchNorm2d(width, eps=1e-5), t.ReLU(),
                       t.Conv2d(width, width, 3, stride=2, padding=1, bias=False), t.BatchNorm2d(width, eps=1e-5),
                       t.ReLU(), t.AdaptiveAvgPool2d(1), t.Flatten(), t.Linear(width, num_classes))
    with torch.no_grad():
        for p, w in zip(net.parameters(), cnn_torch_layout(params), strict=True):
            assert tuple(p.shape) == w.shape, (tuple(p.shape), w.shape)
            p.copy_(torch.tensor(w))
        for bn, name in ((net[1], "BatchNorm_0"), (net[4], "BatchNorm_1")):
            bn.running_mean.copy_(torch.tensor(np.asarray(batch_stats[name]["mean"])))
            bn.running_var.copy_(torch.tensor(np.asarray(batch_stats[name]["var"])))
    return net.eval()


def synthetic_images(n, num_classes=10, seed=0):
    """(x (n, 8, 8, 3) float32, y (n,) int32): a fixed random template per class plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    templates = rng.normal(size=(num_classes, 8, 8, 3))
    y = rng.integers(0, num_classes, n)
    x = templates[y] + 1.5 * rng.normal(size=(n, 8, 8, 3))
    return x.astype(np.float32), y.astype(np.int32)


def trained_cnns(args):
    """(x, y, ModelSpec, trained state) of `args.cnn_members` SmallCNNs trained with lljax (the MLPs' settings)."""
    x, y = synthetic_images(args.cnn_examples)
    spec = train.TrainSpec(models.ModelSpec(small_cnn, args.cnn_width), 64, args.cnn_epochs, len(y), "step")
    n = args.cnn_members
    hyper = train.Hyper(*(jnp.full((n,), v, jnp.float32) for v in (0.05, 5e-4, 0.9, 1.0, 0.0)))
    state, member = train.init_ensemble(spec, jax.random.split(jax.random.key(1), n), hyper, jnp.asarray(y),
                                        x.shape[1:])
    return x, y, spec.model, train.train_ensemble(spec, state, member, jnp.asarray(x), 0, args.cnn_epochs)


def cnn_loss_fn(model, batch_stats, recompute):
    """The mean loss of params on a batch with the stored statistics (inference mode, `models.loss_fn`) or with
    statistics recomputed over the batch first (as the slices family's `_loss` with --slice-recompute-bn)."""
    if not recompute:
        return models.loss_fn(model, batch_stats)

    def loss(params, batch):
        stats = curves.recompute_batch_stats(model, params, batch_stats, batch[0])
        return models.loss_fn(model, stats)(params, batch)

    return loss


def run_cnn(args, tool):
    """The CNN-with-BatchNorm case: every (biasbn, BatchNorm mode) combination (module docstring)."""
    import torch

    x, y, model, state = trained_cnns(args)
    keys = jax.random.split(jax.random.key(8), (args.cnn_members, 2))
    ticks = jnp.linspace(-1, 1, args.cnn_grid)
    batch = (jnp.asarray(x), jnp.asarray(y))
    torch_x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # NHWC -> NCHW
    member = lambda tree, i: jax.tree.map(lambda a: a[i], tree)
    out = {"members": args.cnn_members, "grid": args.cnn_grid, "width": args.cnn_width, "examples": len(y),
           "image_shape": list(x.shape[1:]), "train_epochs": args.cnn_epochs,
           "lljax_loss_at_model": [float(models.loss_fn(model, member(state.batch_stats, i))(
               member(state.params, i), batch)) for i in range(args.cnn_members)]}
    with torch.no_grad():  # torch's first convolution sets its kernels up: not in the timings
        torch_cnn(args.cnn_width, 10, x.shape[-1], member(state.params, 0), member(state.batch_stats, 0))(
            torch.tensor(torch_x))
    for biasbn in surfaces.BIASBN:
        for bn in BN_MODES:
            recompute = bn == "recompute"

            def one(params, stats, member_keys):
                d1, d2 = (surfaces.random_direction(k, params, biasbn) for k in member_keys)
                return surfaces.surface_2d(cnn_loss_fn(model, stats, recompute), params, batch, d1, d2, ticks, ticks,
                                           chunk=16)

            run = jax.jit(jax.vmap(one))
            start = time.perf_counter()
            jax.block_until_ready(run(state.params, state.batch_stats, keys))
            first = time.perf_counter() - start
            start = time.perf_counter()
            ours = np.asarray(jax.block_until_ready(run(state.params, state.batch_stats, keys)))
            warm = time.perf_counter() - start

            worst_direction, theirs, reference_s = 0.0, [], 0.0
            for i in range(args.cnn_members):
                params, stats = member(state.params, i), member(state.batch_stats, i)
                weights = cnn_torch_layout(params)
                raw = [cnn_torch_layout(gaussian(k, params)) for k in keys[i]]
                mine = [cnn_torch_layout(surfaces.filter_normalize(gaussian(k, params), params, biasbn))
                        for k in keys[i]]
                start = time.perf_counter()  # the reference's own steps only (not lljax's eager direction above)
                directions = [normalize_reference(r, weights, tool, BIASBN_IGNORE[biasbn]) for r in raw]
                net = torch_cnn(args.cnn_width, 10, x.shape[-1], params, stats)
                theirs.append(reference_surface(weights, *directions, torch_x, y, np.asarray(ticks), tool, net,
                                                recompute))
                reference_s += time.perf_counter() - start
                worst_direction = max([worst_direction] + [float(np.max(np.abs(a - b.numpy())))
                                                           for m, d in zip(mine, directions) for a, b in zip(m, d)])
            theirs = np.stack(theirs)
            out[f"{biasbn}_{bn}"] = {
                "loss_landscape_ignore": BIASBN_IGNORE[biasbn], "lljax_compile_s": first - warm,
                "lljax_warm_s": warm, "reference_s": reference_s, "max_abs_direction_difference": worst_direction,
                "max_abs_loss_difference": float(np.max(np.abs(ours - theirs))),
                "max_rel_loss_difference": float(np.max(np.abs(ours - theirs) / np.abs(theirs))),
                "loss_range": [float(theirs.min()), float(theirs.max())],
                "speedup_vs_loss_landscape": reference_s / warm}
    return out


def main(argv=None):
    args = parse_args(argv)
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    tool = reference_tool(args.loss_landscape)
    results = {"machine": machine(), "load_average": load_average()}
    if args.model in ("all", "mlp"):
        results.update(run_mlp(args, tool))
    if args.model in ("all", "cnn_bn"):
        results["cnn_bn"] = run_cnn(args, tool)
        results.setdefault("reference", "loss-landscape code" if tool else "loss-landscape procedure (written out)")
        results.setdefault("torch_threads", torch.get_num_threads())
    print(json.dumps(results, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    speedup = results["speedup_vs_loss_landscape"] if "speedup_vs_loss_landscape" in results else \
        results["cnn_bn"]["zero_stored"]["speedup_vs_loss_landscape"]
    if "speedup_vs_torch_func" in results:
        print(f"speedup_vs_torch_func: {results['speedup_vs_torch_func']:.2f}")
    print(f"speedup_vs_loss_landscape: {speedup:.2f}")


if __name__ == "__main__":
    main()
