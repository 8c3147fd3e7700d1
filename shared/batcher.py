"""A dynamic batcher in the spirit of TEI's: a bounded queue, batches by token budget and size, length bucketing.

Requests queue as tokenized texts. A batch forms when a worker is free: it starts from the oldest waiting
text and adds the texts closest to it in length (less padding) while the batch stays within `max_batch_size`
texts and `max_batch_tokens` padded tokens. If the batch is not full, it waits up to `max_delay` (counted
from the oldest text's arrival) for company. Texts whose deadline has passed, or whose caller went away, are
dropped before they cost compute. The model runs on a worker thread, so the event loop stays free; a batch that
starts while no other batch in the process runs, of this model or another (chat runs two models per message, `serve
all` three services), is told so (`alone`), and may use more threads. Given `pin_cores`, worker thread i
stays on core i: with two one-thread workers on two cores that gave about 4 % more texts per second than letting them
migrate around the event loop's thread.
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

import numpy as np

log = logging.getLogger(__name__)

RunBatch = Callable[[list[list[int]], bool], np.ndarray]  # (token ids, alone: no other batch is running)


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
    future: asyncio.Future = field(repr=False)

    @property
    def length(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class BatchStats:
    size: int
    tokens: int  # padded tokens: size x longest
    real_tokens: int
    inference_s: float


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
        on_depth: Callable[[int], None] | None = None,
        name: str = "model",
        pin_cores: Sequence[int] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_delay_s = max_delay_s
        self.capacity = capacity
        self.workers = workers
        self._on_batch = on_batch
        self._on_depth = on_depth
        self.name = name
        self.pin_cores = list(pin_cores or [])
        self._seq = itertools.count()
        # Waiting texts in two views: by arrival (a dict keeps insertion order) and sorted by (length, seq).
        self._by_arrival: dict[int, _Item] = {}
        self._by_length: list[tuple[int, int]] = []
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
        for item in list(self._by_arrival.values()):
            self._remove(item)
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
        while (self._by_arrival or self._running) and time.monotonic() < end:
            await asyncio.sleep(0.005)
        await self.stop()

    @property
    def depth(self) -> int:
        return len(self._by_arrival)

    def expected_wait_s(self, extra: int = 0) -> float | None:
        """Seconds until the queue and `extra` more texts would be through, at the measured rate (None: unknown)."""
        if self._rated_batches < RATE_MIN_BATCHES or self._rate <= 0:
            return None
        return (self.depth + extra) / (self._rate * self.workers)

    # -- submitting ------------------------------------------------------------------------------------
    def submit_many(self, ids: Sequence[list[int]], deadline: float | None = None) -> list[asyncio.Future]:
        """Queue texts (all or none: a full queue raises QueueFullError). `deadline` is time.monotonic()-based."""
        self.admit(len(ids), deadline)
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        futures = []
        for seq_ids in ids:
            item = _Item(next(self._seq), list(seq_ids), now, deadline, loop.create_future())
            item.future.add_done_callback(functools.partial(self._on_done, item))
            self._by_arrival[item.seq] = item
            bisect.insort(self._by_length, (item.length, item.seq))
            futures.append(item.future)
        self.submitted += len(futures)
        self._depth_changed()
        assert self._wakeup is not None
        self._wakeup.set()
        return futures

    def admit(self, n: int, deadline: float | None = None) -> None:
        """Raise now if `n` more texts would be refused: callers check before paying for tokenization."""
        if self._closed:
            raise BatcherClosedError("the model is not loaded or is shutting down")
        if self.depth + n > self.capacity:
            raise QueueFullError(f"queue full ({self.depth} of {self.capacity} texts waiting)")
        if deadline is not None and self.depth:
            # Shed now what could only time out in the queue: the caller can retry elsewhere at once.
            wait = self.expected_wait_s(n)
            now = time.monotonic()
            if wait is not None and now + wait > deadline:
                raise QueueFullError(f"{self.depth} texts waiting: expected wait {wait:.3f} s is beyond the "
                                     f"deadline ({max(0.0, deadline - now):.3f} s left)")

    async def submit(self, ids: Sequence[list[int]], deadline: float | None = None) -> list[ItemResult]:
        futures = self.submit_many(ids, deadline)
        try:
            if len(futures) == 1:  # the common case; gather() costs a wrapper future and callbacks
                return [await futures[0]]
            return list(await asyncio.gather(*futures))
        except BaseException:
            for future in futures:  # the caller went away or one text failed: drop the rest too
                future.cancel()
            raise

    # -- batching --------------------------------------------------------------------------------------
    def _remove(self, item: _Item) -> None:
        self._by_arrival.pop(item.seq, None)
        index = bisect.bisect_left(self._by_length, (item.length, item.seq))
        if index < len(self._by_length) and self._by_length[index] == (item.length, item.seq):
            del self._by_length[index]

    def _on_done(self, item: _Item, future: asyncio.Future) -> None:
        """A caller that went away takes its texts out of the queue at once (and out of the depth gauge)."""
        if future.cancelled() and item.seq in self._by_arrival:
            self._remove(item)
            self._depth_changed()

    def _depth_changed(self) -> None:
        if self._on_depth is not None:
            self._on_depth(self.depth)

    def _drop_dead(self) -> None:
        now = time.monotonic()
        depth = self.depth
        for item in list(self._by_arrival.values()):
            if item.future.done():  # cancelled by its caller (and its done-callback has not run yet)
                self._remove(item)
            elif item.deadline is not None and item.deadline <= now:
                self._remove(item)
                item.future.set_exception(DeadlineExpiredError("deadline passed while queued"))
        if self.depth != depth:
            self._depth_changed()

    def _select(self) -> list[_Item]:
        """The oldest text plus its nearest neighbours in length, within the size and token budgets."""
        oldest = next(iter(self._by_arrival.values()))
        pos = bisect.bisect_left(self._by_length, (oldest.length, oldest.seq))
        lo, hi = pos, pos + 1  # chosen window [lo, hi) in the length-sorted list
        longest = oldest.length
        while hi - lo < self.max_batch_size:
            left = self._by_length[lo - 1] if lo > 0 else None
            right = self._by_length[hi] if hi < len(self._by_length) else None
            if left is None and right is None:
                break
            # Prefer the neighbour closer in length to the oldest text.
            take_right = left is None or (right is not None and right[0] - oldest.length <= oldest.length - left[0])
            candidate_len = right[0] if take_right else left[0]
            new_longest = max(longest, candidate_len)
            if new_longest * (hi - lo + 1) > self.max_batch_tokens:
                if take_right and left is not None and max(longest, left[0]) * (hi - lo + 1) <= self.max_batch_tokens:
                    take_right = False
                    new_longest = max(longest, left[0])
                else:
                    break
            longest = new_longest
            if take_right:
                hi += 1
            else:
                lo -= 1
        return [self._by_arrival[seq] for _, seq in self._by_length[lo:hi]]

    def _full(self) -> bool:
        if self.depth >= self.max_batch_size:
            return True
        longest = self._by_length[-1][0] if self._by_length else 0
        return longest * self.depth >= self.max_batch_tokens

    async def _worker(self, index: int) -> None:
        assert self._wakeup is not None and self._executor is not None
        loop = asyncio.get_running_loop()
        while not self._closed:
            self._drop_dead()
            if not self._by_arrival:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            oldest = next(iter(self._by_arrival.values()))
            wait = oldest.enqueued + self.max_delay_s - time.monotonic()
            if wait > 0 and not self._full():
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=wait)
                except asyncio.TimeoutError:
                    pass
                continue
            self._drop_dead()
            if not self._by_arrival:
                continue
            batch = self._select()
            for item in batch:
                self._remove(item)
            self._depth_changed()
            if self._by_arrival:
                self._wakeup.set()  # let another free worker form the next batch
            await self._run(loop, batch)

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        started = time.monotonic()
        self.batches += 1
        alone = _Running.batches == 0
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
                                      finished - started))
        for row, item in enumerate(batch):
            if not item.future.done():
                item.future.set_result(ItemResult(outputs[row], int((started - item.enqueued) * 1e6),
                                                  inference_us, len(batch)))
