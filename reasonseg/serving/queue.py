"""The model-call serialiser: one worker thread runs every model call, in arrival order, with a bounded wait list.

A forward pass on one model is never run concurrently with another (the model, its KV caches and the GPU are
shared), so every call that touches the model is submitted here. Work that does not touch the model (decoding
uploads, encoding masks, drawing overlays) stays outside, in the server's thread pool.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    """More calls are waiting than the queue allows; ``retry_after`` is a suggested wait in whole seconds."""

    def __init__(self, waiting: int, retry_after: int):
        super().__init__(f"the model is busy: {waiting} requests are already waiting; retry in {retry_after} s")
        self.waiting, self.retry_after = waiting, retry_after


class ModelQueue:
    """Runs submitted callables one at a time on a single worker thread.

    ``max_waiting`` calls may wait while one runs; a further submit raises :class:`QueueFull` at once instead of
    queueing. Calls are counted from submission to completion, so a caller that gave up still holds its place
    until its call has run (the model work is not interruptible).
    """

    def __init__(self, max_waiting: int):
        self.max_waiting = int(max_waiting)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reasonseg-model")
        self._lock = threading.Lock()
        self._pending = 0  # submitted and not finished: the running call plus the waiting ones
        self._running = False
        self._completed = 0
        self._average = 1.0  # running average of one call's duration, seeds Retry-After

    # ---- statistics
    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    @property
    def waiting(self) -> int:
        with self._lock:
            return self._pending - (1 if self._running else 0)

    def stats(self) -> dict:
        with self._lock:
            return {
                "running": int(self._running),
                "waiting": self._pending - (1 if self._running else 0),
                "max_waiting": self.max_waiting,
                "completed": self._completed,
                "mean_call_s": round(self._average, 4),
            }

    # ---- submission
    def submit(self, fn: Callable[..., T], *args, **kwargs) -> Future:
        """Queue ``fn(*args, **kwargs)``; raises :class:`QueueFull` when ``max_waiting`` calls already wait."""
        with self._lock:
            if self._pending > self.max_waiting:  # one running + max_waiting waiting
                waiting = self._pending - 1
                raise QueueFull(waiting, max(1, math.ceil(self._average * (waiting + 1))))
            self._pending += 1
        try:
            return self._executor.submit(self._run, fn, args, kwargs)
        except BaseException:
            with self._lock:
                self._pending -= 1
            raise

    async def run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """``await`` form of :meth:`submit` for request handlers; works from any event loop."""
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))

    def _run(self, fn, args, kwargs):
        with self._lock:
            self._running = True
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - start
            with self._lock:
                self._running = False
                self._pending -= 1
                self._completed += 1
                self._average = elapsed if self._completed == 1 else 0.8 * self._average + 0.2 * elapsed

    def shutdown(self, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=True)
