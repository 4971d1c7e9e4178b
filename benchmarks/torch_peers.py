"""PyTorch's own ensembling, the torch.func peer of every speed benchmark: what a PyTorch user writes to train
M models at once without a compiler. `torch.func.stack_module_state` stacks the members' parameters (M, ...),
`functional_call` runs one member on a 'meta' copy of the module, and `vmap(grad_and_value(loss))` gives every
member's gradient and loss in one call; the optimiser then updates the stacked tensors (SGD, Adam, AdamW and
their weight decay are elementwise, so one optimiser over the stacked tensors is M optimisers; a per-member
learning rate is a (M,) tensor broadcast over each parameter).

Only torch is imported here (lazily, by the caller): the whole-process scripts of benchmarks/end_to_end.py import
this file as a PyTorch user's script would import their own helper.
"""
from __future__ import annotations

import copy


def stack(torch, modules):
    """(params, buffers, base): the members' parameters and buffers stacked to (M, ...) (leaves that require
    grad; detached from the modules), and a 'meta' copy of the first module for `functional_call`."""
    from torch.func import stack_module_state

    params, buffers = stack_module_state(list(modules))
    base = copy.deepcopy(modules[0]).to("meta")
    return params, buffers, base


def vmapped_step(torch, base, loss_fn, shared_inputs: bool = False):
    """`step(params, buffers, x, y) -> (grads, losses (M,))`: every member's gradient of
    loss_fn(outputs, y) at once; x, y per member (M, B, ...) or, with `shared_inputs`, the same (B, ...) for all."""
    from torch.func import functional_call, grad_and_value, vmap

    def member_loss(p, b, xb, yb):
        return loss_fn(functional_call(base, (p, b), (xb,)), yb)

    data = None if shared_inputs else 0
    return vmap(grad_and_value(member_loss), in_dims=(0, 0, data, data))


class StackedSGD:
    """torch.optim.SGD (momentum, coupled weight decay, buf = m * buf + g) on stacked (M, ...) tensors with a
    per-member learning rate `lrs` (M,): torch.optim.SGD's update, member by member."""

    def __init__(self, torch, params: dict, lrs, momentum: float, weight_decay: float):
        self.params, self.momentum, self.weight_decay = params, momentum, weight_decay
        self.lrs = torch.as_tensor(lrs, dtype=torch.float32)
        self.buffers = {name: None for name in params}

    def step(self, grads: dict, scale: float = 1.0) -> None:
        """One step with learning rates `scale` x lrs (a schedule's factor)."""
        for name, p in self.params.items():
            g = grads[name].add(p, alpha=self.weight_decay) if self.weight_decay else grads[name]
            buf = self.buffers[name]
            if buf is None:  # torch.optim.SGD's first step: the buffer is the gradient
                buf = self.buffers[name] = g.clone()
            else:
                buf.mul_(self.momentum).add_(g)
            p.sub_(buf * (scale * self.lrs).view(-1, *[1] * (p.dim() - 1)))
