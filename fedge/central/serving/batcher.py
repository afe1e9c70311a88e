"""Dynamic micro-batching: concurrent requests share one onnxruntime call.

Each request puts its rows on an asyncio queue and waits on a future. One worker task per
served model version takes the first waiting request, then keeps taking more for at most
``max_delay`` seconds or until ``max_rows`` rows are gathered, concatenates them, runs the
model once in a thread (so the event loop keeps accepting requests meanwhile) and hands each
request its own slice of the output. While one batch runs, the next one gathers, so under
load batches grow by themselves.

Waiting only pays when other requests are on their way: given ``in_flight`` (the number of
requests the server is handling, parsing included), a batch stops waiting as soon as it
holds all of them. One client at a time therefore never waits; 32 concurrent clients wait
at most ``max_delay`` for the stragglers among them.

A request is never split across batches; one with more rows than ``max_rows`` runs alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

__all__ = ["BatchResult", "BatchStats", "MicroBatcher"]


@dataclass
class BatchStats:
    """Counters of one batcher: requests and rows served, onnxruntime calls (batches), and
    the most rows one call took."""

    requests: int = 0
    rows: int = 0
    batches: int = 0
    max_batch_rows: int = 0


@dataclass(frozen=True)
class BatchResult:
    """A request's slice of a batch's output, and how many rows that batch had in all."""

    output: np.ndarray
    batch_rows: int


_Item = tuple[np.ndarray, asyncio.Future]


class MicroBatcher:
    """Gather concurrent calls of ``run`` into batches.

    Parameters
    ----------
    run:
        The batched function, ``(n, ...) float32 -> (n, ...)``; it runs in ``executor``.
    executor:
        Where ``run`` runs (a thread pool; one thread serializes calls of all models).
    max_rows:
        Rows that one batch gathers at most (default 64).
    max_delay:
        Seconds the first request of a batch waits for company (default 0.002).
    in_flight:
        Requests the server is handling right now; the batch stops waiting once it holds
        that many. ``None`` (default): always wait ``max_delay``.
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        executor: Executor,
        *,
        max_rows: int = 64,
        max_delay: float = 0.002,
        in_flight: Callable[[], int] | None = None,
    ):
        self._run = run
        self._in_flight = in_flight
        self._executor = executor
        self.max_rows = max_rows
        self.max_delay = max_delay
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._held: _Item | None = None
        self._closed = False
        self._task = asyncio.get_running_loop().create_task(self._work())

    async def submit(self, x: np.ndarray) -> BatchResult:
        """Run ``x`` (a batch of rows) in the next batch and return its rows of the output."""
        if self._closed:
            raise RuntimeError("this batcher is closed")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((x, future))
        return await future

    def close(self) -> None:
        """Stop taking requests; those already queued are still answered."""
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(None)

    async def wait_closed(self) -> None:
        """Wait until the worker has answered every queued request and stopped."""
        await asyncio.shield(self._task)

    async def _gather(self, first: _Item) -> tuple[list[_Item], bool]:
        """``first`` and the requests that join it; whether the closing mark was met."""
        loop = asyncio.get_running_loop()
        batch, rows = [first], len(first[0])
        deadline = loop.time() + self.max_delay
        while rows < self.max_rows:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                if self._in_flight is not None and len(batch) >= self._in_flight():
                    break
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if item is None:
                return batch, True
            if rows + len(item[0]) > self.max_rows:
                self._held = item
                break
            batch.append(item)
            rows += len(item[0])
        return batch, False

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        closing = False
        while True:
            if self._held is not None:
                first, self._held = self._held, None
            elif closing:
                return
            else:
                got = await self._queue.get()
                if got is None:
                    return
                first = got
            batch, closing = await self._gather(first)
            x = batch[0][0] if len(batch) == 1 else np.concatenate([b[0] for b in batch])
            try:
                y = await loop.run_in_executor(self._executor, self._run, x)
            except Exception as exc:  # hand the failure to every waiting request
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.stats.requests += len(batch)
            self.stats.rows += len(x)
            self.stats.batches += 1
            self.stats.max_batch_rows = max(self.stats.max_batch_rows, len(x))
            start = 0
            for rows, future in batch:
                stop = start + len(rows)
                if not future.done():  # a client that went away cancelled its future
                    future.set_result(BatchResult(y[start:stop], len(x)))
                start = stop
