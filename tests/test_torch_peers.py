"""benchmarks/torch_peers.py (the torch.func peer of the speed benchmarks) against PyTorch's own per-model loop:
stacked members trained by the vmapped gradient and `StackedSGD` follow torch.optim.SGD member by member.
Skipped without torch (it is a benchmark requirement only)."""
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import torch_peers  # noqa: E402


def make(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))


def test_stacked_members_with_a_learning_rate_each_follow_torch_sgd_member_by_member():
    lrs, steps = [0.05, 0.2, 0.5], 6
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(len(lrs), steps, 8, 5, generator=gen)
    y = torch.randint(0, 3, (len(lrs), steps, 8), generator=gen)
    loss_fn = torch.nn.functional.cross_entropy
    want = []
    for m, lr in enumerate(lrs):
        model = make(m)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
        losses = []
        for s in range(steps):
            opt.zero_grad()
            loss = loss_fn(model(x[m, s]), y[m, s])
            loss.backward()
            opt.step()
            losses.append(loss.item())
        want.append((losses, [p.detach().clone() for p in model.parameters()]))
    params, buffers, base = torch_peers.stack(torch, [make(m) for m in range(len(lrs))])
    step = torch_peers.vmapped_step(torch, base, loss_fn)
    opt = torch_peers.StackedSGD(torch, params, lrs, momentum=0.9, weight_decay=5e-4)
    got = []
    with torch.no_grad():
        for s in range(steps):
            grads, loss = step(params, buffers, x[:, s], y[:, s])
            opt.step(grads, scale=1.0)
            got.append(loss.numpy())
    np.testing.assert_allclose(np.stack(got, 1), [w[0] for w in want], rtol=1e-5, atol=1e-6)
    for m in range(len(lrs)):
        for stacked, single in zip(params.values(), want[m][1]):
            np.testing.assert_allclose(stacked[m].detach().numpy(), single.numpy(), rtol=1e-5, atol=1e-6)
