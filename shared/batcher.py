"""A dynamic batcher in the spirit of TEI's: a bounded queue, batches by token budget and size, length bucketing.

Requests queue as tokenized texts. A batch forms when a worker is free: it starts from the oldest waiting
text and adds the texts closest to it in length (less padding) while the batch stays within `max_batch_size`
texts and `max_batch_tokens` padded tokens. If the batch is not full, it waits up to `max_delay` (counted
from the oldest text's arrival) for company. Texts whose deadline has passed, or whose caller went away, are
dropped before they cost compute (and counted: `on_drop`).

Two priority lanes: `interactive` (a person waits) and `bulk` (back-fills, the news monitor's bursts). A free worker
forms its batch from the interactive lane whenever interactive texts wait, and from the bulk lane when none do, so
bulk work takes the capacity interactive work leaves. While both lanes wait, bulk still gets `bulk_share` of the
batches, so it is never starved. A running batch cannot be interrupted, so bulk batches have their own, smaller
token budget (`bulk_batch_tokens`): it bounds how long an interactive text waits behind bulk work. Each lane has its
own queue capacity and deadline-based shedding: a full bulk lane never refuses interactive work.

The model runs on a worker thread, so the event loop stays free; a batch that starts while no other batch in the
process runs, of this model or another (chat runs two models per message, `serve all` three services), is told so
(`alone`), and may use more threads. Given `pin_cores`, worker thread i stays on core i: with two one-thread
workers on two cores that gave about 4 % more texts per second than letting them migrate around the event loop's
thread.
"""
from __future__ import annotations

import asyncio
import bisect
import functools
import itertools
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np

log = logging.getLogger(__name__)

RunBatch = Callable[[list[list[int]], bool], np.ndarray]  # (token ids, alone: no other batch is running)
Lane = Literal["interactive", "bulk"]
LANES: tuple[Lane, ...] = get_args(Lane)


class _Running:
    """Batches running in this process, over every batcher: two models' batches at once must not both take every
    core (their solo sessions would oversubscribe them). Changed only from event-loop code."""

    batches = 0
    batchers = 0  # batchers started: where the next one starts pinning its threads
RATE_SMOOTHING = 0.2  # weight of the newest batch in the texts-per-second estimate
RATE_MIN_BATCHES = 8  # batches seen before the estimate is trusted for shedding


class QueueFullError(RuntimeError):
    """The queue is at capacity: the caller should answer RESOURCE_EXHAUSTED."""


class DeadlineExpiredError(RuntimeError):
    """The request's deadline passed while it waited: it was dropped before inference."""


class BatcherClosedError(RuntimeError):
    """The batcher is stopped (shutdown): the caller should answer UNAVAILABLE."""


@dataclass(frozen=True)
class ItemResult:
    output: np.ndarray  # this text's row of the model output
    queue_us: int
    inference_us: int
    batch_size: int


@dataclass
class _Item:
    seq: int
    ids: list[int]
    enqueued: float
    deadline: float | None
    lane: Lane
    future: asyncio.Future = field(repr=False)
    solo: bool = True  # False: another model runs this text at the same time, so its batch keeps to one core

    @property
    def length(self) -> int:
        return len(self.ids)


