"""Batched generation: segments from every running job go through the model together.

:class:`BatchingRecognizer` owns the engine and is the only thread that calls it. Job threads submit
segments and get futures; the batcher takes what is waiting (up to ``batch_size``, with the same generation
settings) and runs it as one ``generate`` call, each sequence stopping at its own end token.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Protocol

import numpy as np

from .engine import EngineOutOfMemory, GenerationOptions

log = logging.getLogger(__name__)

# How long the batcher waits for more segments once one has arrived: long enough for a job's look-ahead
# and other jobs' segments to land in the same batch, short enough to be invisible next to a generate call.
GATHER_SECONDS = 0.005


class BatchEngine(Protocol):
    def transcribe_batch(self, batch: list[np.ndarray], options: GenerationOptions) -> list[str]: ...
    def close(self) -> None: ...


class _Request:
    __slots__ = ("future", "options", "samples")

    def __init__(self, samples: np.ndarray, options: GenerationOptions) -> None:
        self.samples = samples
        self.options = options
        self.future: Future[str] = Future()


class BatchingRecognizer:
    def __init__(self, engine: BatchEngine, batch_size: int, gather_seconds: float = GATHER_SECONDS) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.engine = engine
        self.batch_size = batch_size
        self.gather_seconds = gather_seconds
        self._waiting: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.batches_run = 0
        self.largest_batch = 0
        self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self._thread.start()

    def submit(self, samples: np.ndarray, options: GenerationOptions) -> Future[str]:
        request = _Request(samples, options)
        with self._cond:
            if self._closed:
                raise RuntimeError("the model is being unloaded")
            self._waiting.append(request)
            self._cond.notify()
        return request.future

    def transcribe(self, samples: np.ndarray, options: GenerationOptions) -> str:
        return self.submit(samples, options).result()

    def close(self) -> None:
        """Stop taking work, fail what is still waiting, stop the thread, then close the engine."""
        with self._cond:
            self._closed = True
            leftover = list(self._waiting)
            self._waiting.clear()
            self._cond.notify_all()
        for request in leftover:
            request.future.set_exception(RuntimeError("the model was unloaded"))
        self._thread.join()
        self.engine.close()

    def _next_batch(self) -> list[_Request] | None:
        with self._cond:
            while not self._waiting and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            deadline = time.monotonic() + self.gather_seconds
            while len(self._waiting) < self.batch_size and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            options = self._waiting[0].options
            batch = [r for r in self._waiting if r.options == options][: self.batch_size]
            for request in batch:
                self._waiting.remove(request)
            return batch

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            self.batches_run += 1
            self.largest_batch = max(self.largest_batch, len(batch))
            self._run(batch)

    def _run(self, batch: list[_Request]) -> None:
        try:
            texts = self.engine.transcribe_batch([r.samples for r in batch], batch[0].options)
        except EngineOutOfMemory as exc:
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            log.warning("out of memory on a batch of %d: running its segments one by one", len(batch))
            for request in batch:
                self._run([request])
            return
        except Exception as exc:  # the callers' jobs fail; the batcher goes on
            for request in batch:
                request.future.set_exception(exc)
            return
        for request, text in zip(batch, texts, strict=True):
            request.future.set_result(text)
