"""Dynamic batching: merge concurrent requests for one model into one inference.

Configured like Triton's dynamic batcher, with two knobs: `max_batch_size` (rows per
inference) and `max_queue_delay_us` (how long a batch may wait for more requests). One
batcher per model, one worker coroutine per batcher, running on the event loop:

- a request is a block of rows (one image or several); it is appended to a bounded queue
  (full queue: `Overloaded`, answered 503 + Retry-After) and its caller awaits a future;
- the worker takes queued requests in arrival order until the next one would exceed
  `max_batch_size` (a request larger than that runs alone, never split);
- no waiting when the queue is empty: a lone request runs at once. Only when more than one
  request was queued (concurrent load) does the worker keep yielding to the event loop to
  collect new arrivals, stopping when the batch is full, when an event-loop turn brings
  nothing new, or at `max_queue_delay_us`;
- it runs the model once, slices the outputs back in order and resolves each future with
  exactly its own rows.

Inference runs inline on the event loop: for these small models a thread hand-off costs more
than the inference, and on one core nothing runs in parallel anyway. While a batch runs, new
requests wait in the kernel's socket buffers and form the next batch.
"""
from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from serve.errors import Overloaded, ServeError

# Event-loop turns without a new arrival after which a batch stops waiting for more.
IDLE_TURNS_BEFORE_RUN = 2


@dataclass
class _Request:
    rows: np.ndarray
    future: asyncio.Future
    enqueued: float


@dataclass(frozen=True)
class BatchResult:
    outputs: np.ndarray    # this request's rows of the batch output
    queue_seconds: float   # time between enqueue and the start of its batch
    batch_rows: int        # rows in the batch this request ran in
    infer_seconds: float


class DynamicBatcher:
    def __init__(self, name: str, run_batch: Callable[[np.ndarray], np.ndarray], *,
                 max_batch_size: int, max_queue_delay_us: int, max_queue_size: int,
                 on_batch: Callable[[int, float], None] | None = None):
        self.name = name
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_delay = max_queue_delay_us / 1e6
        self.max_queue_size = max_queue_size
        self.on_batch = on_batch  # metrics hook: (rows, inference seconds)
        self._queue: collections.deque[_Request] = collections.deque()
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self._closing = False

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(
                self._run(), name=f"batcher-{self.name}")

    async def submit(self, rows: np.ndarray) -> BatchResult:
        """Queue one request's rows and wait for its own slice of the batch output."""
        if self._closing:
            raise Overloaded(f"model {self.name!r} is shutting down")
        if len(self._queue) >= self.max_queue_size:
            raise Overloaded(f"model {self.name!r} has {len(self._queue)} requests queued "
                             f"(max_queue_size {self.max_queue_size}); retry shortly")
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(rows, future, time.perf_counter()))
        self._wakeup.set()
        return await future

    async def close(self) -> None:
        """Stop taking requests, finish every queued one, then stop the worker."""
        self._closing = True
        self._wakeup.set()
        if self._worker is not None:
            await self._worker
            self._worker = None

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch, rows = self._take([], 0)
            if len(batch) > 1 and rows < self.max_batch_size and self.max_delay > 0:
                batch, rows = await self._gather_more(batch, rows)
            self._execute(batch, rows)
            # Let the answered requests' handlers run before forming the next batch.
            await asyncio.sleep(0)

    def _take(self, batch: list[_Request], rows: int) -> tuple[list[_Request], int]:
        queue = self._queue
        while queue:
            n = len(queue[0].rows)
            if batch and rows + n > self.max_batch_size:
                break
            batch.append(queue.popleft())
            rows += n
        return batch, rows

    async def _gather_more(self, batch: list[_Request], rows: int):
        deadline = batch[0].enqueued + self.max_delay
        idle_turns = 0
        while rows < self.max_batch_size and idle_turns < IDLE_TURNS_BEFORE_RUN:
            if time.perf_counter() >= deadline:
                break
            await asyncio.sleep(0)
            before = len(batch)
            batch, rows = self._take(batch, rows)
            idle_turns = idle_turns + 1 if len(batch) == before else 0
        return batch, rows

    def _execute(self, batch: list[_Request], rows: int) -> None:
        start = time.perf_counter()
        inputs = batch[0].rows if len(batch) == 1 else np.concatenate([r.rows for r in batch])
        try:
            outputs = self.run_batch(inputs)
        except ServeError as e:
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(e)
            return
        infer = time.perf_counter() - start
        if self.on_batch is not None:
            self.on_batch(rows, infer)
        offset = 0
        for r in batch:
            n = len(r.rows)
            if not r.future.done():  # the client may have gone away (cancelled)
                r.future.set_result(BatchResult(outputs[offset:offset + n], start - r.enqueued,
                                                rows, infer))
            offset += n
