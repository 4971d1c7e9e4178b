"""Transformer ensemble training speed: M built-in Transformers on modular addition trained by lljax (vmapped)
against the same models in PyTorch one after another and in PyTorch's own ensembling (torch.func), side by side
in one run; and lljax's cost per step for different splits of the same run into calls and epochs (issue 20).

    python benchmarks/transformer_ensembles.py [--members 16] [--widths 64 128] [--depths 1 2] [--p 97]
                                      [--batch-size 512] [--epochs 1] [--split-steps 100] [--tiny]
                                      [--out FILE.json]

Part 1, speed. Every way trains the same M models: lljax's built-in `transformer` (d_model = width, width // 32
heads, pre-LayerNorm blocks of causal self-attention and a ReLU MLP of 4 x width, final LayerNorm, read-out at
the last position) on `modular` (x + y mod p, tokens (x, y, '='), half of the p^2 pairs for training), with
lljax's initial weights (copied into PyTorch: Dense kernels transposed, attention kernels (d, H, D) and
(H, D, d) reshaped to (d, d) Linear weights), AdamW with Nanda et al.'s settings (lr 1e-3, betas (0.9, 0.98),
weight decay 1.0, eps 1e-8, constant schedule; optax's scale_by_adam + add_decayed_weights scaled by -lr is
torch.optim.AdamW step for step: eps added to sqrt of the bias-corrected second moment, decay lr x wd x param)
and the same minibatches: lljax's own per-member order (`data.epoch_order`, `data.batch_indices`), computed in
JAX and handed to PyTorch as index tensors. Three ways:

  (a) vmapped lljax as the pipeline runs it: one JAX CPU device per core (`jax_num_cpu_devices`), the members
      padded to a multiple of the device count and sharded over `sharding.member_mesh()`, the dataset
      replicated, `train.train_ensemble` in calls of ceil(E / 10) epochs, each device's members in the
      pipeline's cache-sized slices (`Placement.passes_for`); one compiled program (compile time excluded from
      the rate and reported beside it);
  (c) PyTorch one model after another: an nn.Module with the same forward pass (nn.Linear q/k/v/out
      projections split into heads, `F.scaled_dot_product_attention(is_causal=True)`, nn.LayerNorm(eps=1e-6)
      as Flax's), F.cross_entropy, torch.optim.AdamW, minibatches gathered with the index tensors, losses kept
      as tensors (no per-step sync);
  (e) PyTorch's own ensembling, the best a PyTorch user writes without a compiler: `torch.func.
      stack_module_state` over the M modules, `functional_call` on a 'meta' copy, `vmap(grad_and_value(loss))`
      over the stacked parameters and each member's minibatch, the gradients set as the stacked tensors'
      `.grad` and one torch.optim.AdamW over the stacked tensors (elementwise, so exactly M AdamWs; a hand-
      written update would be the same ops). The gradients are made contiguous first: with inputs shared by
      every member (full batch) vmap returns the embedding's gradient strided, and torch 2.13's fused CPU
      AdamW then silently reads it as if contiguous (the loss 1e-2 off after 3 steps). Attention is written
      out (q k^T / sqrt(D), causal mask, softmax, @ v): `scaled_dot_product_attention` has no vmap batching
      rule on the CPU and falls back to a loop over the members. torch.compile is left out (it needs a C++
      toolchain and minutes of compilation per shape).

PyTorch's AdamW is the fused CPU kernel by default (`--torch-adamw`; 'foreach' and 'for-loop' are the
alternatives); PyTorch runs with as many intra-op threads as the machine has cores and with 1, the faster
counts (on a busy machine multi-threaded PyTorch collapses, which would flatter lljax). The rate is model-steps
per second (members x steps / wall time; padding members not counted): the median of the repeats for (a), the
median per-model time for (c) (a subset of the members, `--loop-members`: the per-model cost does not depend on
M), the whole run for (e). A full-batch row (every step on the whole training set of a small task, `--split-p`)
follows the minibatch configurations. Correctness: the per-member final training loss (mean over the last
epoch's minibatches) of (c) and (e) against (a), largest relative difference (float32 rounding only: same
weights, batches and optimiser). Each way's FLOP rate (6 x forward multiply-accumulates per example) is set
against the machine's dense float32 matmul rate (best of large square products in JAX): where PyTorch already
runs near that rate per model, no way of batching the models can be 10x faster, and the script says so.

Part 2, lljax's cost per step does not depend on how the steps are split. Full batch (`--split-p`, default 17:
145 training pairs, every step on all of them): the same S = `--split-steps` steps as one `train_ensemble` call,
as calls of S / 10 (the pipeline's progress resolution), of 10 and of 1 step, each call waited for as the
pipeline does; epoch bounds are traced, so every split runs one compiled program, and the final losses must
agree bit for bit. Minibatch (`--split-batch-size`, default 64, on the part-1 task): the same number of steps
as many one-step epochs (a training set of one minibatch) and as few long epochs (the whole training set,
N // B steps each), one call each. Seconds per step for each split (median of `--split-repeats`, the splits
interleaved so drifting load hits them alike) and its ratio to the one-call (or long-epoch) figure.

The last line printed is `speedup_vs_pytorch: X.XX`, (a) over (c) at the first width and depth (the line before
it, `speedup_vs_torch_func`, (a) over (e)). The machine may be shared: the load average and the CPU share other
processes took during each measurement are printed beside it. `--tiny` (toy sizes, about a minute) checks the
script works; its figures mean nothing.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from common import load_average, machine
from ensemble_training import ForeignLoad, lljax_batch_orders, matmul_flops
from lljax import models, sharding, tasks, train

LR, BETAS, WEIGHT_DECAY, EPS = 1e-3, (0.9, 0.98), 1.0, 1e-8  # Nanda et al. 2023
SEQ_LEN = 3  # (x, y, '=')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, default=None, help="ensemble size M (default 16; --tiny 4)")
    p.add_argument("--widths", type=int, nargs="+", default=None, help="d_model (default 64 128; --tiny 32)")
    p.add_argument("--depths", type=int, nargs="+", default=None, help="Transformer blocks (default 1 2; --tiny 1)")
    p.add_argument("--p", type=int, default=None, help="modulus of the minibatch task (default 97; --tiny 13)")
    p.add_argument("--batch-size", type=int, default=None, help="minibatch size (default 512; --tiny 16)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs per timed run (default 1: 9 steps at p 97, batch 512; --tiny 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats of (a), median kept (default 3)")
    p.add_argument("--loop-members", type=int, default=None,
                   help="members (c) trains one after another (default 4; --tiny 2)")
    p.add_argument("--full-batch-steps", type=int, default=None,
                   help="steps of the full-batch row of part 1, 0 leaves it out (default 20; --tiny 3)")
    p.add_argument("--split-p", type=int, default=None,
                   help="modulus of the full-batch task (part 1's full-batch row and part 2; default 17; --tiny 7)")
    p.add_argument("--split-steps", type=int, default=None,
                   help="full-batch steps of part 2, 0 skips part 2 (default 100; --tiny 20)")
    p.add_argument("--split-batch-size", type=int, default=None,
                   help="minibatch size of part 2's epoch splits (default 64; --tiny 16)")
    p.add_argument("--split-repeats", type=int, default=None,
                   help="repeats of each split, median kept (default 3)")
    p.add_argument("--torch-adamw", choices=("fused", "foreach", "for-loop"), default="fused",
                   help="torch.optim.AdamW implementation for (c) and (e) (default fused: the fastest on a CPU)")
    p.add_argument("--host-devices", type=int, default=os.cpu_count() or 1,
                   help="JAX CPU devices (a) shards the members over (default: the number of cores, as the "
                        "pipeline)")
    p.add_argument("--tiny", action="store_true", help="toy sizes, about a minute: checks the script works")
    p.add_argument("--out", default=None, help="write all figures to this JSON file")
    args = p.parse_args(argv)
    defaults = dict(members=16, widths=[64, 128], depths=[1, 2], p=97, batch_size=512, epochs=1, repeats=3,
                    loop_members=4, full_batch_steps=20, split_p=17, split_steps=100, split_batch_size=64,
                    split_repeats=3)
    # --tiny: part 2's long epochs are part 1's program (batch and epochs equal), one compilation fewer
    tiny = dict(members=4, widths=[32], depths=[1], p=13, batch_size=16, epochs=2, repeats=3, loop_members=2,
                full_batch_steps=3, split_p=7, split_steps=20, split_batch_size=16, split_repeats=3)
    for name, value in (tiny if args.tiny else defaults).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    positive = ("members", "p", "batch_size", "epochs", "repeats", "loop_members", "split_p", "split_batch_size",
                "split_repeats", "host_devices")
    if any(getattr(args, k) <= 0 for k in positive) or any(v <= 0 for v in args.widths + args.depths):
        p.error("sizes, counts and repeats must be positive")
    if args.full_batch_steps < 0 or args.split_steps < 0:
        p.error("--full-batch-steps and --split-steps must be >= 0")
    return args


# ------------------------------------------------------------------------------------------------ setup

def modular(p: int) -> dict:
    """x + y mod p: tokens (N, 3) int32, labels (N,) int32, half of the pairs for training."""
    arrays = tasks.generate("modular", tasks.TaskOptions(p=p, test_fraction=0.5))
    return {"x": np.asarray(arrays["x_train"], np.int32), "y": np.asarray(arrays["y_train"], np.int32), "p": p}


def macs_per_example(width: int, depth: int, num_classes: int, mlp_width: int | None = None) -> int:
    """Multiply-accumulates of one forward pass (projections, MLP, attention scores and mixing, read-out at the
    last position; embeddings are gathers, LayerNorms and softmax not counted)."""
    mlp_width = mlp_width or 4 * width
    per_token = 4 * width * width + 2 * width * mlp_width + 2 * SEQ_LEN * width
    return SEQ_LEN * depth * per_token + width * num_classes


def lljax_setup(width, depth, members, task, batch_size, epochs):
    """(TrainSpec, fresh() -> (state, member) unsharded) of M transformers on `task` (batch 0: full batch)."""
    p = task["p"]
    spec = train.TrainSpec(models.ModelSpec("transformer", width, p, depth=depth,
                                            extras=(("seq_len", SEQ_LEN), ("vocab_size", p + 1))),
                           batch_size, epochs, len(task["y"]), "constant", optimizer="adamw", input_dtype="int32")
    keys = jax.random.split(jax.random.key(0), members)
    hyper = train.Hyper(*(jnp.full((members,), v, jnp.float32)
                          for v in (LR, WEIGHT_DECAY, BETAS[0], 1.0, 0.0, BETAS[1])))
    labels = jnp.asarray(task["y"])

    def fresh():
        return train.init_ensemble(spec, keys, hyper, labels, (SEQ_LEN,))
    return spec, fresh


class Placed:
    """The pipeline's placement of an ensemble: members padded to the mesh and sharded over it, the dataset
    replicated, cache-sized passes per device."""

    def __init__(self, spec, fresh, x, mesh):
        self.spec, self.fresh, self.mesh = spec, fresh, mesh
        self.x = sharding.replicate(jnp.asarray(x), mesh)
        state, member = fresh()
        self.count = sharding.member_count(member)
        self.padded = -(-self.count // mesh.size) * mesh.size
        padded_params, _ = sharding.pad_members(state.params, mesh.size)
        self.passes = sharding.Placement(mesh).passes_for(self.padded, padded_params)

    def state(self):
        (state, member), _ = sharding.pad_members(self.fresh(), self.mesh.size)
        return jax.block_until_ready(sharding.shard_members((state, member), self.mesh))

    def compile(self) -> float:
        state, member = self.state()
        return _timed(lambda: jax.block_until_ready(self.call(state, member, 0, 0)))

    def call(self, state, member, first, last):
        return train.train_ensemble(self.spec, state, member, self.x, first, last, self.passes, self.mesh)

    def run(self, bounds) -> tuple[float, np.ndarray]:
        """(seconds, final (M,) losses) of training a fresh ensemble through the calls `bounds` [(first, last)],
        waiting for each (the pipeline does, for its progress bar and checkpoints)."""
        state, member = self.state()
        start = time.perf_counter()
        for first, last in bounds:
            state = jax.block_until_ready(self.call(state, member, first, last))
        seconds = time.perf_counter() - start
        return seconds, np.asarray(sharding.unpad(state, self.count).loss)


def chunks(total: int, size: int) -> list[tuple[int, int]]:
    return [(first, min(first + size, total)) for first in range(0, total, size)]


def lljax_batches(spec, fresh, count) -> np.ndarray:
    """(count, epochs x steps_per_epoch, B) indices: the minibatches lljax draws for each of the first `count`
    members, in order."""
    return lljax_batch_orders(spec, fresh, count).reshape(count, -1, spec.batch_size)


# ---------------------------------------------------------------------------------------------- PyTorch

def torch_transformer(torch, width, depth, num_classes, fused_attention=True):
    """A factory of nn.Modules computing lljax's `transformer(width, num_classes, depth, vocab_size=num_classes
    + 1, seq_len=3)`; parameter names as `torch_weights` writes them."""
    nn, F = torch.nn, torch.nn.functional
    heads = models.default_heads(width)
    head_dim = width // heads

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm_0, self.norm_1 = nn.LayerNorm(width, eps=1e-6), nn.LayerNorm(width, eps=1e-6)
            self.query, self.key, self.value, self.out = (nn.Linear(width, width) for _ in range(4))
            self.mlp_in, self.mlp_out = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

        def forward(self, x):
            b, t, _ = x.shape
            h = self.norm_0(x)
            q, k, v = (proj(h).reshape(b, t, heads, head_dim).transpose(1, 2)
                       for proj in (self.query, self.key, self.value))
            if fused_attention:
                a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                w = (q @ k.transpose(-2, -1)) * head_dim ** -0.5
                w = w.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
                a = w.softmax(-1) @ v
            x = x + self.out(a.transpose(1, 2).reshape(b, t, width))
            return x + self.mlp_out(F.relu(self.mlp_in(self.norm_1(x))))

    class Transformer(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.positions = nn.Embedding(num_classes + 1, width), nn.Embedding(SEQ_LEN, width)
            self.blocks = nn.ModuleList(Block() for _ in range(depth))
            self.final_norm, self.readout = nn.LayerNorm(width, eps=1e-6), nn.Linear(width, num_classes)

        def forward(self, tokens):
            x = self.embed(tokens) + self.positions.weight[:tokens.shape[1]]
            for block in self.blocks:
                x = block(x)
            return self.readout(self.final_norm(x)[:, -1])

    return Transformer


def torch_weights(torch, params, depth) -> list[dict]:
    """Per member, the state dict of `torch_transformer` holding lljax's parameters (leaves (M, ...)). A Dense
    kernel (in, out) is a Linear weight (out, in) transposed; the attention kernels (d, H, D) (query, key,
    value) and (H, D, d) (out) are (d, d) once their head axes are merged (heads side by side, as the torch
    module splits them)."""
    params = jax.tree.map(np.asarray, params)

    def t(a):
        return torch.from_numpy(np.array(a, np.float32))  # a writable contiguous copy

    def linear(name, layer):
        out_features = layer["bias"].size
        return {f"{name}.weight": t(layer["kernel"].reshape(-1, out_features).T),
                f"{name}.bias": t(layer["bias"].reshape(out_features))}

    def norm(name, layer):
        return {f"{name}.weight": t(layer["scale"]), f"{name}.bias": t(layer["bias"])}

    out = []
    for i in range(sharding.member_count(params)):
        m = jax.tree.map(lambda a: a[i], params)
        sd = {"embed.weight": t(m["embed"]["embedding"]), "positions.weight": t(m["positions"]["embedding"]),
              **norm("final_norm", m["final_norm"]), **linear("readout", m["readout"])}
        for b in range(depth):
            block, pre = m[f"block_{b}"], f"blocks.{b}."
            sd.update({**norm(pre + "norm_0", block["LayerNorm_0"]), **norm(pre + "norm_1", block["LayerNorm_1"]),
                       **linear(pre + "mlp_in", block["mlp_in"]), **linear(pre + "mlp_out", block["mlp_out"])})
            for name in ("query", "key", "value", "out"):
                sd.update(linear(pre + name, block["attention"][name]))
        out.append(sd)
    return out


def adamw_options(kind: str) -> dict:
    impl = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[kind]
    return dict(lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, eps=EPS, **impl)


def run_torch_sequential(torch, make, weights, x, y, batches, steps, per_epoch, adamw):
    """(c): one model after another. `batches` (count, steps, B) index tensors, or None: full batch."""
    F = torch.nn.functional
    losses, per_model = [], []
    for i, sd in enumerate(weights):
        start = time.perf_counter()
        model = make()
        model.load_state_dict(sd)
        opt = torch.optim.AdamW(model.parameters(), **adamw)
        history = torch.zeros(steps)
        for s in range(steps):
            if batches is None:
                xb, yb = x, y
            else:
                idx = batches[i, s]
                xb, yb = x[idx], y[idx]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            history[s] = loss.detach()
        losses.append(float(history[steps - per_epoch:].mean()))
        per_model.append(time.perf_counter() - start)
    return {"seconds_per_model": per_model, "final_loss": np.asarray(losses)}


def run_torch_func(torch, make, weights, x, y, batches, steps, per_epoch, adamw):
    """(e): torch.func ensembling of all the members at once; the time covers stacking, the optimiser's set-up
    and the steps."""
    import torch_peers

    start = time.perf_counter()
    modules = []
    for sd in weights:
        module = make()
        module.load_state_dict(sd)
        modules.append(module)
    params, buffers, base = torch_peers.stack(torch, modules)
    step = torch_peers.vmapped_step(torch, base, torch.nn.functional.cross_entropy, shared_inputs=batches is None)
    opt = torch.optim.AdamW(list(params.values()), **adamw)
    history = torch.zeros(steps, len(weights))
    with torch.no_grad():  # torch.func.grad still differentiates; nothing else builds a graph
        for s in range(steps):
            if batches is None:
                xb, yb = x, y
            else:
                idx = batches[:, s]
                xb, yb = x[idx], y[idx]
            grads, loss = step(params, buffers, xb, yb)
            for name, p in params.items():
                # contiguous: vmap returns the embedding's gradient strided when the inputs are shared (full
                # batch), and torch 2.13's fused CPU AdamW reads a strided gradient as if it were contiguous
                p.grad = grads[name].contiguous()
            opt.step()
            history[s] = loss
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "final_loss": history[steps - per_epoch:].mean(0).numpy()}


# ------------------------------------------------------------------------------------------------- part 1

def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(torch, args, mesh, width, depth, task, batch_size, epochs, full_batch_steps=0):
    """One row of part 1: (a), (c), (e) on M transformers; minibatch `batch_size` for `epochs`, or (batch 0)
    `full_batch_steps` full-batch steps."""
    M, cores = args.members, os.cpu_count() or 1
    full = batch_size == train.FULL_BATCH
    # full batch: the program of part 2 (same spec), run for fewer steps
    spec, fresh = lljax_setup(width, depth, M, task, batch_size,
                              max(args.split_steps, full_batch_steps) if full else epochs)
    steps = full_batch_steps if full else epochs * spec.steps_per_epoch
    per_epoch = spec.steps_per_epoch
    examples = len(task["y"]) if full else batch_size
    loads, load_averages = {}, {}

    def measure(name, fn):
        load_averages[name] = load_average()
        with ForeignLoad() as load:
            out = fn()
        loads[name] = load.fraction
        return out

    placed = Placed(spec, fresh, task["x"], mesh)
    compile_s = placed.compile()
    call_epochs = steps if full else epochs
    bounds = chunks(call_epochs, max(1, math.ceil(call_epochs / 10)))  # pipeline.train_group's progress resolution

    def lljax_runs():
        return [placed.run(bounds) for _ in range(args.repeats)]
    runs = measure("lljax", lljax_runs)
    a_seconds = [s for s, _ in runs]
    a_loss = runs[-1][1]

    state, _ = fresh()
    loop_n = min(M, args.loop_members)
    weights = torch_weights(torch, state.params, depth)
    batches = None if full else torch.from_numpy(lljax_batches(spec, fresh, M)[:, :steps].astype(np.int64))
    x, y = torch.from_numpy(task["x"].astype(np.int64)), torch.from_numpy(task["y"].astype(np.int64))
    adamw = adamw_options(args.torch_adamw)
    fused_make = torch_transformer(torch, width, depth, task["p"], fused_attention=True)
    plain_make = torch_transformer(torch, width, depth, task["p"], fused_attention=False)
    threads_rates, chosen = {}, {}

    def best_threads(name, fn, rate_of):
        """The faster of `cores` intra-op threads and 1, each after an untimed one-step warm-up."""
        best = None
        for threads in dict.fromkeys((cores, 1)):
            torch.set_num_threads(threads)
            fn(warm_up=True)
            key = f"{name}@{threads}"
            out = measure(key, fn)
            threads_rates[key] = rate_of(out)
            if best is None or threads_rates[key] > best[0]:
                best = (threads_rates[key], key, threads, out)
        torch.set_num_threads(cores)
        loads[name], load_averages[name], chosen[name] = loads[best[1]], load_averages[best[1]], best[2]
        return best[3]

    c = best_threads("pytorch_sequential", lambda warm_up=False: run_torch_sequential(
        torch, fused_make, weights[:1] if warm_up else weights[:loop_n], x, y,
        None if batches is None else batches[:1 if warm_up else loop_n], 1 if warm_up else steps,
        1 if warm_up else per_epoch, adamw), lambda r: steps / np.median(r["seconds_per_model"]))
    e = best_threads("pytorch_torch_func", lambda warm_up=False: run_torch_func(
        torch, plain_make, weights, x, y, batches, 1 if warm_up else steps, 1 if warm_up else per_epoch, adamw),
        lambda r: M * steps / r["seconds"])

    rate = {"lljax": M * steps / np.median(a_seconds), "pytorch_sequential": steps / np.median(c["seconds_per_model"]),
            "pytorch_torch_func": M * steps / e["seconds"]}
    flop_per_model_step = 6 * macs_per_example(width, depth, task["p"]) * examples

    def rel(other):
        ref = a_loss[:len(other)]
        return float(np.max(np.abs(other - ref) / np.abs(ref)))

    return {"width": width, "depth": depth, "heads": models.default_heads(width), "p": task["p"],
            "batch_size": "full" if full else batch_size, "examples_per_step": examples, "steps": steps,
            "members": M, "loop_members": loop_n, "model_steps_per_s": rate,
            "speedup_vs": {k: rate["lljax"] / v for k, v in rate.items() if k != "lljax"},
            "flops": {k: v * flop_per_model_step for k, v in rate.items()},
            "flop_per_model_step": flop_per_model_step, "compile_seconds": compile_s,
            "lljax_seconds_all": a_seconds, "passes": placed.passes, "padded_members": placed.padded - M,
            "pytorch_seconds_per_model": c["seconds_per_model"], "torch_func_seconds": e["seconds"],
            "pytorch_model_steps_per_s_by_threads": threads_rates, "pytorch_threads_used": chosen,
            "final_loss_mean": {"lljax": float(a_loss[:loop_n].mean()),
                                "pytorch_sequential": float(c["final_loss"].mean()),
                                "pytorch_torch_func": float(e["final_loss"][:loop_n].mean())},
            "max_rel_loss_diff_vs_lljax": {"pytorch_sequential": rel(c["final_loss"]),
                                           "pytorch_torch_func": rel(e["final_loss"])},
            "cpu_used_by_other_processes": loads, "load_average_at_start": load_averages}


NAMES = {"lljax": "(a) lljax vmapped", "pytorch_sequential": "(c) PyTorch one by one",
         "pytorch_torch_func": "(e) torch.func vmap"}


def print_row(row, peak):
    batch = "full batch" if row["batch_size"] == "full" else f"batch {row['batch_size']}"
    print(f"\nd_model {row['width']}, depth {row['depth']} ({row['heads']} heads), p {row['p']}, {batch} "
          f"({row['examples_per_step']} examples/step), {row['steps']} steps, {row['members']} members: "
          "model-steps/s (higher is better)")
    rate = row["model_steps_per_s"]
    for k, v in rate.items():
        ratio = "" if k == "lljax" else f"   (a) is {rate['lljax'] / v:6.2f}x faster"
        notes = ([] if row["cpu_used_by_other_processes"].get(k) is None else
                 [f"other processes: {100 * row['cpu_used_by_other_processes'][k]:.0f}% CPU"]) + (
            [] if row["load_average_at_start"].get(k) is None else [f"load avg {row['load_average_at_start'][k]:.2f}"])
        threads = row["pytorch_threads_used"].get(k)
        name = NAMES[k] + ("" if threads is None else f" ({threads} thread{'s' * (threads > 1)})")
        print(f"  {name:36s} {v:9.1f}  {row['flops'][k] / 1e9:6.1f} GFLOP/s = {100 * row['flops'][k] / peak:5.1f}% "
              f"of matmul{ratio}   [{', '.join(notes)}]")
    print(f"  (a) compile {row['compile_seconds']:.1f} s (excluded), runs "
          + ", ".join(f"{t:.2f}" for t in row["lljax_seconds_all"]) + f" s, {row['passes']} pass(es) per device; "
          f"(e) {row['torch_func_seconds']:.2f} s")
    losses = row["final_loss_mean"]
    print(f"  final train loss (mean over the {row['loop_members']} members (c) trains): "
          + ", ".join(f"{k} {v:.5f}" for k, v in losses.items()))
    diff = row["max_rel_loss_diff_vs_lljax"]
    print(f"  per-member final loss vs (a): (c) max rel diff {diff['pytorch_sequential']:.1e}, (e) "
          f"{diff['pytorch_torch_func']:.1e} (same weights, batches, AdamW: float32 rounding only)")
    best_torch = max(rate["pytorch_sequential"], rate["pytorch_torch_func"])
    ceiling = peak / (row["flop_per_model_step"] * rate["pytorch_sequential"])
    print(f"  ceiling: a way at 100% of the matmul rate would be {ceiling:.1f}x (c) and "
          f"{peak / (row['flop_per_model_step'] * best_torch):.1f}x the faster PyTorch way")


# ------------------------------------------------------------------------------------------------- part 2

def splits(args, mesh, task_small, task):
    """Part 2: seconds per step of the same steps split into calls (full batch) and into epochs (minibatch)."""
    width, depth, M, S = args.widths[0], args.depths[0], args.members, args.split_steps
    out = {"width": width, "depth": depth, "members": M}

    # full batch: S steps as 1 call, S / 10 per call (the pipeline), 10 per call, 1 per call
    spec, fresh = lljax_setup(width, depth, M, task_small, train.FULL_BATCH, S)
    placed = Placed(spec, fresh, task_small["x"], mesh)
    compile_s = placed.compile()
    placed.run([(0, 1)])  # untimed: the first run's allocations and thread start-up
    sizes = list(dict.fromkeys((S, max(1, math.ceil(S / 10)), min(10, S), 1)))
    seconds = {k: [] for k in sizes}
    losses, loads = {}, {}
    for _ in range(args.split_repeats):
        for k in sizes:  # interleaved: drifting load hits every split alike
            loads.setdefault(k, load_average())
            s, losses[k] = placed.run(chunks(S, k))
            seconds[k].append(s)
    per_step = {k: float(np.median(v)) / S for k, v in seconds.items()}
    same = max(float(np.max(np.abs(losses[k] - losses[S]))) for k in sizes)
    out["full_batch"] = {"p": task_small["p"], "examples": len(task_small["y"]), "steps": S,
                         "compile_seconds": compile_s, "passes": placed.passes,
                         "seconds_per_step": {str(k): v for k, v in per_step.items()},
                         "calls": {str(k): len(chunks(S, k)) for k in sizes},
                         "seconds_all": {str(k): v for k, v in seconds.items()},
                         "ratio_to_one_call": {str(k): per_step[k] / per_step[S] for k in sizes},
                         "max_final_loss_diff": same, "load_average_at_start": {str(k): v for k, v in loads.items()}}
    print(f"\npart 2, full batch: {M} transformers d_model {width} depth {depth}, p {task_small['p']} "
          f"({len(task_small['y'])} examples per step), {S} steps, compile {compile_s:.1f} s (once for every split; "
          "about 0 where part 1's full-batch row compiled the same program)")
    for k in sizes:
        print(f"  {len(chunks(S, k)):5d} call(s) of {k:5d} steps: {1e3 * per_step[k]:8.2f} ms/step "
              f"({per_step[k] / per_step[S]:.3f}x one call)   [load avg {loads[k]}]")
    print(f"  final losses of every split agree to {same:.1e} (one program, the same steps)")

    # minibatch: the same steps as many one-step epochs and as few long epochs
    B = args.split_batch_size
    long_spe = len(task["y"]) // B
    if long_spe < 1:
        sys.exit(f"--split-batch-size {B} is larger than the training set ({len(task['y'])})")
    steps = 2 * long_spe
    cases = {}
    for name, n, epochs in (("short", B, steps), ("long", len(task["y"]), 2)):
        sub = {"x": task["x"][:n], "y": task["y"][:n], "p": task["p"]}
        spec, fresh = lljax_setup(width, depth, M, sub, B, epochs)
        placed = Placed(spec, fresh, sub["x"], mesh)
        cases[name] = {"placed": placed, "compile_seconds": placed.compile(), "epochs": epochs,
                       "steps_per_epoch": spec.steps_per_epoch, "examples": n, "seconds_all": []}
        placed.run([(0, 1)])  # untimed warm-up
    for _ in range(args.split_repeats):
        for case in cases.values():
            case.setdefault("load_average_at_start", load_average())
            case["seconds_all"].append(case["placed"].run([(0, case["epochs"])])[0])
    print(f"part 2, minibatch: batch {B}, p {task['p']}, {steps} steps in one call")
    out["minibatch"] = {"batch_size": B, "steps": steps}
    for name, case in cases.items():
        per = float(np.median(case["seconds_all"])) / steps
        case["seconds_per_step"] = per
        long_per = float(np.median(cases["long"]["seconds_all"])) / steps
        out["minibatch"][name] = {k: v for k, v in case.items() if k != "placed"}
        out["minibatch"][name]["ratio_to_long"] = per / long_per
        print(f"  {case['epochs']:5d} epoch(s) of {case['steps_per_epoch']:3d} steps ({case['examples']:5d} "
              f"examples): {1e3 * per:8.2f} ms/step ({per / long_per:.3f}x long epochs), compile "
              f"{case['compile_seconds']:.1f} s   [load avg {case['load_average_at_start']}]")
    return out


# ---------------------------------------------------------------------------------------------------- main

def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        sys.exit("PyTorch is needed for the comparison: pip install -r benchmarks/requirements-bench.txt")
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    # before JAX starts its CPU backend, as the pipeline does: one host device per core for (a)
    jax.config.update("jax_num_cpu_devices", args.host_devices)
    mesh = sharding.member_mesh()
    task = modular(args.p)
    if args.batch_size > len(task["y"]):
        sys.exit(f"--batch-size {args.batch_size} is larger than the training set ({len(task['y'])})")
    task_small = modular(args.split_p)
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, JAX {info['jax']} on {info['backend']} "
          f"({info['device']}), PyTorch {torch.__version__} with {cores} or 1 intra-op threads (the faster "
          f"counts), AdamW {args.torch_adamw}; XLA_FLAGS={info['xla_flags']!r}")
    print(f"(a) shards {args.members} members over {mesh.size} JAX CPU device(s) "
          f"(jax_num_cpu_devices={args.host_devices}); load average at start: {load_average()}")
    print(f"setup: modular x + y mod {args.p} ({len(task['y'])} training pairs), AdamW lr {LR} betas {BETAS} "
          f"wd {WEIGHT_DECAY}, constant schedule; (c) trains {min(args.members, args.loop_members)} of the "
          f"{args.members} members")
    sizes = (256, 512) if args.tiny else (2048, 4096)
    mm = matmul_flops(sizes, repeats=2 if args.tiny else 5)
    print("matmul float32 (JAX): " + ", ".join(f"{n}^2 {r / 1e9:.0f} GFLOP/s" for n, r in mm["per_size"].items()))
    results = {"machine": info, "args": vars(args), "torch": torch.__version__, "devices": mesh.size,
               "load_average_start": load_average(), "matmul_flops_start": mm["best"], "rows": []}
    rows = results["rows"]
    for width in args.widths:
        for depth in args.depths:
            rows.append(compare(torch, args, mesh, width, depth, task, args.batch_size, args.epochs))
            print_row(rows[-1], mm["best"])
    if args.full_batch_steps:
        rows.append(compare(torch, args, mesh, args.widths[0], args.depths[0], task_small, train.FULL_BATCH, 1,
                            args.full_batch_steps))
        print_row(rows[-1], mm["best"])
    if args.split_steps:
        results["splits"] = splits(args, mesh, task_small, task)
    mm_end = matmul_flops(sizes, repeats=2 if args.tiny else 5)["best"]
    peak = max(mm["best"], mm_end)
    results.update(matmul_flops_end=mm_end, matmul_flops=peak, load_average_end=load_average())
    for row in rows:
        row["fraction_of_matmul"] = {k: v / peak for k, v in row["flops"].items()}
    print(f"\nmatmul float32 (JAX) at start {mm['best'] / 1e9:.0f}, at end {mm_end / 1e9:.0f} GFLOP/s; "
          f"load average at end: {results['load_average_end']}")
    print("summary (a) over (c) / over (e), goals >= 10x / >= 2x:")
    for row in rows:
        sp = row["speedup_vs"]
        batch = "full" if row["batch_size"] == "full" else f"B {row['batch_size']}"
        print(f"  d_model {row['width']:4d} depth {row['depth']} {batch:6s}: {sp['pytorch_sequential']:6.2f}x "
              f"{'met' if sp['pytorch_sequential'] >= 10 else 'short':5s} / {sp['pytorch_torch_func']:5.2f}x "
              f"{'met' if sp['pytorch_torch_func'] >= 2 else 'short':5s}  (a) at "
              f"{100 * row['fraction_of_matmul']['lljax']:.0f}% of the matmul rate, (c) at "
              f"{100 * row['fraction_of_matmul']['pytorch_sequential']:.0f}%")
    if args.split_steps:
        fb, mb = results["splits"]["full_batch"], results["splits"]["minibatch"]
        spread = lambda ratios: max(ratios) / min(ratios) - 1
        results["splits"]["spread"] = {"full_batch": spread(fb["ratio_to_one_call"].values()),
                                       "minibatch": spread([mb["short"]["ratio_to_long"], 1.0])}
        print(f"part 2: seconds per step differ by at most {100 * results['splits']['spread']['full_batch']:.1f}% "
              f"between splits into calls (full batch: 1 to {fb['steps']} calls) and "
              f"{100 * results['splits']['spread']['minibatch']:.1f}% between one-step and "
              f"{mb['long']['steps_per_epoch']}-step epochs")
    worst = max(max(r["max_rel_loss_diff_vs_lljax"].values()) for r in rows)
    results["max_rel_loss_diff"] = worst
    print(f"largest relative difference of a member's final loss, PyTorch vs lljax: {worst:.1e}")
    results["speedup_vs_pytorch"] = rows[0]["speedup_vs"]["pytorch_sequential"]
    results["speedup_vs_torch_func"] = rows[0]["speedup_vs"]["pytorch_torch_func"]
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1, default=float)
        print(f"wrote {args.out}")
    print(f"speedup_vs_torch_func: {results['speedup_vs_torch_func']:.2f}")
    print(f"speedup_vs_pytorch: {results['speedup_vs_pytorch']:.2f}")
    return results


if __name__ == "__main__":
    main()
