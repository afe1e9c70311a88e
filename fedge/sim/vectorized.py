"""The vectorized engine: many clients' local SGD at once.

Each chunk of clients trains as one stacked model (:mod:`fedge.models.stacked`): parameters
get a leading client axis, one forward/backward pass gives every client's minibatch
gradient, and the SGD update (momentum, weight decay, the strategy's corrections) is
applied to the whole stack with foreach kernels. Clients of unequal size are handled by
masking (a padded batch row has weight zero in its client's mean loss) and by sorting a
chunk by step count, so that the clients still training are always a suffix of the stack
and finished ones cost nothing. With several worker threads (default: torch's thread
count) a chunk is dealt to the threads by estimated time (:func:`_deal`), each training
its share as one stack with a single intra-op thread: stacks of a few small clients keep
two cores busier this way than inside each op.

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import torch
import torch.nn.functional as F

from fedge.errors import ConfigError
from fedge.fl.local import LocalTraining, client_generator
from fedge.fl.strategy.base import Strategy
from fedge.fl.types import ClientTask, ClientUpdate, Params
from fedge.models.spec import ModelSpec, build_model
from fedge.models.stacked import stacked_forward
from fedge.sim.engine import ClientData

__all__ = ["VectorizedEngine", "check_vectorizable"]

#: Default memory budget for one chunk of stacked clients.
DEFAULT_MAX_MEMORY = 2 * 2**30


def check_vectorizable(kind: str) -> None:
    """Raise :class:`~fedge.errors.ConfigError` unless the engine can train models of
    task ``kind``: it stacks classifiers (its loss is a per-client cross-entropy)."""
    if kind != "classification":
        raise ConfigError(
            f"the vectorized engine trains classifiers only, not a {kind} model: set "
            'engine = "sequential" (or "ray")'
        )


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
        workers: int | None = None,
    ):
        check_vectorizable("classification" if local.task is None else local.task.kind)
        self.data = data
        self.local = local
        self.seed = seed
        self.spec = spec
        self._chunk = self._chunk_size(spec, max_memory)
        self.workers = max(1, workers if workers is not None else torch.get_num_threads())
        self._pool = ThreadPoolExecutor(self.workers) if self.workers > 1 else None

    def _chunk_size(self, spec: ModelSpec, max_memory: int) -> int:
        params = sum(p.numel() for p in build_model(spec).parameters())
        batch = self.local.batch_size or int(self.data.sizes().max())
        activations = sum(math.prod(s) for s in spec.output_shapes()) * batch
        inputs = math.prod(spec.input_shape) * batch
        # weights, momentum, gradient, update temporaries; activations kept for backward
        per_client = 4 * (6 * params + 3 * activations + inputs)
        return max(1, int(max_memory // per_client))

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
        states = states or {}
        for start in range(0, len(ordered), self._chunk):
            chunk = ordered[start : start + self._chunk]
            if self._pool is None or len(chunk) < 2 * self.workers:
                yield from self._train_chunk(strategy, task, chunk, plans, states)
                continue
            # Each worker thread trains its share of the chunk as one stack with one
            # intra-op thread: small stacked ops parallelize better across threads than
            # inside one op. Clients are independent, so the split changes no result;
            # updates come in chunk order.
            parts = _deal(chunk, {k: plans[k].shape[0] for k in chunk}, self.workers)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                done = self._pool.map(
                    lambda part: list(self._train_chunk(strategy, task, part, plans, states)),
                    parts,
                )
                updates = {u.client: u for part in done for u in part}
            finally:
                torch.set_num_threads(threads)
            for k in chunk:
                yield updates[k]

    def close(self) -> None:
        """Stop the worker threads."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _train_chunk(
        self,
        strategy: Strategy,
        task: ClientTask,
        chunk: list[int],
        plans: Mapping[int, torch.Tensor],
        states: Mapping[int, Mapping[str, Params]],
    ) -> Iterator[ClientUpdate]:
        cfg = self.local
        count = len(chunk)
        steps = torch.tensor([plans[k].shape[0] for k in chunk])  # ascending
        width = max(plans[k].shape[1] for k in chunk)
        plan = torch.full((count, int(steps.max()), width), -1, dtype=torch.int64)
        for i, k in enumerate(chunk):
            plan[i, : plans[k].shape[0], : plans[k].shape[1]] = plans[k]
        names = list(task.params)
        weights = [task.params[n].detach().unsqueeze(0).repeat_interleave(count, 0) for n in names]
        bufs = [torch.zeros_like(w) for w in weights]
        own = _stack_states(chunk, states, task.params)
        loss_sum = torch.zeros(count, dtype=torch.float64)
        seen = torch.zeros(count, dtype=torch.int64)
        for t in range(int(steps.max())):
            # clients are sorted by step count: the ones still training are a suffix
            a = int((steps <= t).sum())
            idx = plan[a:, t]
            mask = (idx >= 0).to(self.data.x.dtype)
            safe = idx.clamp_min(0)
            live = [w[a:].detach().requires_grad_() for w in weights]
            logits = stacked_forward(
                self.spec, dict(zip(names, live, strict=True)), self.data.x[safe]
            )
            losses = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                self.data.y[safe].reshape(-1),
                reduction="none",
            ).view_as(mask)
            n_valid = mask.sum(dim=1)
            per_client = (losses * mask).sum(dim=1) / n_valid.clamp_min(1.0)
            grads = list(torch.autograd.grad(per_client.sum(), live))
            with torch.no_grad():
                w_live = [w[a:] for w in weights]
                b_live = [b[a:] for b in bufs]
                sliced = _slice_task(task, own, a)
                correction = strategy.grad_correction(dict(zip(names, w_live, strict=True)), sliced)
                if correction is not None:
                    torch._foreach_add_(grads, [correction[n] for n in names])
                if cfg.weight_decay:
                    torch._foreach_add_(grads, w_live, alpha=cfg.weight_decay)
                torch._foreach_mul_(b_live, cfg.momentum)
                torch._foreach_add_(b_live, grads)
                torch._foreach_add_(w_live, b_live, alpha=-cfg.lr)
                drift = strategy.step_correction(dict(zip(names, w_live, strict=True)), sliced)
                if drift is not None:
                    torch._foreach_add_(w_live, [drift[n] for n in names], alpha=-cfg.lr)
            loss_sum[a:] += (per_client.detach() * n_valid).to(torch.float64)
            seen[a:] += n_valid.to(torch.int64)
        for i, k in enumerate(chunk):
            update = ClientUpdate(
                client=k,
                params={n: w[i].clone() for n, w in zip(names, weights, strict=True)},
                num_samples=len(self.data.indices[k]),
                num_steps=int(steps[i]),
                metrics={
                    "train_loss": float(loss_sum[i]) / max(int(seen[i]), 1),
                    "examples": int(seen[i]),
                },
            )
            yield strategy.finish_client(replace(task, client_state=states.get(k)), update, cfg)