class _Queue:
    """One lane's waiting texts in two views: by arrival (a dict keeps insertion order) and sorted by (length, seq)."""

    def __init__(self) -> None:
        self.by_arrival: dict[int, _Item] = {}
        self.by_length: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self.by_arrival)

    def add(self, item: _Item) -> None:
        self.by_arrival[item.seq] = item
        bisect.insort(self.by_length, (item.length, item.seq))

    def remove(self, item: _Item) -> bool:
        """Take `item` out; False if it was not waiting here."""
        if self.by_arrival.pop(item.seq, None) is None:
            return False
        index = bisect.bisect_left(self.by_length, (item.length, item.seq))
        if index < len(self.by_length) and self.by_length[index] == (item.length, item.seq):
            del self.by_length[index]
        return True

    def oldest(self) -> _Item:
        return next(iter(self.by_arrival.values()))

    def full(self, max_size: int, max_tokens: int) -> bool:
        if len(self) >= max_size:
            return True
        longest = self.by_length[-1][0] if self.by_length else 0
        return longest * len(self) >= max_tokens

    def select(self, max_size: int, max_tokens: int) -> list[_Item]:
        """The oldest text plus its nearest neighbours in length, within the size and token budgets."""
        oldest = self.oldest()
        pos = bisect.bisect_left(self.by_length, (oldest.length, oldest.seq))
        lo, hi = pos, pos + 1  # chosen window [lo, hi) in the length-sorted list
        longest = oldest.length
        while hi - lo < max_size:
            left = self.by_length[lo - 1] if lo > 0 else None
            right = self.by_length[hi] if hi < len(self.by_length) else None
            if left is None and right is None:
                break
            # Prefer the neighbour closer in length to the oldest text.
            take_right = left is None or (right is not None and right[0] - oldest.length <= oldest.length - left[0])
            candidate_len = right[0] if take_right else left[0]
            new_longest = max(longest, candidate_len)
            if new_longest * (hi - lo + 1) > max_tokens:
                if take_right and left is not None and max(longest, left[0]) * (hi - lo + 1) <= max_tokens:
                    take_right = False
                    new_longest = max(longest, left[0])
                else:
                    break
            longest = new_longest
            if take_right:
                hi += 1
            else:
                lo -= 1
        return [self.by_arrival[seq] for _, seq in self.by_length[lo:hi]]


@dataclass(frozen=True)
class BatchStats:
    size: int
    tokens: int  # padded tokens: size x longest
    real_tokens: int
    inference_s: float
    lane: Lane


