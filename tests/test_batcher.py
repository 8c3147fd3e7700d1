"""The dynamic batcher with a real (numpy) batch function: results, budgets, bucketing, deadlines, capacity."""
from __future__ import annotations

import asyncio
import os
import threading
import time

import numpy as np
import pytest

from nlpsuite.shared.batcher import DeadlineExpiredError, DynamicBatcher, QueueFullError


class Recorder:
    """Row i of the output is [sum(ids), len(ids)]; every batch's id lists are recorded."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[list[int]]] = []
        self.alone: list[bool] = []
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, ids: list[list[int]], alone: bool) -> np.ndarray:
        with self.lock:
            self.batches.append(ids)
            self.alone.append(alone)
        if self.delay:
            time.sleep(self.delay)
        return np.array([[sum(seq), len(seq)] for seq in ids], dtype=np.float64)


def run(coro):
    return asyncio.run(coro)


def test_every_text_gets_its_own_row_back_under_concurrency():
    rec = Recorder()

    async def main():
        batcher = DynamicBatcher(rec, max_batch_size=8, max_batch_tokens=10_000, max_delay_s=0.005, workers=2)
        await batcher.start()
        rng = np.random.default_rng(0)
        texts = [list(rng.integers(1, 100, size=int(rng.integers(1, 40)))) for _ in range(200)]
        results = await asyncio.gather(*(batcher.submit([t]) for t in texts))
        await batcher.stop()
        return texts, results

    texts, results = run(main())
    for text, (res,) in zip(texts, results):
        assert res.output.tolist() == [sum(text), len(text)]
    assert all(len(b) <= 8 for b in rec.batches)
    assert max(len(b) for b in rec.batches) > 1, "concurrent texts should share batches"


def test_batches_respect_the_token_budget_and_bucket_by_length():
    rec = Recorder()

    async def main():
        batcher = DynamicBatcher(rec, max_batch_size=64, max_batch_tokens=40, max_delay_s=0.05, workers=1)
        await batcher.start()
        # Interleaved short (2 tokens) and long (10 tokens) texts, all queued before the first batch forms.
        texts = [[1] * (2 if i % 2 else 10) for i in range(16)]
        await batcher.submit(texts)
        await batcher.stop()

    run(main())
    for batch in rec.batches:
        assert max(map(len, batch)) * len(batch) <= 40
    # Bucketing: a batch of short texts holds only short texts (no padding to 10).
    assert any(len(b) > 1 and max(map(len, b)) == 2 for b in rec.batches)
    mixed = [b for b in rec.batches if len({len(s) for s in b}) > 1]
    assert len(mixed) <= 1


def test_a_single_text_over_the_budget_still_runs_alone():
    rec = Recorder()

    async def main():
        batcher = DynamicBatcher(rec, max_batch_size=4, max_batch_tokens=8, max_delay_s=0.0)
        await batcher.start()
        (res,) = await batcher.submit([[5] * 20])
        await batcher.stop()
        return res

    assert run(main()).batch_size == 1


def test_a_full_queue_refuses_at_once_and_takes_nothing():
    rec = Recorder(delay=0.2)

    async def main():
        batcher = DynamicBatcher(rec, max_batch_size=1, max_delay_s=0.0, capacity=3, workers=1)
        await batcher.start()
        first = batcher.submit_many([[1]])  # taken by the worker
        await asyncio.sleep(0.05)
        waiting = batcher.submit_many([[2], [3]])
        with pytest.raises(QueueFullError):
            batcher.submit_many([[4], [5]])  # 2 + 2 > 3: all or none
        assert batcher.depth == 2
        done = await asyncio.gather(*first, *waiting)
        await batcher.stop()
        return done

    assert [r.output[0] for r in run(main())] == [1, 2, 3]
    assert [4] not in [seq for b in rec.batches for seq in b]


async def busy_batcher(rec: Recorder) -> tuple[DynamicBatcher, list]:
    """A one-worker batcher whose worker is busy with the text [1] (`rec`'s delay long)."""
    batcher = DynamicBatcher(rec, max_batch_size=1, max_delay_s=0.0, workers=1)
    await batcher.start()
    busy = batcher.submit_many([[1]])
    await asyncio.sleep(0.05)
    return batcher, busy


def test_expired_texts_are_dropped_before_inference():
    rec = Recorder(delay=0.2)

    async def main():
        batcher, busy = await busy_batcher(rec)
        late = batcher.submit_many([[99]], deadline=time.monotonic() + 0.01)
        with pytest.raises(DeadlineExpiredError):
            await late[0]
        await busy[0]
        await batcher.stop()

    run(main())
    assert [99] not in [seq for b in rec.batches for seq in b]


def test_a_cancelled_caller_costs_no_compute():
    rec = Recorder(delay=0.2)

    async def main():
        batcher, busy = await busy_batcher(rec)
        task = asyncio.create_task(batcher.submit([[77]]))
        await asyncio.sleep(0.01)
        task.cancel()
        await busy[0]
        await asyncio.sleep(0.05)
        await batcher.stop()

    run(main())
    assert [77] not in [seq for b in rec.batches for seq in b]


def test_a_failing_batch_fails_its_callers_and_the_batcher_lives_on():
    calls = []

    def flaky(ids, alone):
        calls.append(ids)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return np.zeros((len(ids), 1))

    async def main():
        batcher = DynamicBatcher(flaky, max_batch_size=4, max_delay_s=0.0)
        await batcher.start()
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit([[1]])
        (ok,) = await batcher.submit([[2]])
        await batcher.stop()
        return ok

    assert run(main()).output.tolist() == [0.0]


def test_a_text_that_would_outwait_its_deadline_is_shed_at_once():
    rec = Recorder(delay=0.05)  # about 20 texts per second, one at a time

    async def main():
        batcher = DynamicBatcher(rec, max_batch_size=1, max_delay_s=0.0, capacity=100, workers=1)
        await batcher.start()
        await batcher.submit([[i] for i in range(10)])  # measures the rate
        assert batcher.expected_wait_s() is not None
        queued = batcher.submit_many([[i] for i in range(10)])  # ~0.5 s of work ahead
        now = time.monotonic()
        with pytest.raises(QueueFullError, match="expected wait"):
            batcher.submit_many([[99]], deadline=now + 0.1)
        late_but_possible = batcher.submit_many([[98]], deadline=now + 30)
        no_deadline = batcher.submit_many([[97]])
        done = await asyncio.gather(*queued, *late_but_possible, *no_deadline)
        await batcher.stop()
        return done

    assert len(run(main())) == 12
    assert [99] not in [seq for b in rec.batches for seq in b]


def test_a_batch_is_told_whether_another_batch_is_running():
    rec = Recorder(delay=0.1)

    async def main():
        batcher = DynamicBatcher(rec, max_batch_size=1, workers=2)
        await batcher.start()
        await batcher.submit([[1]])  # nothing else running
        await batcher.submit([[2], [3]])  # two batches of one, side by side on the two workers
        await batcher.stop()

    run(main())
    assert rec.alone[0] is True
    assert sorted(rec.alone[1:]) == [False, True]


def test_texts_another_model_runs_at_the_same_time_never_take_the_solo_session():
    """Chat scores each message with two models at once: their batches keep to one thread each, even when the
    first of them finds nothing else running."""
    rec = Recorder()

    async def main():
        batcher = DynamicBatcher(rec, max_batch_size=4, workers=1)
        await batcher.start()
        await batcher.submit([[1]], solo=False)
        await batcher.submit([[2]])
        await batcher.submit([[3]], solo=False)
        await batcher.stop()

    run(main())
    assert rec.alone == [False, True, False]


def test_workers_are_pinned_to_their_own_cores_when_asked():
    cores = sorted(os.sched_getaffinity(0))
    seen: list[set[int]] = []

    def record(ids, alone):
        seen.append(os.sched_getaffinity(0))
        time.sleep(0.05)
        return np.zeros((len(ids), 1))

    async def main(pin):
        batcher = DynamicBatcher(record, max_batch_size=1, workers=2, pin_cores=pin)
        await batcher.start()
        await batcher.submit([[1], [2], [3], [4]])
        await batcher.stop()

    run(main(None))
    assert all(s == set(cores) for s in seen)
    seen.clear()
    run(main(cores))
    expected = [{cores[0]}, {cores[1 % len(cores)]}]
    assert all(s in expected for s in seen) and any(s == expected[0] for s in seen)
    assert os.sched_getaffinity(0) == set(cores)  # the caller's own thread is never pinned


# -- priority lanes ------------------------------------------------------------------------------------------------
def test_interactive_texts_run_before_bulk_texts_queued_earlier():
    rec = Recorder(delay=0.05)

    async def main():
        batcher = DynamicBatcher(rec, max_batch_size=4, max_batch_tokens=10_000, workers=1, bulk_share=0.0)
        await batcher.start()
        busy = batcher.submit_many([[1]], lane="bulk")  # occupies the one worker
        await asyncio.sleep(0.01)
        bulk = [batcher.submit([[100 + i]], lane="bulk") for i in range(8)]
        interactive = [batcher.submit([[200 + i]]) for i in range(3)]
        await asyncio.gather(*interactive, *bulk, busy[0])
        await batcher.stop()

    run(main())
    order = [seq[0] for b in rec.batches for seq in b]
    assert order[0] == 1 and sorted(order[1:4]) == [200, 201, 202], order
    assert sorted(order[4:]) == list(range(100, 108)), "bulk ran once no interactive text waited"
    assert all(len({seq[0] // 100 for seq in b}) == 1 for b in rec.batches), "a batch mixes lanes"


def test_bulk_gets_its_share_while_interactive_work_never_stops():
    rec = Recorder()

    async def main():
        batcher = DynamicBatcher(rec, max_batch_size=1, workers=1, bulk_share=0.25, capacity=10_000)
        await batcher.start()
        bulk = batcher.submit_many([[1]] * 300, lane="bulk")
        interactive = batcher.submit_many([[2]] * 200)
        await asyncio.gather(*bulk, *interactive)
        await batcher.stop()

    run(main())
    lanes = [b[0][0] for b in rec.batches]
    contended = lanes[: len(lanes) - lanes[::-1].index(2)]  # up to the last interactive batch: both lanes waited
    # Bulk got its quarter of those batches (never starved), interactive the rest.
    assert contended.count(2) == 200 and abs(contended.count(1) - 0.25 * len(contended)) <= 1, contended.count(1)


def test_each_lane_has_its_own_capacity():
    async def main():
        batcher = DynamicBatcher(Recorder(delay=0.2), max_batch_size=1, workers=1, capacity=3)
        await batcher.start()
        busy = batcher.submit_many([[1]])
        await asyncio.sleep(0.01)
        batcher.submit_many([[2]] * 3, lane="bulk")
        with pytest.raises(QueueFullError, match="bulk queue full"):
            batcher.submit_many([[3]], lane="bulk")
        queued = batcher.submit_many([[4]] * 3)  # a full bulk lane never refuses interactive work
        assert batcher.depth_of("bulk") == 3 and batcher.depth_of("interactive") == 3
        with pytest.raises(QueueFullError, match="interactive queue full"):
            batcher.submit_many([[5]])
        await asyncio.gather(busy[0], *queued)
        await batcher.stop()

    run(main())


def test_dropped_texts_are_counted_by_lane_and_reason():
    drops: list[tuple[str, str, int]] = []

    async def main():
        batcher = DynamicBatcher(Recorder(delay=0.1), max_batch_size=1, workers=1,
                                 on_drop=lambda lane, reason, n: drops.append((lane, reason, n)))
        await batcher.start()
        busy = batcher.submit_many([[1]])
        await asyncio.sleep(0.01)
        cancelled = asyncio.create_task(batcher.submit([[2], [3]], lane="bulk"))
        expiring = asyncio.create_task(batcher.submit([[4]], deadline=time.monotonic() + 0.02))
        await asyncio.sleep(0.01)
        cancelled.cancel()
        with pytest.raises(DeadlineExpiredError):
            await expiring
        await busy[0]
        await batcher.stop()

    run(main())
    assert sorted(drops) == [("bulk", "cancelled", 1), ("bulk", "cancelled", 1), ("interactive", "expired", 1)]