#: A stacked step costs a fixed part plus a part per client still in the stack; on a CPU
#: the fixed part is about three clients' worth (LeNet, batch 32: 2.4 ms + 0.85 ms/client).
_STEP_OVERHEAD_CLIENTS = 3


def _deal(chunk: Sequence[int], steps: Mapping[int, int], workers: int) -> list[list[int]]:
    """Split ``chunk`` among ``workers`` threads so that their times come out even.

    A thread's time is estimated as ``overhead * (its longest client's steps) + (its
    clients' total steps)``; clients are dealt longest first, each to the thread with the
    smallest estimate so far (LPT scheduling). Each share is sorted by step count, as
    :meth:`VectorizedEngine._train_chunk` requires.
    """
    parts: list[list[int]] = [[] for _ in range(workers)]
    longest, total = [0] * workers, [0] * workers
    for k in sorted(chunk, key=lambda k: (-steps[k], k)):
        i = min(range(workers), key=lambda i: _STEP_OVERHEAD_CLIENTS * longest[i] + total[i])
        parts[i].append(k)
        longest[i] = max(longest[i], steps[k])
        total[i] += steps[k]
    return [sorted(p, key=lambda k: (steps[k], k)) for p in parts if p]


def _slice_task(task: ClientTask, own: dict[str, Params] | None, start: int) -> ClientTask:
    """``task`` with the stacked client state of the clients from ``start`` on."""
    if own is None:
        return task
    return replace(
        task, client_state={key: {n: v[start:] for n, v in p.items()} for key, p in own.items()}
    )


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
