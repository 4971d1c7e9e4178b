"""ResNet18(k) ensemble training throughput on CIFAR-shaped data, against PyTorch, and the paper grid's cost (issue 6).

    python benchmarks/resnet_throughput.py [--widths 2 4 8 16] [--members 5] [--batch-size 128] [--steps 4]
                                           [--loop-members 2] [--host-devices D] [--quick] [--out FILE.json]

For each width k, M ResNet18(k) models (the paper's CIFAR ResNet18 with k, 2k, 4k, 8k channels; M = 5 by
default, the size of one grid point's group in the paper grid: 5 seeds share every static shape, the batch
size does not) are trained on synthetic arrays of CIFAR-10's shape (N, 32, 32, 3) with random labels, SGD
momentum 0.9, weight decay 5e-4, constant learning rate:

  (a) vmapped lljax: `train.init_ensemble` + `train.train_ensemble` (one compiled program for the M members,
      its members sharded over every device with `lljax.sharding`; compile time excluded, reported beside);
  (b) PyTorch, the same models one after another on the same device (torch's ResNet18(k) of the same
      architecture holding lljax's initial weights, trained on lljax's minibatches, so the first training
      losses of (a) and (b) must agree: printed as a check that the two are the same computation);
  (e) PyTorch's own ensembling of all M members at once (torch.func: stacked parameters and BatchNorm buffers,
      a vmapped gradient through `functional_call`, SGD on the stacked tensors; `torch_func_run`), the same
      weights and minibatches (its losses checked against (a) as well).

Reported per width: model-steps per second (models x SGD steps / wall time), the FLOP/s this reaches and its
fraction of the device's peak, the ratio (a)/(b), and from these a projected wall time for the whole paper grid
(ResNet18 widths 1..128 (14), the 15 batch sizes 16..1024 of the paper's results, 5 seeds, 100 epochs of 50k
images) for both ways.

FLOPs of a training step: 6 x the multiply-accumulates of the convolutions and the read-out per example
(forward 2 FLOPs per MAC, backward twice the forward), counted analytically, cross-checked once against XLA's
own count (`jit(train_step).lower(...).compile().cost_analysis()`). Peak: the best float32 matmul rate measured
in JAX on the device (default precision, so TF32 on NVIDIA GPUs), and on a known GPU also the vendor's dense
TF32 tensor-core figure.

Projection: lljax's per-example rate at each measured width (examples/s = model-steps/s x batch size) is
assumed to hold at every batch size; widths between measured ones take the achieved FLOP/s interpolated in
log-log against FLOPs per example, widths outside the measured range the nearest measured FLOP/s (on this
CPU, where only small widths are measured, that makes the wide-model projection rough). One device; with D
devices and at least D members per program divide by about D.

Expected on the 2-core dev CPU (benchmarks/RESULTS.md, "ResNet18 throughput"): (a) is 0.36-0.47x of (b) at
widths 2..16 (XLA:CPU convolutions vs oneDNN); --quick takes about a minute. GPU figures: not yet measured.

The last lines printed are `speedup_vs_torch_func: X.XX` and `speedup_vs_pytorch: X.XX`, (a) over (e) and (a)
over (b) at the widest measured width.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time

from common import machine

PAPER_WIDTHS = (1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128)
# the batch sizes of the paper's measured grid (reference/paper_resnet18_cifar10_grid.csv)
PAPER_BATCH_SIZES = (16, 19, 24, 27, 32, 44, 64, 92, 128, 180, 256, 364, 512, 724, 1024)
PAPER_SEEDS, PAPER_EPOCHS, CIFAR_TRAIN = 5, 100, 50_000
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4
IMAGE = (32, 32, 3)
# vendor dense (no sparsity) TF32 tensor-core peaks, FLOP/s: what JAX's default float32 precision uses there
GPU_PEAKS = {"H200": 494.7e12, "H100 PCIe": 378e12, "H100": 494.7e12, "A100": 156e12, "L4": 60e12,
             "A10": 62.5e12, "V100": 15.7e12}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", type=int, nargs="+", default=None,
                   help="ResNet18 widths k (default 2 4 8 16 on a CPU, 8 16 32 64 128 on a GPU; --quick 2 4 8)")
    p.add_argument("--members", type=int, default=5, help="models per vmapped program (default 5: the paper's seeds)")
    p.add_argument("--batch-size", type=int, default=128, help="minibatch size (default 128)")
    p.add_argument("--steps", type=int, default=None, help="timed SGD steps per model (default 4; --quick 3)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats of (a), best kept (default 2; --quick 1)")
    p.add_argument("--loop-members", type=int, default=None,
                   help="how many of the M models PyTorch trains (its per-model cost does not depend on M; "
                        "default 2, --quick 1)")
    p.add_argument("--host-devices", type=int, default=None,
                   help="CPU only: split the host into this many XLA devices and shard the members over them")
    p.add_argument("--quick", action="store_true", help="short run, about 2 minutes on a 2-core CPU")
    p.add_argument("--out", default=None, help="write all figures to this JSON file")
    args = p.parse_args(argv)
    if args.members <= 0 or args.batch_size <= 0 or (args.widths and any(w <= 0 for w in args.widths)):
        p.error("--members, --batch-size and --widths must be positive")
    return args


# ------------------------------------------------------------------------------------------ the machine


def matmul_flops(jax, jnp, sizes, repeats=5) -> float:
    """Best dense float32 matmul rate (FLOP/s) in JAX on the default device, default precision."""
    product = jax.jit(lambda a, b: a @ b)
    best = 0.0
    for n in sizes:
        a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.key(2), (n, n), jnp.float32)
        product(a, b).block_until_ready()
        for _ in range(repeats):
            start = time.perf_counter()
            product(a, b).block_until_ready()
            best = max(best, 2 * n ** 3 / (time.perf_counter() - start))
    return best


def spec_peak(device_kind: str) -> float | None:
    for name, peak in GPU_PEAKS.items():  # ordered so that "H100 PCIe" is tried before "H100"
        if name in device_kind:
            return peak
    return None


def resnet18_macs(width: int, num_classes: int = 10, size: int = 32) -> int:
    """Multiply-accumulates of one ResNet18(k) forward pass on a size x size x 3 image (convolutions and the
    read-out; BatchNorm, ReLU and the residual adds are not counted)."""
    macs = size * size * 9 * 3 * width  # stem
    c_in, hw = width, size
    for stage, stride in enumerate((1, 2, 2, 2)):
        c = width * 2 ** stage
        hw //= stride
        macs += hw * hw * 9 * c_in * c + hw * hw * 9 * c * c  # block 0
        if stride != 1 or c_in != c:
            macs += hw * hw * c_in * c  # 1x1 shortcut
        macs += 2 * hw * hw * 9 * c * c  # block 1
        c_in = c
    return macs + c_in * num_classes


def train_flops_per_example(width: int) -> float:
    return 6.0 * resnet18_macs(width)


# ------------------------------------------------------------------------------------------ lljax

def lljax_run(jax, jnp, np, width, members, batch_size, steps, repeats, mesh, conv="auto", policy="float32",
              image=IMAGE):
    """M ResNet18(width) trained `repeats` epochs of `steps` steps with convolution strategy `conv` and precision
    policy `policy`: timings, the compiled program's memory, and what the PyTorch side needs to repeat it."""
    from lljax import conv as convs
    from lljax import data, models, sharding, train

    n = batch_size * steps
    spec = train.TrainSpec(models.ModelSpec("resnet18", width, conv=conv), batch_size, 1 + repeats, n, "constant",
                           precision=policy)
    x = np.asarray(jax.random.normal(jax.random.key(0), (n, *image), jnp.float32))
    y = np.asarray(jax.random.randint(jax.random.key(1), (n,), 0, 10), np.int32)
    ones = jnp.ones(members, jnp.float32)
    hyper = train.Hyper(LR * ones, WEIGHT_DECAY * ones, MOMENTUM * ones, ones, 0 * ones)
    start = time.perf_counter()
    # initial values do not depend on the strategy or the policy: one init program per (width, members)
    init_spec = dataclasses.replace(spec, model=models.ModelSpec("resnet18", width), precision="float32")
    state, member = train.init_ensemble(init_spec, jax.random.split(jax.random.key(2), members), hyper,
                                        jnp.asarray(y), tuple(image))
    jax.block_until_ready(state)
    init_s = time.perf_counter() - start
    initial = jax.tree.map(np.asarray, state.params), jax.tree.map(np.asarray, state.batch_stats)
    # lljax's minibatches of epoch 0 for the PyTorch side: (M, steps, B)
    orders = jax.jit(jax.vmap(lambda m: jax.vmap(lambda j: data.batch_indices(
        data.epoch_order(jax.random.fold_in(m.shuffle_key, 0), m.view), m.view.size, j, batch_size))(
        jnp.arange(steps))))(member)

    (state, member), real = sharding.pad_members((state, member), mesh.size)
    state, member = sharding.shard_members((state, member), mesh)
    x_all = sharding.replicate(x, mesh)
    passes = convs.passes(conv, sharding.member_count(state.loss) // mesh.size) or 1
    start = time.perf_counter()
    compiled = train.train_ensemble.lower(spec, state, member, x_all, 0, 0, passes, mesh).compile()
    run = lambda state, first, last: compiled(state, member, x_all, first, last)
    state = run(state, 0, 0)  # runs no epoch
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    program_bytes = None if memory is None else int(
        memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
        + memory.temp_size_in_bytes)
    times, first_loss = [], None
    for epoch in range(repeats):
        start = time.perf_counter()
        state = run(state, epoch, epoch + 1)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - start)
        if first_loss is None:
            first_loss = np.asarray(state.loss)[:real]
    return {"seconds": min(times), "seconds_all": times, "compile_seconds": compile_s, "init_seconds": init_s,
            "padded_members": sharding.member_count(state.loss), "epoch0_loss": first_loss,
            "diverged": int(np.asarray(state.diverged).sum()), "program_bytes": program_bytes,
            "initial": initial, "orders": np.asarray(orders), "x": x, "y": y, "spec": spec}


