"""Shared delivery helpers: produce-and-confirm, commit, backoff, the consumer rebalance listener."""
from __future__ import annotations

import logging
import threading
import time

from kafka import ConsumerRebalanceListener, KafkaProducer
from kafka.structs import OffsetAndMetadata, TopicPartition

log = logging.getLogger(__name__)


class PublishFailed(RuntimeError):
    pass


def confirm(producer: KafkaProducer, futures: list, timeout_s: float) -> None:
    """Flush and check that every send was acknowledged; raise PublishFailed otherwise."""
    if not futures:
        return
    producer.flush(timeout=timeout_s)
    for fut in futures:
        if not fut.is_done:
            raise PublishFailed("a send was not acknowledged in time")
        if fut.failed():
            raise PublishFailed(f"a send failed: {fut.exception!r}")


def next_offsets(records: dict) -> dict[TopicPartition, OffsetAndMetadata]:
    return {tp: OffsetAndMetadata(recs[-1].offset + 1, "", -1) for tp, recs in records.items() if recs}


def first_offsets(records: dict) -> dict[TopicPartition, int]:
    return {tp: recs[0].offset for tp, recs in records.items() if recs}


class Backoff:
    def __init__(self, initial: float, maximum: float):
        self.initial, self.maximum = initial, maximum
        self.delay = initial

    def reset(self) -> None:
        self.delay = self.initial

    def next(self) -> float:
        d = self.delay
        self.delay = min(self.delay * 2, self.maximum)
        return d


class Listener(ConsumerRebalanceListener):
    """Tracks revocations (so a batch in hand for a lost partition is dropped, not committed) and forwards
    assignments to a callback."""

    def __init__(self, on_assigned=None, on_revoked=None):
        self.revoked: set[TopicPartition] = set()
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self.lock = threading.Lock()

    def on_partitions_revoked(self, revoked):
        with self.lock:
            self.revoked |= set(revoked)
        if self._on_revoked:
            self._on_revoked(set(revoked))

    def on_partitions_assigned(self, assigned):
        if self._on_assigned:
            self._on_assigned(set(assigned))

    def take_revoked(self) -> set[TopicPartition]:
        with self.lock:
            out, self.revoked = self.revoked, set()
        return out


def sleep_until(deadline: float, stop: threading.Event) -> None:
    while not stop.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        stop.wait(min(left, 0.1))
