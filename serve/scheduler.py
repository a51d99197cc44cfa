"""Which segments the model transcribes next: every running job gets its share, waiting clients first.

Every running job feeds its segments into one :class:`FairScheduler` (a *flow* per job); whoever owns the
model takes batches from it: the local batch runner, or, in the scale-out API role, the dispatcher that
hands tasks to the workers. The policy, segment by segment:

- **Fair share.** Jobs share the model by start-time fair queuing: each segment gets a virtual start tag,
  ``max(the clock, the end of its job's previous segment)``, and the lowest tags go first (ties in arrival
  order). A job that arrives while hour-long files run starts at the clock, so its first segment is in one
  of the next batches; long jobs keep advancing side by side. Nobody builds up credit by waiting.
- **Waiting clients first.** Segments of jobs whose client waits on an open connection (synchronous
  requests) go before those of async jobs, but while async segments wait, at least one slot in
  ``ASYNC_SLOT_EVERY`` goes to them: async jobs progress at a fifth of the model or more, whatever the
  synchronous traffic.
- **One batch, one setting.** A batch holds segments with equal generation options only.

The scheduler holds only what jobs have submitted and not yet handed out; each job bounds that itself
(:meth:`FairScheduler.lookahead`), so memory stays flat however long the files are.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .generation import GenerationOptions, SegmentResult

log = logging.getLogger(__name__)

# While async segments wait, at most ASYNC_SLOT_EVERY - 1 synchronous segments in a row go before one of them.
ASYNC_SLOT_EVERY = 5


@dataclass(eq=False)
class SegmentRequest:
    """One segment waiting for the model; its future gets the segment's result (raw text, scores, words)."""

    flow: Flow
    samples: np.ndarray | None
    options: GenerationOptions
    start: float = 0.0  # the segment's place in its file (for messages)
    end: float = 0.0
    tag: float = 0.0
    seq: int = 0
    meta: dict[str, Any] = field(default_factory=dict)  # what a destination needs to carry it (scale-out)
    future: Future[SegmentResult] = field(default_factory=Future)


@dataclass(eq=False)
class Flow:
    """One job's segments, in file order."""

    key: Hashable
    waiting_client: bool
    waiting: deque[SegmentRequest] = field(default_factory=deque)
    finish_tag: float = 0.0  # where the job's next segment may start in virtual time
    served: int = 0
    closed: bool = False


class FairScheduler:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._flows: list[Flow] = []  # open flows, in the order they were opened
        self._clock = {True: 0.0, False: 0.0}  # virtual time of each class (waiting clients, async)
        self._sync_run = 0  # synchronous slots handed out in a row while async segments waited
        self._seq = itertools.count()
        self._batch_listener: Callable[[list[Hashable]], None] | None = None

    # -- jobs ------------------------------------------------------------------------------------------

    def open_flow(self, key: Hashable, *, waiting_client: bool = False) -> Flow:
        flow = Flow(key, waiting_client)
        with self._cond:
            self._flows.append(flow)
        return flow

    def close_flow(self, flow: Flow) -> None:
        """The job is done (finished, failed or cancelled): drop and cancel what it still has waiting."""
        with self._cond:
            flow.closed = True
            leftover = list(flow.waiting)
            flow.waiting.clear()
            if flow in self._flows:
                self._flows.remove(flow)
        for request in leftover:
            request.future.cancel()

    def submit(self, flow: Flow, samples: np.ndarray, options: GenerationOptions, *, start: float = 0.0,
               end: float = 0.0, **meta: Any) -> SegmentRequest:
        with self._cond:
            if flow.closed:
                raise RuntimeError("submit on a closed flow")
            tag = max(self._clock[flow.waiting_client], flow.finish_tag)
            flow.finish_tag = tag + 1.0
            request = SegmentRequest(flow, samples, options, start, end, tag, next(self._seq), meta)
            flow.waiting.append(request)
            self._cond.notify_all()
        return request

    def lookahead(self, capacity: int) -> int:
        """How many segments a job may have outstanding (waiting or being transcribed), so that batches of
        ``capacity`` stay full while memory stays flat: its fair share of two batches, at least 2."""
        with self._cond:
            jobs = max(1, len(self._flows))
        return max(2, 2 * math.ceil(max(1, capacity) / jobs))

    # -- the model's side --------------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        with self._cond:
            return sum(len(f.waiting) for f in self._flows)

    @property
    def jobs(self) -> int:
        with self._cond:
            return len(self._flows)

    def wake(self) -> None:
        """Make every :meth:`next_batch` waiting now look at its ``stop`` condition again."""
        with self._cond:
            self._cond.notify_all()

    def on_batch(self, listener: Callable[[list[Hashable]], None]) -> None:
        """Have ``listener`` told the jobs of each batch just before the model runs it (the job queue counts
        them, should the process die during that batch)."""
        self._batch_listener = listener

    def batch_starting(self, batch: list[SegmentRequest]) -> None:
        """Called by the batch runner before it runs ``batch``."""
        if self._batch_listener is not None:
            try:
                self._batch_listener(list(dict.fromkeys(request.flow.key for request in batch)))
            except Exception:  # bookkeeping must never hold up the model
                log.exception("the batch listener failed")

    def next_batch(self, max_size: int, *, gather_seconds: float = 0.0, timeout: float | None = None,
                   stop: Callable[[], bool] | None = None) -> list[SegmentRequest]:
        """The next batch of at most ``max_size`` segments (each marked running), waiting for one to arrive
        (up to ``timeout``; None = until one does, or until ``stop()`` holds after a :meth:`wake`). Once one
        is there, waits up to ``gather_seconds`` for the batch to fill. Empty on timeout or stop."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def stopped() -> bool:
            return stop is not None and stop()

        with self._cond:
            while not self._any_waiting():
                left = None if deadline is None else deadline - time.monotonic()
                if stopped() or (left is not None and left <= 0):
                    return []
                self._cond.wait(left)
            if gather_seconds > 0:
                gathered = time.monotonic() + gather_seconds
                while self._waiting_count() < max_size and (left := gathered - time.monotonic()) > 0 \
                        and not stopped():
                    self._cond.wait(left)
            batch: list[SegmentRequest] = []
            while len(batch) < max_size:
                request = self._pick(batch[0].options if batch else None)
                if request is None:
                    break
                batch.append(request)
            return batch

    def _any_waiting(self) -> bool:
        return any(f.waiting for f in self._flows)

    def _waiting_count(self) -> int:
        return sum(len(f.waiting) for f in self._flows)

    def _pick(self, options: GenerationOptions | None) -> SegmentRequest | None:
        """Take the next segment by the policy above (among those with ``options``, if given)."""
        while True:
            heads = [f for f in self._flows if f.waiting and (options is None or f.waiting[0].options == options)]
            if not heads:
                return None
            sync = [f for f in heads if f.waiting_client]
            async_ = [f for f in heads if not f.waiting_client]
            if sync and async_:
                waiting_client = self._sync_run < ASYNC_SLOT_EVERY - 1
                self._sync_run = self._sync_run + 1 if waiting_client else 0
            else:
                waiting_client = bool(sync)
                self._sync_run = 0
            flow = min(sync if waiting_client else async_, key=lambda f: (f.waiting[0].tag, f.waiting[0].seq))
            request = flow.waiting.popleft()
            if not request.future.set_running_or_notify_cancel():
                continue  # its job gave up on it
            self._clock[waiting_client] = max(self._clock[waiting_client], request.tag)
            flow.served += 1
            return request