def xla_train_step_flops(jax, jnp, width, batch_size) -> float | None:
    """XLA's FLOP count of one member's training step (forward, backward, update)."""
    from lljax import models, train

    spec = train.TrainSpec(models.ModelSpec("resnet18", width), batch_size, 1, batch_size, "constant")
    hyper = train.Hyper(*(jnp.float32(v) for v in (LR, WEIGHT_DECAY, MOMENTUM, 1.0, 0.0)))
    labels = jnp.zeros(batch_size, jnp.int32)
    state, member = jax.eval_shape(lambda k: train.init_member(spec, k, hyper, labels, IMAGE), jax.random.key(0))
    x = jax.ShapeDtypeStruct((batch_size, *IMAGE), jnp.float32)
    compiled = jax.jit(lambda m, s, x, y: train.train_step(spec, m, s, x, y, 0)).lower(
        member, state, x, labels).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) if cost and "flops" in cost else None


# ------------------------------------------------------------------------------------------ PyTorch

def torch_resnet18(torch, width, num_classes=10):
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, c_in, c, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)  # torch 0.1 == flax 0.9
            self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)
            self.shortcut = None
            if stride != 1 or c_in != c:
                self.shortcut = nn.Sequential(nn.Conv2d(c_in, c, 1, stride, 0, bias=False),
                                              nn.BatchNorm2d(c, eps=1e-5, momentum=0.1))

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return torch.relu((x if self.shortcut is None else self.shortcut(x)) + y)

    class ResNet18(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, width, 3, 1, 1, bias=False)
            self.bn = nn.BatchNorm2d(width, eps=1e-5, momentum=0.1)
            blocks, c_in = [], width
            for stage, stride in enumerate((1, 2, 2, 2)):
                c = width * 2 ** stage
                blocks += [Block(c_in, c, stride), Block(c, c, 1)]
                c_in = c
            self.blocks = nn.Sequential(*blocks)
            self.fc = nn.Linear(c_in, num_classes)

        def forward(self, x):
            x = torch.relu(self.bn(self.conv(x)))
            return self.fc(self.blocks(x).mean(dim=(2, 3)))

    return ResNet18()


