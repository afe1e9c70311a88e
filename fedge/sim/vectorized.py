"""The vectorized engine: many clients' local SGD at once with ``torch.func``.

Each chunk of clients trains as one stacked model: parameters get a leading client axis,
``vmap(grad(loss))`` computes every client's minibatch gradient in one call, and the SGD
update (momentum, weight decay, the strategy's corrections) is applied to the whole stack.
Clients with fewer examples or fewer local steps are handled by masking: a padded batch
row has weight zero in its client's mean loss, and a client past its last step keeps its
weights and momentum unchanged.

It computes exactly what :class:`~fedge.sim.engine.SequentialEngine` computes (same
batches from the same per-client random streams, same update rule; see
:mod:`fedge.fl.local`), up to floating-point summation order. Strategy hooks are called on
the stacked parameters, so they must broadcast: tensors of the round (``task.params``,
``task.extras``) have no client axis, per-client state (``task.client_state``) has one,
with zeros for a client that has none yet.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

from fedge.fl.local import LocalTraining, client_generator
from fedge.fl.strategy.base import Strategy
from fedge.fl.types import ClientTask, ClientUpdate, Params
from fedge.models.spec import ModelSpec, build_model
from fedge.sim.engine import ClientData

__all__ = ["VectorizedEngine"]

#: Default memory budget for one chunk of stacked clients.
DEFAULT_MAX_MEMORY = 2 * 2**30


class VectorizedEngine:
    """Trains the sampled clients in stacked chunks in this process.

    Parameters
    ----------
    spec, data, local, seed:
        As for :class:`~fedge.sim.engine.SequentialEngine`.
    max_memory:
        Bytes one chunk may use for stacked weights, optimizer state, gradients and
        activations (an estimate); the chunk size follows from it. Default 2 GiB.
    """

    name = "vectorized"

    def __init__(
        self,
        spec: ModelSpec,
        data: ClientData,
        local: LocalTraining,
        *,
        seed: int,
        max_memory: int = DEFAULT_MAX_MEMORY,
    ):
        self.data = data
        self.local = local
        self.seed = seed
        self._model = build_model(spec)
        self._chunk = self._chunk_size(spec, max_memory)
        self._step = vmap(grad_and_value(self._loss))

    def _chunk_size(self, spec: ModelSpec, max_memory: int) -> int:
        params = sum(p.numel() for p in self._model.parameters())
        batch = self.local.batch_size or int(self.data.sizes().max())
        activations = sum(math.prod(s) for s in spec.output_shapes()) * batch
        inputs = math.prod(spec.input_shape) * batch
        # weights, momentum, gradient, update temporaries; activations kept for backward
        per_client = 4 * (6 * params + 3 * activations + inputs)
        return max(1, int(max_memory // per_client))

    def _loss(
        self, params: Params, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        logits = functional_call(self._model, params, (x,))
        losses = F.cross_entropy(logits, y, reduction="none")
        return (losses * mask).sum() / mask.sum().clamp_min(1.0)

    def _batches(self, k: int, round: int, budget: int | None) -> torch.Tensor:
        """Row indices (into the pooled data) of client ``k``'s batches, ``(steps, B)``,
        padded with -1; the same batches as the sequential engine draws."""
        rows = self.data.indices[k]
        n = len(rows)
        b = n if self.local.batch_size is None else min(self.local.batch_size, n)
        per_epoch = self.local.steps_per_epoch(n)
        steps = self.local.epochs * per_epoch
        if budget is not None:
            steps = min(steps, budget)
        gen = client_generator(self.seed, round, k)
        out = torch.full((steps, b), -1, dtype=torch.int64)
        for epoch in range(math.ceil(steps / per_epoch)):
            order = rows[torch.randperm(n, generator=gen)]
            for j in range(min(per_epoch, steps - epoch * per_epoch)):
                chunk = order[j * b : (j + 1) * b]
                out[epoch * per_epoch + j, : len(chunk)] = chunk
        return out

    def train_round(
        self,
        strategy: Strategy,
        task: ClientTask,
        clients: Sequence[int],
        *,
        states: Mapping[int, Mapping[str, Params]] | None = None,
        max_steps: Mapping[int, int] | None = None,
    ) -> Iterator[ClientUpdate]:
        """Yield each client's update; clients run in chunks of similar length."""
        budgets = max_steps or {}
        plans = {int(k): self._batches(int(k), task.round, budgets.get(int(k))) for k in clients}
        ordered = sorted(plans, key=lambda k: (plans[k].shape[0], k))
        for start in range(0, len(ordered), self._chunk):
            chunk = ordered[start : start + self._chunk]
            yield from self._train_chunk(strategy, task, chunk, plans, states or {})

    def _train_chunk(
        self,
        strategy: Strategy,
        task: ClientTask,
        chunk: list[int],
        plans: Mapping[int, torch.Tensor],
        states: Mapping[int, Mapping[str, Params]],
    ) -> Iterator[ClientUpdate]:
        cfg = self.local
        k_count = len(chunk)
        steps = torch.tensor([plans[k].shape[0] for k in chunk])
        width = max(plans[k].shape[1] for k in chunk)
        plan = torch.full((k_count, int(steps.max()), width), -1, dtype=torch.int64)
        for i, k in enumerate(chunk):
            p = plans[k]
            plan[i, : p.shape[0], : p.shape[1]] = p
        params = {
            n: t.detach().unsqueeze(0).repeat(k_count, *[1] * t.dim())
            for n, t in task.params.items()
        }
        buf = {n: torch.zeros_like(t) for n, t in params.items()}
        stacked = replace(task, client_state=_stack_states(chunk, states, task.params))
        loss_sum = torch.zeros(k_count, dtype=torch.float64)
        seen = torch.zeros(k_count, dtype=torch.int64)
        for t in range(int(steps.max())):
            idx = plan[:, t]
            mask = (idx >= 0).to(self.data.x.dtype)
            safe = idx.clamp_min(0)
            x, y = self.data.x[safe], self.data.y[safe]
            grads, loss = self._step(params, x, y, mask)
            active = (t < steps).to(mask.dtype)
            with torch.no_grad():
                correction = strategy.grad_correction(params, stacked)
                for n, w in params.items():
                    g = grads[n]
                    if correction is not None:
                        g = g + correction[n]
                    if cfg.weight_decay:
                        g = g + cfg.weight_decay * w
                    on = active.view(-1, *[1] * (w.dim() - 1))
                    buf[n] = torch.where(on > 0, cfg.momentum * buf[n] + g, buf[n])
                    params[n] = w - cfg.lr * on * buf[n]
                drift = strategy.step_correction(params, stacked)
                if drift is not None:
                    for n, w in params.items():
                        on = active.view(-1, *[1] * (w.dim() - 1))
                        params[n] = w - cfg.lr * on * drift[n]
            count = mask.sum(dim=1)
            loss_sum += (loss.detach() * count * active).to(torch.float64)
            seen += (count * active).to(torch.int64)
        for i, k in enumerate(chunk):
            update = ClientUpdate(
                client_id=k,
                params={n: w[i].clone() for n, w in params.items()},
                num_samples=len(self.data.indices[k]),
                num_steps=int(steps[i]),
                metrics={
                    "train_loss": float(loss_sum[i]) / max(int(seen[i]), 1),
                    "examples": int(seen[i]),
                },
            )
            yield strategy.finish_client(replace(task, client_state=states.get(k)), update, cfg)


def _stack_states(
    chunk: Sequence[int], states: Mapping[int, Mapping[str, Params]], like: Params
) -> dict[str, Params] | None:
    """Per-client state with a client axis (zeros where a client has none), or ``None``
    when no client of the chunk has state."""
    present = [states[k] for k in chunk if k in states]
    if not present:
        return None
    out: dict[str, Params] = {}
    for key, template in present[0].items():
        out[key] = {
            n: torch.stack(
                [states[k][key][n] if k in states else torch.zeros_like(ref) for k in chunk]
            )
            for n, ref in template.items()
        }
    return out
