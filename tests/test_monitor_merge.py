"""The stage-1 event-time merge of `news` partitions, driven with kafka-python's own record type (no broker)."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import TopicPartition

from nlpsuite.services.monitor.merge import EventTimeMerge

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
A, B, C = (TopicPartition("news", p) for p in range(3))


def rec(tp: TopicPartition, offset: int, minute: float | None) -> ConsumerRecord:
    value = b"not json" if minute is None else json.dumps(
        {"id": f"{tp.partition}-{offset}", "headline": "h",
         "published_at": (T0 + timedelta(minutes=minute)).isoformat()}).encode()
    return ConsumerRecord(tp.topic, tp.partition, -1, offset, 0, 0, None, value, [], None, -1, len(value), -1)


def taken(out: dict) -> list[tuple[int, int]]:
    return sorted((r.partition, r.offset) for recs in out.values() for r in recs)


def test_releases_in_event_time_order_across_partitions_and_fills_the_batch():
    merge = EventTimeMerge(align_s=600, max_buffered=100)
    merge.add({A: [rec(A, i, 10 * i) for i in range(6)], B: [rec(B, i, 10 * i + 5) for i in range(6)]})
    out = merge.take(8, [A, B], has_more=lambda tp: False)
    times = sorted((json.loads(r.value)["published_at"], r.partition) for recs in out.values() for r in recs)
    # the 8 oldest of both partitions, each partition's records in offset order
    assert taken(out) == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3)]
    assert all([r.offset for r in recs] == sorted(r.offset for r in recs) for recs in out.values())
    assert len(times) == 8 and len(merge) == 4


def test_a_partition_with_records_still_to_fetch_bounds_how_far_the_others_run_ahead():
    merge = EventTimeMerge(align_s=600, max_buffered=100)
    merge.add({A: [rec(A, 0, 0)], B: [rec(B, i, 5 * i) for i in range(10)]})  # B: minutes 0..45
    # A's buffer empties after its one record; A has more to fetch: B may run 10 min past A's last (minute 0).
    out = merge.take(100, [A, B], has_more=lambda tp: tp == A)
    assert taken(out) == [(0, 0), (1, 0), (1, 1), (1, 2)]
    assert merge.first_offsets() == {B: 3}
    # Once A is caught up it holds nothing back.
    out = merge.take(100, [A, B], has_more=lambda tp: False)
    assert taken(out) == [(1, i) for i in range(3, 10)] and len(merge) == 0


def test_a_partition_not_fetched_yet_holds_everything_back_until_it_is_or_proves_empty():
    merge = EventTimeMerge(align_s=60, max_buffered=100)
    merge.add({A: [rec(A, i, 30 * i) for i in range(5)]})
    # B may hold older records than all of A (a restart with a backlog): nothing leaves yet
    assert merge.take(100, [A, B], has_more=lambda tp: True) == {}
    # B turns out empty: it never holds A back
    assert len(taken(merge.take(100, [A, B], has_more=lambda tp: tp != B))) == 5


def test_a_full_buffer_drops_the_rest_and_says_where_to_seek_back():
    merge = EventTimeMerge(align_s=600, max_buffered=4)
    assert merge.add({A: [rec(A, i, i) for i in range(3)]}) == {}
    assert merge.add({A: [rec(A, i, i) for i in range(3, 7)], B: [rec(B, 0, 0)]}) == {A: 4}
    assert len(merge) == 5
    # A's bound is its last kept record (minute 3), not the dropped ones.
    assert merge.fetched_time[A] == (T0 + timedelta(minutes=3)).timestamp()


def test_unparseable_times_leave_at_once_and_rewind_offsets_cover_the_buffer():
    merge = EventTimeMerge(align_s=600, max_buffered=100)
    merge.add({A: [rec(A, 7, None), rec(A, 8, 500)], B: [rec(B, 3, 0), rec(B, 4, 1)]})
    assert merge.first_offsets() == {A: 7, B: 3}
    out = merge.take(2, [A, B], has_more=lambda tp: False)
    assert taken(out) == [(0, 7), (1, 3)]
    merge.drop([B])
    assert merge.first_offsets() == {A: 8} and B not in merge.fetched_time
    merge.clear()
    assert len(merge) == 0 and merge.first_offsets() == {}


def test_alignment_off_releases_everything_up_to_the_batch_size():
    merge = EventTimeMerge(align_s=0, max_buffered=100)
    merge.add({A: [rec(A, 0, 0)], B: [rec(B, i, 600 * i) for i in range(5)]})
    assert len(taken(merge.take(4, [A, B], has_more=lambda tp: True))) == 4