class DynamicBatcher:
    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int = 32,
        max_batch_tokens: int = 4096,
        max_delay_s: float = 0.0,
        capacity: int = 1024,
        workers: int = 1,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_depth: Callable[[Lane, int], None] | None = None,
        on_drop: Callable[[Lane, str, int], None] | None = None,
        name: str = "model",
        pin_cores: Sequence[int] | None = None,
        bulk_share: float = 0.1,
        bulk_batch_tokens: int | None = None,
    ) -> None:
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_delay_s = max_delay_s
        self.capacity = capacity
        self.workers = workers
        self._on_batch = on_batch
        self._on_depth = on_depth
        self._on_drop = on_drop  # (lane, reason: "cancelled" | "expired", texts) for texts dropped unrun
        self.name = name
        self.pin_cores = list(pin_cores or [])
        self.bulk_share = bulk_share
        self.bulk_batch_tokens = bulk_batch_tokens or max_batch_tokens
        self._seq = itertools.count()
        self._lanes: dict[Lane, _Queue] = {lane: _Queue() for lane in LANES}
        self._contended = 0  # batches formed while both lanes had texts waiting
        self._contended_bulk = 0  # of those, batches given to the bulk lane
        self._wakeup: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self._executor: ThreadPoolExecutor | None = None
        self._closed = True
        self.submitted = 0  # texts ever queued
        self.batches = 0  # batches ever run
        self._running = 0  # batches on a worker thread now
        self._rate: float = 0.0  # texts per second one worker gets through (moving average over batches)
        self._rated_batches = 0

    # -- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        if not self._closed:
            return
        self._closed = False
        self._wakeup = asyncio.Event()
        # Each batcher starts pinning at the next core: at light load only a batcher's first thread works, and two
        # models' first threads (chat: intent and embedder, run together) must not share one core.
        first = _Running.batchers
        _Running.batchers += 1
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix=f"infer-{self.name}",
                                            initializer=self._pin_thread, initargs=(itertools.count(first),))
        self._tasks = [asyncio.create_task(self._worker(i), name=f"batcher-{self.name}-{i}")
                       for i in range(self.workers)]

    def _pin_thread(self, order: itertools.count) -> None:
        """Worker thread i runs on core (first + i) mod the cores: fewer migrations beside the event loop's thread."""
        if self.pin_cores:
            os.sched_setaffinity(0, {self.pin_cores[next(order) % len(self.pin_cores)]})

    async def stop(self) -> None:
        """Stop forming batches; texts still waiting fail with BatcherClosedError. Running batches finish."""
        self._closed = True
        for queue in self._lanes.values():
            for item in list(queue.by_arrival.values()):
                queue.remove(item)
                if not item.future.done():
                    item.future.set_exception(BatcherClosedError("the server is shutting down"))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def drain(self, timeout: float) -> None:
        """Run every queued text and let running batches finish (up to `timeout` s), then stop.

        A hot reload retires the replaced version's batcher this way: nothing new is queued on it by then.
        """
        end = time.monotonic() + timeout
        while (self.depth or self._running) and time.monotonic() < end:
            await asyncio.sleep(0.005)
        await self.stop()

    @property
    def depth(self) -> int:
        return sum(len(queue) for queue in self._lanes.values())

    def depth_of(self, lane: Lane) -> int:
        return len(self._lanes[lane])

    def _ahead_of(self, lane: Lane) -> int:
        """Texts that run before a text queued now in `lane`: interactive work goes first."""
        return self.depth_of("interactive") if lane == "interactive" else self.depth

    def expected_wait_s(self, extra: int = 0, lane: Lane = "bulk") -> float | None:
        """Seconds until the texts ahead in `lane` and `extra` more would be through, at the measured rate (None:
        unknown). The default counts every lane."""
        if self._rated_batches < RATE_MIN_BATCHES or self._rate <= 0:
            return None
        return (self._ahead_of(lane) + extra) / (self._rate * self.workers)

    # -- submitting ------------------------------------------------------------------------------------
    def submit_many(self, ids: Sequence[list[int]], deadline: float | None = None,
                    lane: Lane = "interactive", solo: bool = True) -> list[asyncio.Future]:
        """Queue texts (all or none: a full lane raises QueueFullError). `deadline` is time.monotonic()-based.

        `solo=False`: the caller runs these texts through another model at the same moment (chat scores each
        message with two), so a batch holding them never takes the solo session: each model keeps its own core."""
        self.admit(len(ids), deadline, lane)
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        queue = self._lanes[lane]
        futures = []
        for seq_ids in ids:
            item = _Item(next(self._seq), list(seq_ids), now, deadline, lane, loop.create_future(), solo)
            item.future.add_done_callback(functools.partial(self._on_done, item))
            queue.add(item)
            futures.append(item.future)
        self.submitted += len(futures)
        self._depth_changed(lane)
        assert self._wakeup is not None
        self._wakeup.set()
        return futures

    def admit(self, n: int, deadline: float | None = None, lane: Lane = "interactive") -> None:
        """Raise now if `n` more texts would be refused: callers check before paying for tokenization."""
        if self._closed:
            raise BatcherClosedError("the model is not loaded or is shutting down")
        depth = self.depth_of(lane)
        if depth + n > self.capacity:
            raise QueueFullError(f"{lane} queue full ({depth} of {self.capacity} texts waiting)")
        ahead = self._ahead_of(lane)
        if deadline is not None and ahead:
            # Shed now what could only time out in the queue: the caller can retry elsewhere at once.
            wait = self.expected_wait_s(n, lane)
            now = time.monotonic()
            if wait is not None and now + wait > deadline:
                raise QueueFullError(f"{ahead} texts ahead in the {lane} lane: expected wait {wait:.3f} s is beyond "
                                     f"the deadline ({max(0.0, deadline - now):.3f} s left)")

    async def submit(self, ids: Sequence[list[int]], deadline: float | None = None,
                     lane: Lane = "interactive", solo: bool = True) -> list[ItemResult]:
        futures = self.submit_many(ids, deadline, lane, solo)
        try:
            if len(futures) == 1:  # the common case; gather() costs a wrapper future and callbacks
                return [await futures[0]]
            return list(await asyncio.gather(*futures))
        except BaseException:
            for future in futures:  # the caller went away or one text failed: drop the rest too
                future.cancel()
            raise

    # -- batching --------------------------------------------------------------------------------------
    def _on_done(self, item: _Item, future: asyncio.Future) -> None:
        """A caller that went away takes its texts out of the queue at once (and out of the depth gauge)."""
        if future.cancelled() and self._lanes[item.lane].remove(item):
            self._dropped(item.lane, "cancelled", 1)
            self._depth_changed(item.lane)

    def _depth_changed(self, lane: Lane) -> None:
        if self._on_depth is not None:
            self._on_depth(lane, self.depth_of(lane))

    def _dropped(self, lane: Lane, reason: str, n: int) -> None:
        if self._on_drop is not None and n:
            self._on_drop(lane, reason, n)

    def _drop_dead(self) -> None:
        now = time.monotonic()
        for lane, queue in self._lanes.items():
            cancelled = expired = 0
            for item in list(queue.by_arrival.values()):
                if item.future.done():  # cancelled by its caller (and its done-callback has not run yet)
                    queue.remove(item)
                    cancelled += 1
                elif item.deadline is not None and item.deadline <= now:
                    queue.remove(item)
                    item.future.set_exception(DeadlineExpiredError("deadline passed while queued"))
                    expired += 1
            self._dropped(lane, "cancelled", cancelled)
            self._dropped(lane, "expired", expired)
            if cancelled or expired:
                self._depth_changed(lane)

    def _tokens(self, lane: Lane) -> int:
        return self.max_batch_tokens if lane == "interactive" else self.bulk_batch_tokens

    def _next_lane(self) -> Lane | None:
        """Interactive first; while both lanes wait, bulk gets `bulk_share` of the batches; None: nothing waits."""
        interactive, bulk = (len(self._lanes[lane]) > 0 for lane in LANES)
        if not (interactive and bulk):
            return "interactive" if interactive else ("bulk" if bulk else None)
        self._contended += 1
        if self._contended_bulk < self.bulk_share * self._contended:
            self._contended_bulk += 1
            return "bulk"
        return "interactive"

    async def _worker(self, index: int) -> None:
        assert self._wakeup is not None and self._executor is not None
        loop = asyncio.get_running_loop()
        while not self._closed:
            self._drop_dead()
            if not self.depth:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # The delay for company applies to the lane that would run; an interactive text cuts it short.
            ready = "interactive" if self.depth_of("interactive") else "bulk"
            queue = self._lanes[ready]
            wait = queue.oldest().enqueued + self.max_delay_s - time.monotonic()
            if wait > 0 and not queue.full(self.max_batch_size, self._tokens(ready)):
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=wait)
                except asyncio.TimeoutError:
                    pass
                continue
            self._drop_dead()
            lane = self._next_lane()
            if lane is None:
                continue
            queue = self._lanes[lane]
            batch = queue.select(self.max_batch_size, self._tokens(lane))
            for item in batch:
                queue.remove(item)
            self._depth_changed(lane)
            if self.depth:
                self._wakeup.set()  # let another free worker form the next batch
            await self._run(loop, batch)

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        started = time.monotonic()
        self.batches += 1
        alone = _Running.batches == 0 and all(item.solo for item in batch)
        self._running += 1
        _Running.batches += 1
        try:
            outputs = await loop.run_in_executor(self._executor, self._run_batch, [item.ids for item in batch], alone)
        except asyncio.CancelledError:  # stop() while this batch ran: its callers must not wait forever
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(BatcherClosedError("the server is shutting down"))
            raise
        except Exception as exc:  # noqa: BLE001 - the batch's callers get the error; the batcher lives on
            log.exception("batch inference failed", extra={"model": self.name, "batch_size": len(batch)})
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        finally:
            self._running -= 1
            _Running.batches -= 1
        finished = time.monotonic()
        rate = len(batch) / max(finished - started, 1e-6)
        self._rate = rate if self._rated_batches == 0 else (1 - RATE_SMOOTHING) * self._rate + RATE_SMOOTHING * rate
        self._rated_batches += 1
        inference_us = int((finished - started) * 1e6)
        longest = max(item.length for item in batch)
        if self._on_batch is not None:
            self._on_batch(BatchStats(len(batch), longest * len(batch), sum(i.length for i in batch),
                                      finished - started, batch[0].lane))
        for row, item in enumerate(batch):
            if not item.future.done():
                item.future.set_result(ItemResult(outputs[row], int((started - item.enqueued) * 1e6),
                                                  inference_us, len(batch)))