def load_lljax_weights(torch, np, model, params, batch_stats, i):
    """Copy member i of lljax's (params, batch_stats) into the torch model (flax kernels are HWIO)."""
    def t(a):
        return torch.from_numpy(np.array(a))  # a writable copy

    def conv(module, p):
        module.weight.copy_(t(p["kernel"][i].transpose(3, 2, 0, 1)))

    def bn(module, p, s):
        module.weight.copy_(t(p["scale"][i]))
        module.bias.copy_(t(p["bias"][i]))
        module.running_mean.copy_(t(s["mean"][i]))
        module.running_var.copy_(t(s["var"][i]))

    with torch.no_grad():
        conv(model.conv, params["Conv_0"])
        bn(model.bn, params["BatchNorm_0"], batch_stats["BatchNorm_0"])
        for b, block in enumerate(model.blocks):
            p, s = params[f"BasicBlock_{b}"], batch_stats[f"BasicBlock_{b}"]
            conv(block.conv1, p["Conv_0"])
            bn(block.bn1, p["BatchNorm_0"], s["BatchNorm_0"])
            conv(block.conv2, p["Conv_1"])
            bn(block.bn2, p["BatchNorm_1"], s["BatchNorm_1"])
            if block.shortcut is not None:
                conv(block.shortcut[0], p["Conv_2"])
                bn(block.shortcut[1], p["BatchNorm_2"], s["BatchNorm_2"])
        model.fc.weight.copy_(t(params["Dense_0"]["kernel"][i].T))
        model.fc.bias.copy_(t(params["Dense_0"]["bias"][i]))


