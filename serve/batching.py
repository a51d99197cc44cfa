"""The one thread that calls the model: fair batches from the scheduler, through the engine, back to each job.

:class:`BatchRunner` owns a loaded engine. It takes what the :class:`~serve.scheduler.FairScheduler` hands
out (up to ``batch_size`` segments with the same generation settings, from every running job) and runs it
as one ``generate`` call, each sequence stopping at its own end token; a batch that asks for word times is
then aligned, on the same thread (:mod:`serve.word_alignment`). Out of memory, a batch is run again one
segment at a time, and a segment that does not fit alone is transcribed in two halves.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import numpy as np

from .engines import SpeechEngine
from .generation import EngineOutOfMemory, SegmentResult
from .scheduler import FairScheduler, SegmentRequest
from .word_alignment import AlignerSlot

log = logging.getLogger(__name__)

# How long the runner waits for more segments once one has arrived: long enough for other jobs' segments
# to land in the same batch, short enough to be invisible next to a generate call.
GATHER_SECONDS = 0.005


class SegmentOutOfMemory(Exception):
    """A segment did not fit in accelerator memory, even split in two."""

    def __init__(self, start: float, end: float) -> None:
        super().__init__(f"out of memory on the segment at {start:.1f}-{end:.1f} s, even split in two")
        self.start = start
        self.end = end


class BatchRunner:
    def __init__(self, engine: SpeechEngine, batch_size: int, scheduler: FairScheduler,
                 gather_seconds: float = GATHER_SECONDS, prepare: Callable[[], None] | None = None,
                 aligner: AlignerSlot | None = None) -> None:
        """``prepare`` runs first, on the runner's thread (compiled decode's warm-up: CUDA graphs belong to
        the thread that records them); the runner is returned once it has. ``aligner``: the forced aligner
        for batches that ask for word times, used (and loaded) on this thread only, closed with the engine."""
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
        self.aligner = aligner
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
            if self.aligner is not None:
                self.aligner.close()
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
        outcomes = self._generate(batch)
        language = batch[0].options.align
        if language is not None:
            done = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, SegmentResult)]
            if done:
                aligned = self._align([batch[i].samples for i in done], [outcomes[i] for i in done], language)
                for i, result in zip(done, aligned, strict=True):
                    outcomes[i] = result
        for request, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                request.future.set_exception(outcome)
            else:
                request.future.set_result(outcome)

    def _align(self, clips: list, results: list, language: str) -> list[SegmentResult]:  # type: ignore[type-arg]
        if self.aligner is None:
            return [result.aligned(None, "no word times: this model's process has no aligner") for result in results]
        try:
            return self.aligner.align(clips, results, language)
        except Exception as exc:  # the transcripts are done: a bug in the word times must not cost them
            log.exception("aligning a batch failed")
            return [result.aligned(None, f"no word times: {exc}") for result in results]

    def _generate(self, batch: list[SegmentRequest]) -> list[SegmentResult | BaseException]:
        results: list[SegmentResult] | None = None
        failed: Exception | None = None
        try:
            results = self.engine.generate_batch([r.samples for r in batch], batch[0].options)  # type: ignore[misc]
        except EngineOutOfMemory:
            pass  # retried below, outside this block: the exception's traceback holds the failed attempt's tensors
        except Exception as exc:  # the callers' jobs fail; the runner goes on
            failed = exc
        if results is not None:
            return list(results)
        if failed is not None:
            if len(batch) == 1:
                return [failed]
            # Jobs share batches: a segment the engine refuses (too long for it) must fail only its own job.
            log.warning("a batch of %d failed (%s): running its segments one by one", len(batch), failed)
            del failed
            return [self._generate([request])[0] for request in batch]
        if len(batch) == 1:
            return [self._generate_in_halves(batch[0])]
        log.warning("out of memory on a batch of %d: running its segments one by one", len(batch))
        return [self._generate([request])[0] for request in batch]

    def _generate_in_halves(self, request: SegmentRequest) -> SegmentResult | BaseException:
        # Alone it did not fit: the smaller input is half a segment.
        log.warning("out of memory at %.1f-%.1f s: retrying in two halves", request.start, request.end)
        try:
            halves = [self.engine.generate_batch([half], request.options)[0]
                      for half in np.array_split(request.samples, 2)]  # type: ignore[arg-type]
        except EngineOutOfMemory:
            return SegmentOutOfMemory(request.start, request.end)
        except Exception as exc:
            return exc
        return SegmentResult.joined(halves)
