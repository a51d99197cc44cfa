"""The one thread that calls the model: fair batches from the scheduler, through the engine, back to each job.

:class:`BatchRunner` owns a loaded engine. It takes what the :class:`~serve.scheduler.FairScheduler` hands
out (up to ``batch_size`` segments with the same generation settings, from every running job) and runs it
as one ``generate`` call, each sequence stopping at its own end token. Out of memory, a batch is run again
one segment at a time, and a segment that does not fit alone is transcribed in two halves.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

import numpy as np

from .generation import EngineOutOfMemory, GenerationOptions
from .scheduler import FairScheduler, SegmentRequest

log = logging.getLogger(__name__)

# How long the runner waits for more segments once one has arrived: long enough for other jobs' segments
# to land in the same batch, short enough to be invisible next to a generate call.
GATHER_SECONDS = 0.005


class BatchEngine(Protocol):
    def transcribe_batch(self, batch: list[np.ndarray], options: GenerationOptions) -> list[str]: ...
    def close(self) -> None: ...


class SegmentOutOfMemory(Exception):
    """A segment did not fit in accelerator memory, even split in two."""

    def __init__(self, start: float, end: float) -> None:
        super().__init__(f"out of memory on the segment at {start:.1f}-{end:.1f} s, even split in two")
        self.start = start
        self.end = end


class BatchRunner:
    def __init__(self, engine: BatchEngine, batch_size: int, scheduler: FairScheduler,
                 gather_seconds: float = GATHER_SECONDS, prepare: Callable[[], None] | None = None) -> None:
        """``prepare`` runs first, on the runner's thread (compiled decode's warm-up: CUDA graphs belong to
        the thread that records them); the runner is returned once it has."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.engine = engine
        self.batch_size = batch_size
        self.scheduler = scheduler
        self.gather_seconds = gather_seconds
        self._closed = False
        self.batches_run = 0
        self.largest_batch = 0
        self._prepare = prepare
        self._prepared = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="batch-runner", daemon=True)
        self._thread.start()
        self._prepared.wait()

    def close(self) -> None:
        """Stop taking work (what waits stays with the scheduler for the next load); the runner's thread
        closes the engine on its way out."""
        self._closed = True
        self.scheduler.wake()  # after the flag: a runner about to wait sees it, one waiting is woken
        self._thread.join()

    def _loop(self) -> None:
        try:
            if self._prepare is not None:
                self._prepare()
        except Exception:
            log.exception("preparing the engine failed: it runs as loaded")
        finally:
            self._prepared.set()
        try:
            self._serve()
        finally:
            self.engine.close()  # on this thread, which owns the engine's per-thread state (CUDA graphs)

    def _serve(self) -> None:
        while not self._closed:
            batch = self.scheduler.next_batch(self.batch_size, gather_seconds=self.gather_seconds,
                                              stop=lambda: self._closed)
            if not batch:
                continue
            self.batches_run += 1
            self.largest_batch = max(self.largest_batch, len(batch))
            self.scheduler.batch_starting(batch)
            try:
                self._run(batch)
            except Exception as exc:  # a bug here must not leave jobs waiting for answers that never come
                log.exception("the batch runner failed a batch")
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(exc)
            del batch  # the segments' audio goes with their requests

    def _run(self, batch: list[SegmentRequest]) -> None:
        texts: list[str] | None = None
        try:
            texts = self.engine.transcribe_batch([r.samples for r in batch], batch[0].options)  # type: ignore[misc]
        except EngineOutOfMemory:
            pass  # retried below, outside this block: the exception's traceback holds the failed attempt's tensors
        except Exception as exc:  # the callers' jobs fail; the runner goes on
            for request in batch:
                request.future.set_exception(exc)
            return
        if texts is not None:
            for request, text in zip(batch, texts, strict=True):
                request.future.set_result([text])
        elif len(batch) == 1:
            self._run_in_halves(batch[0])
        else:
            log.warning("out of memory on a batch of %d: running its segments one by one", len(batch))
            for request in batch:
                self._run([request])

    def _run_in_halves(self, request: SegmentRequest) -> None:
        # Alone it did not fit: the smaller input is half a segment.
        log.warning("out of memory at %.1f-%.1f s: retrying in two halves", request.start, request.end)
        try:
            parts = [self.engine.transcribe_batch([half], request.options)[0]
                     for half in np.array_split(request.samples, 2)]  # type: ignore[arg-type]
        except EngineOutOfMemory:
            request.future.set_exception(SegmentOutOfMemory(request.start, request.end))
            return
        except Exception as exc:
            request.future.set_exception(exc)
            return
        request.future.set_result(parts)