def torch_setup(torch, np, run, device, policy):
    """(autocast, x NCHW, y, sync) for a PyTorch peer: `policy` as lljax's: float32 (no TF32), tf32 (TF32 matmuls
    and convolutions), bf16 (autocast to bfloat16)."""
    import contextlib

    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = policy == "tf32"
    autocast = (lambda: torch.autocast(device, torch.bfloat16)) if policy == "bf16" else contextlib.nullcontext
    x = torch.from_numpy(run["x"].transpose(0, 3, 1, 2).copy()).to(device)
    y = torch.from_numpy(run["y"].astype(np.int64)).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return autocast, x, y, sync


def torch_run(torch, np, width, run, count, device, policy="float32"):
    """The first `count` members trained one after another, each on its own lljax minibatches (`torch_setup`'s
    policy)."""
    autocast, x, y, sync = torch_setup(torch, np, run, device, policy)
    criterion = torch.nn.CrossEntropyLoss()

    def model_and_opt(i):
        model = torch_resnet18(torch, width)
        load_lljax_weights(torch, np, model, *run["initial"], i)
        model = model.to(device).train()
        return model, torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

    model, opt = model_and_opt(0)  # warm-up (allocator, kernels), not timed
    idx = torch.from_numpy(run["orders"][0, 0].astype(np.int64)).to(device)
    with autocast():
        warm = criterion(model(x[idx]), y[idx])
    warm.backward()
    sync()
    losses, seconds = [], 0.0
    for i in range(count):
        model, opt = model_and_opt(i)
        order = torch.from_numpy(run["orders"][i].astype(np.int64)).to(device)
        sync()
        start = time.perf_counter()
        total = torch.zeros((), device=device)
        for idx in order:
            opt.zero_grad(set_to_none=True)
            with autocast():
                loss = criterion(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.detach()
        sync()
        seconds += time.perf_counter() - start
        losses.append(float(total) / len(order))
    return {"seconds": seconds, "epoch0_loss": np.asarray(losses)}


def torch_func_run(torch, np, width, run, count, device, policy="float32"):
    """PyTorch's own ensembling of the first `count` members (`torch_peers`): lljax's initial weights, every
    member on its own lljax minibatches, all at once (vmapped gradient through `functional_call`, each member's
    BatchNorm statistics updated in its stacked buffers, torch.optim.SGD on the stacked tensors; `torch_setup`'s
    policy). One untimed step first (from a copy of the state)."""
    import copy

    import torch_peers
    from torch.func import functional_call, grad_and_value, vmap

    autocast, x, y, sync = torch_setup(torch, np, run, device, policy)
    first = torch_resnet18(torch, width)
    members = [first] + [copy.deepcopy(first) for _ in range(count - 1)]  # one class: stack_module_state needs it
    for i, model in enumerate(members):
        load_lljax_weights(torch, np, model, *run["initial"], i)
    params, buffers, base = torch_peers.stack(torch, [m.to(device).train() for m in members])
    base.train()

    def member_loss(p, b, xb, yb):
        with autocast():
            return torch.nn.functional.cross_entropy(functional_call(base, (p, b), (xb,)), yb)

    step = vmap(grad_and_value(member_loss))
    orders = torch.from_numpy(run["orders"][:count].astype(np.int64)).to(device)  # (M, steps, B)
    with torch.no_grad():  # warm-up on copies, not timed
        step({k: v.clone() for k, v in params.items()}, {k: v.clone() for k, v in buffers.items()},
             x[orders[:, 0]], y[orders[:, 0]])
    opt = torch.optim.SGD(list(params.values()), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    sync()
    start = time.perf_counter()
    total = torch.zeros(count, device=device)
    with torch.no_grad():
        for j in range(orders.shape[1]):
            idx = orders[:, j]
            grads, loss = step(params, buffers, x[idx], y[idx])
            for name, p in params.items():
                p.grad = grads[name].to(p.dtype)
            opt.step()
            total += loss.float()
    sync()
    return {"seconds": time.perf_counter() - start, "epoch0_loss": (total / orders.shape[1]).cpu().numpy()}


# ------------------------------------------------------------------------------------------ projection

def achieved_flops_at(flops_per_example, measured: dict[float, float]) -> float:
    """Achieved FLOP/s at a model of `flops_per_example`, log-log interpolated between measured models
    {flops per example: FLOP/s}, the nearest measured value outside their range."""
    xs = sorted(measured)
    if flops_per_example <= xs[0]:
        return measured[xs[0]]
    if flops_per_example >= xs[-1]:
        return measured[xs[-1]]
    for lo, hi in zip(xs, xs[1:]):
        if lo <= flops_per_example <= hi:
            f = (math.log(flops_per_example) - math.log(lo)) / (math.log(hi) - math.log(lo))
            return math.exp((1 - f) * math.log(measured[lo]) + f * math.log(measured[hi]))
    raise AssertionError("unreachable")


def project_grid(measured: dict[float, float], widths=PAPER_WIDTHS, batch_sizes=PAPER_BATCH_SIZES,
                 seeds=PAPER_SEEDS, epochs=PAPER_EPOCHS, num_train=CIFAR_TRAIN) -> dict:
    """Seconds to train the whole grid, per width and in total, at the achieved FLOP/s of `measured`."""
    examples = seeds * epochs * sum((num_train // b) * b for b in batch_sizes)  # per width
    per_width = {}
    for w in widths:
        fpe = train_flops_per_example(w)
        per_width[w] = examples * fpe / achieved_flops_at(fpe, measured)
    return {"per_width_seconds": per_width, "total_seconds": sum(per_width.values()),
            "examples_per_width": examples}


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds < 3600 * 48 else f"{seconds / 86400:.1f} days"


# ------------------------------------------------------------------------------------------ main

def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.host_devices:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={args.host_devices}").strip()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lljax import sharding

    try:
        import torch
    except ImportError:
        sys.exit("PyTorch is needed for the comparison: pip install -r benchmarks/requirements-bench.txt")
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    gpu = jax.default_backend() == "gpu"
    widths = args.widths or ([2, 4, 8] if args.quick else ([8, 16, 32, 64, 128] if gpu else [2, 4, 8, 16]))
    steps = args.steps or (3 if args.quick else 4)
    repeats = args.repeats or (1 if args.quick else 2)
    loop_n = min(args.members, args.loop_members or (1 if args.quick else 2))
    torch_device = "cuda" if gpu and torch.cuda.is_available() else "cpu"
    same_device = (torch_device == "cuda") == gpu

    info = machine()
    mesh = sharding.member_mesh()
    print(f"machine: {info['cpu']}, {info['cores']} cores; JAX {info['jax']} on {info['backend']} "
          f"({info['device']} x {info['devices']}); PyTorch {torch.__version__} on {torch_device}"
          + (f" with {torch.get_num_threads()} threads" if torch_device == "cpu" else "")
          + f"; XLA_FLAGS={info['xla_flags']!r}")
    print(f"setup: {args.members} ResNet18(k) per program sharded over {mesh.size} device(s), synthetic "
          f"(N, 32, 32, 3) data, batch {args.batch_size}, {steps} timed steps x {repeats} repeat(s), SGD lr {LR} "
          f"momentum {MOMENTUM} wd {WEIGHT_DECAY}; PyTorch trains {loop_n} of the models one after another")
    peak = matmul_flops(jax, jnp, (4096, 8192) if gpu else (1024, 2048))
    vendor = spec_peak(info["device"]) if gpu else None
    print(f"peak: measured float32 matmul {peak / 1e9:.0f} GFLOP/s"
          + (f"; vendor dense TF32 peak {vendor / 1e12:.0f} TFLOP/s" if vendor else ""))

    results = {"machine": info, "args": vars(args), "widths": {}, "members": args.members,
               "batch_size": args.batch_size, "steps": steps, "torch": torch.__version__,
               "torch_device": torch_device, "matmul_peak_flops": peak, "vendor_peak_flops": vendor}
    xla_check = xla_train_step_flops(jax, jnp, widths[0], args.batch_size)
    analytic = train_flops_per_example(widths[0]) * args.batch_size
    results["xla_flops_check"] = {"width": widths[0], "xla": xla_check, "analytic": analytic}
    print(f"FLOPs of one training step at width {widths[0]}: analytic {analytic / 1e9:.3f} G (6 x MACs), "
          f"XLA's count {xla_check / 1e9:.3f} G (ratio {xla_check / analytic:.2f}; XLA adds BatchNorm, "
          "elementwise and optimiser work)" if xla_check else "XLA gives no FLOP count here")

    lljax_measured, torch_measured = {}, {}
    for width in widths:
        run = lljax_run(jax, jnp, np, width, args.members, args.batch_size, steps, repeats, mesh)
        tr = torch_run(torch, np, width, run, loop_n, torch_device)
        tf = torch_func_run(torch, np, width, run, args.members, torch_device)
        step_flops = train_flops_per_example(width) * args.batch_size
        rate_a = args.members * steps / run["seconds"]
        rate_b = loop_n * steps / tr["seconds"]
        rate_e = args.members * steps / tf["seconds"]
        flops_a, flops_b = rate_a * step_flops, rate_b * step_flops
        agree = float(np.max(np.abs(tr["epoch0_loss"] - run["epoch0_loss"][:loop_n])))
        agree_func = float(np.max(np.abs(tf["epoch0_loss"] - run["epoch0_loss"])))
        row = {"model_steps_per_s": {"vmapped_lljax": rate_a, "pytorch_sequential": rate_b, "torch_func": rate_e},
               "speedup_vs_pytorch": rate_a / rate_b, "speedup_vs_torch_func": rate_a / rate_e,
               "max_epoch0_loss_diff_torch_func": agree_func,
               "train_flops_per_example": train_flops_per_example(width),
               "achieved_flops": {"vmapped_lljax": flops_a, "pytorch_sequential": flops_b},
               "fraction_of_matmul_peak": {"vmapped_lljax": flops_a / peak, "pytorch_sequential": flops_b / peak},
               "fraction_of_vendor_peak": ({"vmapped_lljax": flops_a / vendor, "pytorch_sequential": flops_b / vendor}
                                           if vendor else None),
               "compile_seconds": run["compile_seconds"], "init_seconds": run["init_seconds"],
               "vmapped_seconds_all": run["seconds_all"], "padded_members": run["padded_members"],
               "epoch0_loss_mean": {"vmapped_lljax": float(run["epoch0_loss"][:loop_n].mean()),
                                    "pytorch_sequential": float(tr["epoch0_loss"].mean())},
               "max_epoch0_loss_diff": agree, "diverged": run["diverged"], "same_device": same_device}
        results["widths"][str(width)] = row
        lljax_measured[train_flops_per_example(width)] = flops_a
        torch_measured[train_flops_per_example(width)] = flops_b
        print(f"\nwidth {width} ({train_flops_per_example(width) / 1e6:.1f} MFLOP per training example):")
        print(f"  (a) vmapped lljax     {rate_a:9.2f} model-steps/s  {flops_a / 1e9:8.1f} GFLOP/s "
              f"= {100 * flops_a / peak:5.1f}% of matmul peak"
              + (f", {100 * flops_a / vendor:5.2f}% of vendor peak" if vendor else "")
              + f"   (compile {run['compile_seconds']:.1f} s, init {run['init_seconds']:.1f} s, excluded)")
        print(f"  (b) PyTorch, one by one {rate_b:7.2f} model-steps/s  {flops_b / 1e9:8.1f} GFLOP/s "
              f"= {100 * flops_b / peak:5.1f}% of matmul peak"
              + (f", {100 * flops_b / vendor:5.2f}% of vendor peak" if vendor else ""))
        print(f"  (e) torch.func, all at once {rate_e:5.2f} model-steps/s  {rate_e * step_flops / 1e9:8.1f} GFLOP/s "
              f"(its losses vs lljax's: max |diff| {agree_func:.1e})")
        print(f"  (a) / (b) = {rate_a / rate_b:.2f}, (a) / (e) = {rate_a / rate_e:.2f}"
              + ("" if same_device else "  (NOT the same device)"))
        losses = row["epoch0_loss_mean"]
        print(f"  check: mean training loss over the {steps} steps, member(s) 0..{loop_n - 1}: lljax "
              f"{losses['vmapped_lljax']:.5f}, PyTorch {losses['pytorch_sequential']:.5f} (max |diff| {agree:.1e})")

    grid_a, grid_b = project_grid(lljax_measured), project_grid(torch_measured)
    results["projection"] = {"lljax": grid_a, "pytorch_sequential": grid_b, "widths": PAPER_WIDTHS,
                             "batch_sizes": PAPER_BATCH_SIZES, "seeds": PAPER_SEEDS, "epochs": PAPER_EPOCHS,
                             "num_train": CIFAR_TRAIN}
    print(f"\nprojected paper grid ({len(PAPER_WIDTHS)} widths 1..128 x {len(PAPER_BATCH_SIZES)} batch sizes "
          f"16..1024 x {PAPER_SEEDS} seeds x {PAPER_EPOCHS} epochs of {CIFAR_TRAIN} images, "
          f"{grid_a['examples_per_width'] * len(PAPER_WIDTHS) / 1e9:.1f} G training examples) on this machine:")
    wide_share = sum(grid_a["per_width_seconds"][w] for w in (64, 91, 128)) / grid_a["total_seconds"]
    print(f"  lljax {hours(grid_a['total_seconds'])}, PyTorch one by one {hours(grid_b['total_seconds'])}; "
          f"widths 64..128 are {100 * wide_share:.0f}% "
          "of it" + (" (their FLOP/s extrapolated from the widest measured width)" if max(widths) < 128 else ""))
    headline = str(max(widths))
    results["speedup_vs_pytorch"] = results["widths"][headline]["speedup_vs_pytorch"]
    results["speedup_vs_torch_func"] = results["widths"][headline]["speedup_vs_torch_func"]
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1, default=float)
        print(f"wrote {args.out}")
    print(f"speedup_vs_torch_func: {results['speedup_vs_torch_func']:.2f}")
    print(f"speedup_vs_pytorch: {results['speedup_vs_pytorch']:.2f}")
    return results


if __name__ == "__main__":
    main()
