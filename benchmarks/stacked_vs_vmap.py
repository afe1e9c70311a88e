"""One local-SGD gradient step of K stacked clients: fedge's stacked forward pass (grouped
convolutions and batched matrix products, one autograd pass) against ``torch.func``
(``vmap(grad(functional_call))``), the textbook way to vectorize per-client gradients.

Both compute every client's gradient of its mean cross-entropy on its own batch; the
script checks that they agree (to rounding: where two inputs of a max-pool window tie
within rounding either may win, which moves one gradient entry), then times each
(median of ``--steps`` steps after a warm-up, torch's default threads).

    python benchmarks/stacked_vs_vmap.py                  # LeNet, K=50, B=10
    python benchmarks/stacked_vs_vmap.py --clients 10 --batch 32
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from fedge.models.spec import build_model, fast_layout, preset_spec
from fedge.models.stacked import stacked_forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    k, b = args.clients, args.batch
    spec = preset_spec("lenet", (1, 28, 28), 10)
    model = build_model(spec)
    stacked = {
        n: p.detach().unsqueeze(0).repeat(k, *[1] * p.dim()).clone()
        for n, p in model.named_parameters()
    }
    torch.manual_seed(0)
    x = torch.randn(k, b, 1, 28, 28)
    y = torch.randint(0, 10, (k, b))

    def loss(params, xb, yb):
        return F.cross_entropy(functional_call(model, params, (xb,)), yb)

    per_client_grad = vmap(grad(loss))
    fast_layout(model)  # torch.func gets the same channels-last weights' layout benefit

    def with_vmap():
        return list(per_client_grad(stacked, x, y).values())

    def with_stack():
        live = {n: v.detach().requires_grad_() for n, v in stacked.items()}
        logits = stacked_forward(spec, live, x)
        losses = F.cross_entropy(logits.reshape(k * b, -1), y.reshape(-1), reduction="none")
        return torch.autograd.grad(losses.view(k, b).mean(1).sum(), list(live.values()))

    gap = max((u - v).abs().max().item() for u, v in zip(with_vmap(), with_stack(), strict=True))
    print(f"LeNet, {k} clients x batch {b}: largest gradient difference {gap:.1e}")
    times = {}
    for name, step in (("torch.func vmap", with_vmap), ("fedge stacked", with_stack)):
        for _ in range(3):
            step()
        samples = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            step()
            samples.append(time.perf_counter() - t0)
        times[name] = statistics.median(samples)
        print(f"{name:>16}: {1e3 * times[name]:.2f} ms per step")
    print(f"stacked / vmap: {times['torch.func vmap'] / times['fedge stacked']:.2f}x faster")


if __name__ == "__main__":
    main()
