"""Shared delivery helpers: produce-and-confirm, commit, backoff, the consumer rebalance listener."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from kafka import ConsumerRebalanceListener, KafkaProducer
from kafka.errors import CorruptRecordError, KafkaError, UnsupportedCodecError
from kafka.future import Future
from kafka.structs import OffsetAndMetadata, TopicPartition

log = logging.getLogger(__name__)


class PublishFailed(RuntimeError):
    pass


class UnreadableRecords(RuntimeError):
    """A fetched record batch this process cannot read (a compression codec it lacks, a corrupt batch).
    Retrying cannot help, and kafka-python's next poll() after such an error can block for good: the stage
    stops, and the process exits non-zero so a supervisor restarts it once the cause is fixed."""


def raise_if_unreadable(exc: BaseException, consumer) -> None:
    """The one rule for consume errors: an unreadable batch stops the stage (UnreadableRecords, naming the
    partitions and their positions: the bad batch starts at one of them); anything else is for the caller's
    retry. Unknown non-Kafka exceptions are never caught by the stages, so they stop the stage too."""
    if not isinstance(exc, (UnsupportedCodecError, CorruptRecordError)):
        return
    try:
        where = ", ".join(f"{tp.topic}-{tp.partition}@{consumer.position(tp, timeout_ms=100)}"
                          for tp in sorted(consumer.assignment()))
    except Exception:  # noqa: BLE001 - the message matters more than the positions
        where = "unknown"
    raise UnreadableRecords(f"cannot read a fetched record batch ({exc}); partition "
                            f"positions: {where}. Install the codec library (snappy, lz4, zstd: see "
                            f"pyproject.toml) or repair the topic, then restart") from exc


def confirm(producer: KafkaProducer, futures: list, timeout_s: float) -> None:
    """Flush and check that every send was acknowledged; raise PublishFailed otherwise."""
    if not futures:
        return
    try:
        producer.flush(timeout=timeout_s)
    except KafkaError as exc:  # KafkaTimeoutError: not everything was acknowledged in time
        raise PublishFailed(f"flush failed: {exc!r}") from None
    for fut in futures:
        if not fut.is_done:
            raise PublishFailed("a send was not acknowledged in time")
        if fut.failed():
            raise PublishFailed(f"a send failed: {fut.exception!r}")


def broken(producer: KafkaProducer) -> bool:
    """True when the producer is in kafka-python's fatal state: after some broker faults (e.g. a broker that
    lost its producer-id state) the idempotent producer fails every later send until it is replaced."""
    manager = getattr(producer, "_transaction_manager", None)  # private; absent when idempotence is off
    return bool(manager is not None and manager.has_fatal_error())


class Publisher:
    """Owns the KafkaProducer of a stage and replaces it after a failure.

    Every failure surfaces in `confirm()` as PublishFailed (a send that raised, failed, or was not acknowledged
    in time); the caller then calls `replace()` and sends the whole batch again. The records are keyed and
    their content is derived from the input, so a resend can only duplicate, never lose or change, output."""

    def __init__(self, config: dict, on_replace=None):
        self.config = config
        self.on_replace = on_replace
        self.producer = KafkaProducer(**config)
        self.replacements = 0

    def send(self, topic: str, key: bytes | None, value: bytes, partition: int | None = None,
             headers: list[tuple[str, bytes]] | None = None):
        if broken(self.producer):
            return Future().failure(PublishFailed("the producer is in a fatal error state"))
        try:
            return self.producer.send(topic, key=key, value=value, partition=partition, headers=headers)
        except KafkaError as exc:  # e.g. no metadata within max_block_ms while the broker is unreachable
            return Future().failure(exc)

    def confirm(self, futures: list, timeout_s: float) -> None:
        confirm(self.producer, futures, timeout_s)

    def replace(self) -> None:
        """A fresh producer (new producer id, fresh connections); the old one is closed without waiting, which
        aborts what it still holds (the caller resends it)."""
        old = self.producer
        self.producer = KafkaProducer(**self.config)
        self.replacements += 1
        if self.on_replace is not None:
            self.on_replace()
        try:
            old.close(timeout=0)
        except Exception:  # noqa: BLE001 - the old producer is dropped either way
            # kafka-python's close() flushes first and raises when records are still pending (broker down),
            # leaving the sender thread alive and retrying; stop it so replaced producers do not pile up.
            sender = getattr(old, "_sender", None)
            if sender is not None and sender.is_alive():
                sender.force_close()

    def partitions_for(self, topic: str):
        return self.producer.partitions_for(topic)

    def close(self, timeout_s: float = 10) -> None:
        self.producer.close(timeout=timeout_s)


def publish_confirmed(publisher: Publisher, send: Callable[[int], list], timeout_s: float, what: str,
                      on_failure: Callable[[], None], wait: Callable[[float], bool], backoff: Backoff,
                      timed: Callable[[], AbstractContextManager] = nullcontext) -> bool:
    """Produce a batch's records and wait for the broker's acks: `send(attempt)` sends every record of the batch
    (attempt 0, 1, ...) and returns their futures. After a failure the producer is replaced and, once
    `wait(delay)` returns True, everything is sent again (keyed records derived from the input: a resend can only
    duplicate). False: `wait` gave up (nothing may be committed then). `timed` wraps each wait for the acks."""
    attempt = 0
    while True:
        try:
            futures = send(attempt)
            with timed():
                publisher.confirm(futures, timeout_s)
            return True
        except PublishFailed as exc:
            on_failure()
            log.warning("publishing %s failed (%s); replacing the producer and retrying", what, exc)
            publisher.replace()
            attempt += 1
            if not wait(backoff.next()):
                return False


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
