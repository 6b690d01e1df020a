"""Dynamic batching: requests that arrive within `max_wait_ms` of the first waiting one (up to `max_items`
items) are predicted in one call, in a worker thread so the event loop keeps accepting requests. Every
route's requests (jaxft's, HF / TEI's, the Open Inference Protocol's, /redact) share this one batcher.

The predictor pads each call to its fixed shapes (batch sizes x length buckets), so batching changes how
many rows share a compiled program, never which programs exist.

`stop()` first drains: requests already queued or held still run and get their answers (at most
`drain_timeout_s`), then the worker stops. `call(fn)` runs other work that touches the tokenizer (the
/tokenize route) on the same single worker thread, so it never runs concurrently with a prediction.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable


@dataclasses.dataclass
class _Pending:
    items: list
    future: asyncio.Future


class DynamicBatcher:
    def __init__(self, predict: Callable[[list], list], *, max_items: int = 32, max_wait_ms: float = 5.0,
                 on_batch: Callable[[int, int], None] | None = None):
        self.predict = predict
        self.max_items = max_items
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch  # (items, requests) of every model call
        self._queue: asyncio.Queue | None = None
        self._held: _Pending | None = None
        self._outstanding = 0  # submitted requests not answered yet
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxft-predict")

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    def idle(self) -> bool:
        return self._outstanding == 0

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Finish what is queued (up to drain_timeout_s), then stop the worker."""
        deadline = time.monotonic() + drain_timeout_s
        while self._task and not self._task.done() and not self.idle() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def call(self, fn: Callable, *args):
        """fn(*args) on the prediction thread, between batches."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def submit(self, items: list) -> list:
        """Results for `items`, in order, once the batch they joined has run."""
        future = asyncio.get_running_loop().create_future()
        self._outstanding += 1
        try:
            await self._queue.put(_Pending(list(items), future))
            return await future
        finally:
            self._outstanding -= 1

    async def _next(self, timeout: float | None) -> _Pending | None:
        if self._held is not None:
            pending, self._held = self._held, None
            return pending
        if timeout is None:
            return await self._queue.get()
        if timeout <= 0:
            return self._queue.get_nowait() if not self._queue.empty() else None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def _collect(self) -> list[_Pending]:
        batch = [await self._next(None)]
        count = len(batch[0].items)
        deadline = time.monotonic() + self.max_wait
        while count < self.max_items:
            pending = await self._next(deadline - time.monotonic())
            if pending is None:
                break
            if count + len(pending.items) > self.max_items:
                self._held = pending  # first of the next batch
                break
            batch.append(pending)
            count += len(pending.items)
        return batch

    async def _loop(self) -> None:
        while True:
            batch = await self._collect()
            batch = [p for p in batch if not p.future.done()]  # clients that gave up
            if not batch:
                continue
            try:
                await self._run(batch)
            except Exception as err:  # noqa: BLE001 - never let the loop die: every later request would hang
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(err)

    async def _run(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        items = [item for pending in batch for item in pending.items]
        try:
            results = await loop.run_in_executor(self._executor, self.predict, items)
        except Exception as err:  # noqa: BLE001
            if len(batch) == 1:
                if not batch[0].future.done():
                    batch[0].future.set_exception(err)
                return
            # one request's items broke the call: run each request alone (same compiled shapes), so only the
            # requests that fail on their own get the error, not the others that happened to share the batch
            for pending in batch:
                if not pending.future.done():
                    await self._run([pending])
            return
        if len(results) != len(items):
            raise RuntimeError(f"the predictor returned {len(results)} results for {len(items)} items")
        if self.on_batch:
            self.on_batch(len(items), len(batch))
        start = 0
        for pending in batch:
            if not pending.future.done():
                pending.future.set_result(results[start:start + len(pending.items)])
            start += len(pending.items)
