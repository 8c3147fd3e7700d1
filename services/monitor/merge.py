"""Buffered event-time merge of the `news` partitions one stage-1 instance reads.

With a backlog (a restart, an outage, a replay) one poll can return hours of one partition before any of
another, and the windows downstream would see the others' items as late. Records are therefore buffered per
partition as they are polled and released in event-time order across partitions, never more than `align_s`
(event time) ahead of a partition that still has records waiting to be fetched (as Kafka Streams picks the
partition with the oldest record). Caught-up partitions never hold the others back.

Buffering (instead of cutting a poll and seeking back, the earlier approach) keeps every fetched record, so
nothing is fetched twice and batches stay full. A partition's buffer is bounded: records past
`max_buffered` are dropped and the caller seeks the partition back to the first of them (the only cut left).
Buffered records are not committed: a batch commits only the records it took, and a rewind seeks each
partition back to its first buffered record, so at-least-once delivery is unchanged.

Pure logic: no Kafka calls. The caller tells which partitions still have unfetched records (`has_more`) and may
buffer its own wrapper of each record (anything with the record's `offset`) with the wrapper's event time
(`time_of`): the scorer buffers each record parsed once.
"""
from __future__ import annotations

import heapq
import json
import math
from collections import deque
from datetime import datetime
from typing import Callable, Iterable


def event_time(value: bytes | None) -> float | None:
    """published_at of a raw news value, for ordering only (None when it does not parse; validation decides)."""
    try:
        data = json.loads(value)
        return datetime.fromisoformat(str(data["published_at"]).replace("Z", "+00:00")).timestamp()
    except Exception:  # noqa: BLE001
        return None


def record_time(record) -> float | None:
    return event_time(record.value)


class EventTimeMerge:
    def __init__(self, align_s: float, max_buffered: int,
                 time_of: Callable[[object], float | None] = record_time):
        self.align_s = align_s
        self.max_buffered = max_buffered
        self.time_of = time_of
        self.buffers: dict = {}  # partition -> deque of (event time or None, record), in offset order
        # partition -> event time of its last fetched record: a lower bound of its next unfetched one
        # (a partition's items are in time order)
        self.fetched_time: dict = {}

    def __len__(self) -> int:
        return sum(len(b) for b in self.buffers.values())

    def add(self, records: dict) -> dict:
        """Buffer polled records. Returns {partition: offset} to seek back to for partitions whose buffer
        overflowed (the records past `max_buffered` were dropped and must be fetched again later)."""
        seeks = {}
        for tp, recs in records.items():
            buf = self.buffers.setdefault(tp, deque())
            room = max(0, self.max_buffered - len(buf))
            for rec in recs[:room]:
                t = self.time_of(rec)
                buf.append((t, rec))
                if t is not None:
                    self.fetched_time[tp] = t
            if len(recs) > room:
                seeks[tp] = recs[room].offset
        return seeks

    def take(self, max_records: int, assignment: Iterable, has_more: Callable[[object], bool]) -> dict:
        """Release up to `max_records` buffered records in event-time order across partitions (a k-way merge of
        the buffers). A partition whose buffer is empty but which may have records not fetched yet bounds the
        release: nothing more than `align_s` after its last fetched record (a lower bound of its next one)
        leaves. The oldest buffered record is always within that bound or waits only for such a partition's
        fetch, so this cannot stall while the caller keeps polling. Records whose time does not parse leave as
        soon as they head their buffer."""
        limit = math.inf
        if self.align_s > 0:
            for tp in assignment:
                limit = min(limit, self._bound(tp, has_more))
        heads = [(_order(buf[0][0]), i, tp) for i, (tp, buf) in enumerate(self.buffers.items()) if buf]
        heapq.heapify(heads)
        out: dict = {}
        n = 0
        while heads and n < max_records:
            t, i, tp = heapq.heappop(heads)
            if t > limit:
                break
            buf = self.buffers[tp]
            out.setdefault(tp, []).append(buf.popleft()[1])
            n += 1
            if buf:
                heapq.heappush(heads, (_order(buf[0][0]), i, tp))
            elif self.align_s > 0:
                limit = min(limit, self._bound(tp, has_more))
        return out

    def _bound(self, tp, has_more: Callable[[object], bool]) -> float:
        """How far (event time) records may run ahead because of this partition: unbounded while it has
        records buffered (the merge orders them) or nothing left to fetch; nothing may leave while it may hold
        records but none was fetched yet (they could be the oldest: this is what keeps a restart with a backlog
        in order); otherwise `align_s` past its last fetched record."""
        if self.buffers.get(tp) or not has_more(tp):
            return math.inf
        if tp not in self.fetched_time:
            return -math.inf
        return self.fetched_time[tp] + self.align_s

    def first_offsets(self) -> dict:
        return {tp: buf[0][1].offset for tp, buf in self.buffers.items() if buf}

    def drop(self, partitions: Iterable) -> None:
        for tp in partitions:
            self.buffers.pop(tp, None)
            self.fetched_time.pop(tp, None)

    def clear(self) -> None:
        """Forget the buffered records (the caller seeks their partitions back); keep the time bounds."""
        self.buffers.clear()


def _order(t: float | None) -> float:
    return -math.inf if t is None else t
