"""The fair scheduler's policy, step by step: fair shares, newcomers served at once, waiting clients first
without starving async jobs, batches of one setting, cancellation. Deterministic: no threads, no model."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from serve.generation import GenerationOptions
from serve.scheduler import ASYNC_SLOT_EVERY, FairScheduler, Flow

GREEDY = GenerationOptions(temperature=0.0)
SAMPLED = GenerationOptions(temperature=0.7)


def fill(scheduler: FairScheduler, flow: Flow, count: int, options: GenerationOptions = GREEDY) -> None:
    for _ in range(count):
        scheduler.submit(flow, np.zeros(1), options)


def order(scheduler: FairScheduler, batches: int, size: int = 1) -> list[list[str]]:
    """The jobs of the next ``batches`` batches, as the model would take them."""
    return [[r.flow.key for r in scheduler.next_batch(size, timeout=0)] for _ in range(batches)]


def flat(batches: list[list[str]]) -> str:
    return "".join(key for batch in batches for key in batch)


def test_running_jobs_take_turns_segment_by_segment() -> None:
    scheduler = FairScheduler()
    for key in "ABC":
        fill(scheduler, scheduler.open_flow(key), 3)
    assert flat(order(scheduler, 9)) == "ABCABCABC"
    assert order(scheduler, 1) == [[]]  # nothing left


def test_a_job_arriving_behind_long_files_is_served_next() -> None:
    scheduler = FairScheduler()
    long_a, long_b = scheduler.open_flow("A"), scheduler.open_flow("B")
    fill(scheduler, long_a, 50)
    fill(scheduler, long_b, 50)
    assert flat(order(scheduler, 20)) == "AB" * 10
    fill(scheduler, scheduler.open_flow("S"), 1)  # a one-segment job
    assert flat(order(scheduler, 1)) == "S"
    assert flat(order(scheduler, 4)) == "ABAB"  # the long files go on as before


def test_waiting_has_no_credit_a_job_that_ran_alone_keeps_its_share_when_another_arrives() -> None:
    scheduler = FairScheduler()
    alone = scheduler.open_flow("A")
    fill(scheduler, alone, 10)
    assert flat(order(scheduler, 10)) == "A" * 10
    fill(scheduler, alone, 5)
    fill(scheduler, scheduler.open_flow("B"), 5)  # B does not get the ten turns A had alone
    assert flat(order(scheduler, 10)) == "BA" * 5  # B starts at the clock, then they alternate


def test_waiting_clients_go_first_but_async_jobs_keep_one_slot_in_five() -> None:
    scheduler = FairScheduler()
    fill(scheduler, scheduler.open_flow("a"), 20)
    fill(scheduler, scheduler.open_flow("S", waiting_client=True), 20)
    sequence = flat(order(scheduler, 20))
    assert sequence == ("S" * (ASYNC_SLOT_EVERY - 1) + "a") * 4
    # Once no client waits, the async job has the model to itself.
    fill(scheduler, scheduler.open_flow("b"), 2)
    assert flat(order(scheduler, 8)).count("S") == 4


def test_a_stream_of_synchronous_requests_never_starves_an_async_job() -> None:
    scheduler = FairScheduler()
    fill(scheduler, scheduler.open_flow("a"), 100)
    served = ""
    for n in range(40):  # a new one-segment synchronous request before each batch
        fill(scheduler, scheduler.open_flow(f"s{n}", waiting_client=True), 1)
        served += "a" if order(scheduler, 1)[0][0] == "a" else "s"
    assert served.count("a") >= 40 // ASYNC_SLOT_EVERY
    assert "s" * ASYNC_SLOT_EVERY not in served


def test_a_batch_takes_every_jobs_turn_and_fills_up_from_the_others() -> None:
    scheduler = FairScheduler()
    fill(scheduler, scheduler.open_flow("A"), 10)
    fill(scheduler, scheduler.open_flow("B"), 1)
    fill(scheduler, scheduler.open_flow("C"), 2)
    assert order(scheduler, 2, size=4) == [["A", "B", "C", "A"], ["C", "A", "A", "A"]]


def test_a_batch_holds_one_generation_setting() -> None:
    scheduler = FairScheduler()
    fill(scheduler, scheduler.open_flow("greedy"), 3)
    fill(scheduler, scheduler.open_flow("sampled"), 3, SAMPLED)
    fill(scheduler, scheduler.open_flow("greedy too"), 1)
    first, second = (scheduler.next_batch(8, timeout=0) for _ in range(2))
    assert {r.options for r in first} == {GREEDY} and len(first) == 4
    assert {r.options for r in second} == {SAMPLED} and len(second) == 3


def test_a_closed_job_leaves_nothing_behind_and_its_waiting_segments_are_cancelled() -> None:
    scheduler = FairScheduler()
    cancelled = scheduler.open_flow("x")
    fill(scheduler, cancelled, 2)
    kept = scheduler.open_flow("k")
    fill(scheduler, kept, 2)
    taken = scheduler.next_batch(1, timeout=0)[0]  # running: its result still arrives
    waiting = list(cancelled.waiting)
    scheduler.close_flow(cancelled)
    assert all(r.future.cancelled() for r in waiting) and not taken.future.cancelled()
    assert flat(order(scheduler, 3)) == "kk"
    assert scheduler.jobs == 1 and scheduler.waiting == 0
    with pytest.raises(RuntimeError):
        fill(scheduler, cancelled, 1)


def test_a_segment_its_job_gave_up_on_is_skipped() -> None:
    scheduler = FairScheduler()
    flow = scheduler.open_flow("A")
    first = scheduler.submit(flow, np.zeros(1), GREEDY)
    fill(scheduler, flow, 1)
    assert first.future.cancel()
    batch = scheduler.next_batch(2, timeout=0)
    assert len(batch) == 1 and batch[0] is not first and batch[0].future.running()


def test_lookahead_is_a_fair_share_of_two_batches() -> None:
    scheduler = FairScheduler()
    scheduler.open_flow("A")
    assert scheduler.lookahead(8) == 16  # alone: the batch running and the next one ready
    for key in "BCD":
        scheduler.open_flow(key)
    assert scheduler.lookahead(8) == 4
    assert scheduler.lookahead(1) == 2  # at least one running and one ready


def test_next_batch_waits_for_work_gathers_and_wakes() -> None:
    scheduler = FairScheduler()
    flow = scheduler.open_flow("A")
    started = time.monotonic()
    assert scheduler.next_batch(1, timeout=0.05) == [] and time.monotonic() - started >= 0.05
    closing = threading.Event()
    threading.Timer(0.05, lambda: (closing.set(), scheduler.wake())).start()
    assert scheduler.next_batch(1, stop=closing.is_set) == []  # woken: its runner is closing
    assert scheduler.next_batch(1, stop=closing.is_set) == []  # closed before it waits: no wake-up is lost
    threading.Timer(0.05, fill, args=(scheduler, flow, 1)).start()
    assert len(scheduler.next_batch(1, timeout=5)) == 1
    fill(scheduler, flow, 1)
    threading.Timer(0.05, fill, args=(scheduler, flow, 1)).start()
    assert len(scheduler.next_batch(2, gather_seconds=2)) == 2  # the second arrived while gathering
