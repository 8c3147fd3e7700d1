"""Stage 1: `news` -> validate (bad input to `news.dlq`) -> sentiment service (gRPC, batched) -> `news.scored`.

Each valid item is published once per matched entity and once per topic, keyed by that entity or topic,
so all of one entity's news lands in one `news.scored` partition in order (the repartition step that lets
stage 2 keep each entity's windows in exactly one instance). Items that match nothing get one `none`
record keyed by their id, so every valid input id appears in `news.scored`.

Delivery: the offsets of a batch are committed only after every DLQ and scored record it caused was
acknowledged by the broker. If the sentiment service fails, the batch is retried with backoff and nothing is
committed.

This module is the consume loop (poll, in-flight batches, rewind); each record is parsed once, as it is polled
(`_Polled`), and the rest lives beside it: the event-time merge (merge.py), the sentiment calls
(sentiment_calls.py), the records a scored item becomes (scored.py), produce-confirm-commit (delivery.py).
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict, deque
from contextlib import contextmanager
from dataclasses import dataclass, field

from kafka import KafkaConsumer
from kafka.errors import KafkaError

from nlpsuite.shared.logs import failure
from nlpsuite.shared import tracing

from .config import MonitorSettings
from .delivery import (
    Backoff, Listener, Publisher, first_offsets, next_offsets, publish_confirmed, raise_if_unreadable,
)
from .merge import EventTimeMerge
from .metrics import MonitorMetrics
from .schema import DeadLetter, NewsItem, Rejected, parse_news
from .scored import scored_records, ticker_names
from .sentiment_calls import Scores, SentimentCalls

log = logging.getLogger(__name__)

class BatchAbandoned(Exception):
    """The batch in hand cannot finish (shutdown during an outage, or its partitions were revoked)."""


@dataclass
class _Polled:
    """A polled `news` record, parsed once: its item (or why it is refused), content digest and trace context."""

    record: object
    item: NewsItem | None = None
    rejected: Rejected | None = None
    digest: bytes = b""  # of the item's content: a reused id with other content is a duplicate_id
    carrier: dict = field(default_factory=dict)  # the record's trace context (tracing on only)

    @property
    def offset(self) -> int:
        return self.record.offset

    @property
    def event_time(self) -> float | None:
        return self.item.event_time if self.item is not None else None


@dataclass
class _Batch:
    records: dict  # partition -> polled records (or, when dropped right after a poll, the raw records)
    valid: list[_Polled] = field(default_factory=list)
    texts: list = field(default_factory=list)
    futures: list = field(default_factory=list)  # broker acks to wait for (dead letters)
    rejected: list = field(default_factory=list)  # (record, reason, detail) dead-lettered
    call: object = None  # the in-flight gRPC future
    t0: float = 0.0
    span: object = None  # the batch's tracing span (tracing on only)
    parent: dict = field(default_factory=dict)  # the trace carrier that parents `span` (its first traced item's)
    scored_ts: list = field(default_factory=list)  # Kafka timestamps of the items published (for the latency)

    def ready(self) -> bool:
        return self.call is None or self.call.done()


class Scorer:
    def __init__(self, settings: MonitorSettings, metrics: MonitorMetrics, stop: threading.Event):
        self.s = settings
        self.metrics = metrics
        self.stop = stop
        self.shutdown_grace_s = settings.shutdown_grace_s
        self.tickers = ticker_names(settings.watchlist)
        self.listener = Listener(on_revoked=self._forget)
        # polled records wait here until the event-time merge releases them into a batch
        self.merge = EventTimeMerge(settings.align_s, max_buffered=settings.buffer_max,
                                    time_of=lambda polled: polled.event_time)
        self.consumer: KafkaConsumer | None = None
        self.publisher: Publisher | None = None
        self.seen_ids: OrderedDict[str, bytes] = OrderedDict()  # news id -> digest of its content (LRU)
        self.sentiment = SentimentCalls(settings, metrics)

    # -- lifecycle -------------------------------------------------------------------------------------
    def open(self) -> None:
        k = self.s.kafka
        self.consumer = KafkaConsumer(**k.consumer(self.s.group_id, max_poll_records=self.s.batch_max))
        self.consumer.subscribe([self.s.topics.news], listener=self.listener)
        self.publisher = Publisher(k.producer(),
                                   on_replace=lambda: self.metrics.producer_replacements.labels("score").inc())

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()  # leaves the group
        if self.publisher is not None:
            self.publisher.close(timeout_s=10)
        self.sentiment.close()

    def run(self) -> None:
        """Poll into the event-time merge buffers, release a batch from them and start its sentiment call at
        once (up to `max_inflight` in flight, so the service works while this thread publishes and commits),
        and finish batches strictly in the order they were started."""
        assert self.consumer is not None
        inflight: deque[_Batch] = deque()
        backoff = Backoff(self.s.retry_initial_s, self.s.retry_max_s)
        while not self.stop.is_set():
            try:
                self._step(inflight)
                backoff.reset()
            except KafkaError as exc:
                raise_if_unreadable(exc, self.consumer)
                # A broker fault surfaced outside the publish/commit paths (which handle their own): drop what
                # is in flight (replayed from its first offset), back off, go on. The process never needs a
                # restart for a broker fault.
                log.warning("kafka error in the scoring loop (%r); retrying", exc)
                self._abandon(inflight, "kafka error")  # seeks only: no broker call
                self.stop.wait(backoff.next())
        # Graceful stop: finish what is in hand (in order), commit, then close() leaves the group.
        while inflight:
            batch = inflight.popleft()
            if not self._finish(batch):
                inflight.appendleft(batch)
                self._abandon(inflight, "shutdown")

    def _step(self, inflight: "deque[_Batch]") -> None:
        if len(inflight) < self.s.max_inflight:
            timeout = 5 if inflight else self.s.poll_timeout_ms
            with self._timed("poll"):
                records = self.consumer.poll(timeout_ms=timeout)
            if self.listener.take_revoked() and inflight:
                # A rebalance while batches are in flight: drop them and what this poll returned, and
                # seek every partition still owned back to the earliest of those records.
                if records:
                    inflight.append(_Batch(records=records))
                self._abandon(inflight, "partitions were revoked while batches were in flight")
                return
            try:
                self.metrics.update_lag(self.consumer)
                with self._timed("validate"):
                    polled = {tp: [self._parse(rec) for rec in recs] for tp, recs in records.items()}
                    for tp, offset in self.merge.add(polled).items():
                        self.consumer.seek(tp, offset)  # buffer full: fetch the rest again later
                    # Grow batches while the service is busy and records keep coming; release at once when it
                    # is idle or the poll came back empty (caught up: latency first).
                    if not inflight or not records or len(self.merge) >= self.s.batch_max:
                        kept = self.merge.take(self.s.batch_max, self.consumer.assignment(), self._has_more)
                        if kept:
                            inflight.append(self._start(kept))
            except KafkaError:
                if records:
                    inflight.append(_Batch(records=records))  # so the caller's rewind covers them
                raise
        while inflight and (inflight[0].ready() or len(inflight) >= self.s.max_inflight):
            batch = inflight.popleft()
            if not self._finish(batch):
                inflight.appendleft(batch)
                self._abandon(inflight, "a batch could not finish")

    def _undrained(self) -> set:
        """Partitions with a fetch response that kafka-python holds unparsed. It updates a partition's
        high-water mark only when poll() parses the response, so until then the partition looks caught up.
        Private state of kafka-python 3.0.12 (pinned); if it moves, this returns nothing and the merge falls
        back to the high-water marks alone."""
        fetcher = getattr(self.consumer, "_fetcher", None)
        try:
            return {c.topic_partition for c in list(getattr(fetcher, "_completed_fetches", ()))}
        except Exception:  # noqa: BLE001 - best effort
            return set()

    def _forget(self, revoked) -> None:
        # Not committed; after the rebalance the partitions' owners resume at the committed offsets.
        self.merge.drop(revoked)

    def _has_more(self, tp) -> bool:
        """Whether the partition may have records not handed out by poll() yet (unknown counts as yes)."""
        if tp in self._undrained():
            return True  # a fetch response poll() has not parsed yet: its high-water mark is not known yet
        high = self.consumer.highwater(tp)
        if high is None:
            return True
        try:
            pos = self.consumer.position(tp, timeout_ms=50)
        except Exception:  # noqa: BLE001
            return True
        return pos is None or high > pos

    # -- one batch -------------------------------------------------------------------------------------
    def _start(self, records: dict) -> "_Batch":
        """Dead-letter the refused records and send the valid ones' sentiment call without waiting for it."""
        batch = _Batch(records=records)
        for tp, polled in records.items():
            self.metrics.consumed.labels(tp.topic).inc(len(polled))
            for p in polled:
                rejected = p.rejected or self._duplicate(p)
                if rejected is None:
                    batch.valid.append(p)
                else:
                    batch.rejected.append((p.record, rejected.reason, rejected.detail))
                    batch.futures.append(self._dead_letter(p.record, rejected.reason, rejected.detail))
        if batch.valid:
            batch.texts = [self._text(p.item) for p in batch.valid]
            if tracing.enabled():
                # One span per batch: the first traced item's trace is its parent, the other items' are links.
                carriers = [p.carrier for p in batch.valid if p.carrier]
                batch.parent = carriers[0] if carriers else {}
                batch.span = tracing.start("monitor.score", batch.parent, links=carriers[1:], kind="consumer",
                                           attributes={"items": len(batch.valid)})
            batch.t0 = time.perf_counter()
            batch.call = self.sentiment.start(batch.texts, metadata=tracing.metadata(batch.span))
        return batch

    def _parse(self, rec) -> _Polled:
        """Parse and validate one record, once. Nothing a message holds may stop the stream: an unexpected
        error while parsing dead-letters the message too."""
        try:
            item = parse_news(rec.value, max_bytes=self.s.max_message_bytes,
                              max_headline_chars=self.s.max_headline_chars, received_ms=rec.timestamp,
                              max_future_s=self.s.max_future_s, earliest=self.s.earliest_published_at)
        except Rejected as exc:
            return _Polled(rec, rejected=exc)
        except Exception as exc:  # noqa: BLE001
            log.error("unexpected error validating", extra={"record": f"{rec.topic}-{rec.partition}@{rec.offset}",
                                                            **failure(exc)})
            log.debug("validation failure detail", exc_info=True)  # the message may quote the news text
            return _Polled(rec, rejected=Rejected("unreadable", f"{type(exc).__name__}: {exc}"[:500]))
        digest = hashlib.blake2b(item.model_dump_json().encode(), digest_size=16).digest()
        carrier = tracing.carrier_of_headers(rec.headers) if tracing.enabled() else {}
        return _Polled(rec, item=item, digest=digest, carrier=carrier or {})

    def _duplicate(self, p: _Polled) -> Rejected | None:
        """An id seen before with different content (the first content wins); a redelivery or a producer retry
        repeats the same content and passes. Remembered per instance, last `dedupe_ids` ids, in batch order."""
        seen = self.seen_ids.get(p.item.id)
        if seen is not None and seen != p.digest:
            return Rejected("duplicate_id", f"id {p.item.id!r} was already used with different content")
        self.seen_ids[p.item.id] = p.digest
        self.seen_ids.move_to_end(p.item.id)
        while len(self.seen_ids) > self.s.dedupe_ids:
            self.seen_ids.popitem(last=False)
        return None

    def _finish(self, batch: "_Batch") -> bool:
        """Wait for the batch's scores (retrying with backoff), publish, confirm, commit. False: the batch was
        abandoned; the caller rewinds (see _abandon) so its records are redelivered."""
        try:
            scores = self._scores(batch)

            def send(attempt: int) -> list:
                if attempt:  # the dead letters sent at the start went with the replaced producer: again
                    batch.futures = [self._dead_letter(r, reason, detail, count=False)
                                     for r, reason, detail in batch.rejected]
                return self._send(batch, scores)

            def wait(delay: float) -> bool:
                self._wait(delay, batch.records)
                return True

            publish_confirmed(self.publisher, send, self.s.kafka.confirm_timeout_s, "the batch",
                              self.metrics.publish_failures.labels("score").inc, wait,
                              Backoff(self.s.retry_initial_s, self.s.retry_max_s), lambda: self._timed("confirm"))
            self._commit(batch)
            tracing.end(batch.span)
            return True
        except BatchAbandoned as exc:
            log.warning("batch abandoned (%s); its records will be redelivered", exc)
            if batch.call is not None:
                batch.call.cancel()
            tracing.end(batch.span)
            return False

    def _scores(self, batch: "_Batch") -> Scores:
        """The valid items' scores in `valid` order; the items the service refuses are dead-lettered."""
        if not batch.valid:
            return Scores([])
        with self._timed("wait_sentiment"):
            scores = self.sentiment.finish(batch.call, batch.t0, batch.texts,
                                           lambda delay: self._wait(delay, batch.records))
        for i, detail in scores.refused.items():
            record = batch.valid[i].record
            batch.rejected.append((record, "rejected_by_sentiment", detail))
            batch.futures.append(self._dead_letter(record, "rejected_by_sentiment", detail))
        return scores

    def _abandon(self, inflight: "deque[_Batch]", why: str) -> None:
        """Drop these batches (a failed one and those started after it) and seek each partition still owned back
        to the earliest offset among them, so nothing in them is skipped."""
        starts: dict = self.merge.first_offsets()  # buffered records come after those in flight; both go back
        self.merge.clear()
        if not inflight and not starts:
            return
        log.warning("dropping %d batch(es) in flight and %d buffered partition(s) (%s); their records will be "
                    "redelivered", len(inflight), len(starts), why)
        while inflight:
            batch = inflight.popleft()
            if batch.call is not None:
                batch.call.cancel()
            for tp, offset in first_offsets(batch.records).items():
                starts[tp] = min(offset, starts.get(tp, offset))
        assignment = self.consumer.assignment()
        for tp, offset in starts.items():
            if tp in assignment:
                self.consumer.seek(tp, offset)

    def _send(self, batch: "_Batch", scores: Scores) -> list:
        """Send the batch's scored records (its dead letters are on their way) and return every future."""
        valid, futures = batch.valid, list(batch.futures)
        now_ms = int(time.time() * 1000)
        # Event-time order within the batch, so each key's records reach news.scored in time order.
        t_publish = time.perf_counter()
        order = sorted(range(len(valid)), key=lambda i: (valid[i].item.published_at, valid[i].item.id))
        for i in order:
            p, result = valid[i], scores.results[i]
            if result is None:
                continue  # refused by the service: dead-lettered
            # An item keeps its own trace; the one that parents the batch's span (or one without a trace) gets the
            # span's, so its record leads on through the sentiment call.
            own = p.carrier if batch.span is not None else {}
            headers = tracing.headers(batch.span, own if own and own != batch.parent else None)
            for out in scored_records(p.item, p.record, result, scores.model, scores.elapsed, now_ms, self.tickers,
                                      self.s.watch_topics):
                futures.append(self.publisher.send(self.s.topics.scored, key=out.key.encode(),
                                                   value=out.model_dump_json().encode(), headers=headers))
        self.metrics.score_loop.labels("publish").inc(time.perf_counter() - t_publish)
        batch.scored_ts = [p.record.timestamp for p, result in zip(valid, scores.results) if result is not None]
        return futures

    def _commit(self, batch: "_Batch") -> None:
        acked = time.time()
        if self._lost_partitions(batch.records):
            raise BatchAbandoned("partitions were revoked before the commit")
        try:
            with self._timed("commit"):
                self.consumer.commit(next_offsets(batch.records))
        except KafkaError as exc:  # e.g. a rebalance took the partitions: their new owner replays them
            raise BatchAbandoned(f"commit failed: {exc!r}") from None
        self.metrics.scored.inc(len(batch.scored_ts))
        for ts in batch.scored_ts:
            if ts is not None and ts > 0:
                self.metrics.publish_to_scored.observe(max(0.0, acked - ts / 1000))

    def _dead_letter(self, rec, reason: str, detail: str, count: bool = True):
        if count:
            self.metrics.dead_lettered.labels(reason).inc()
        letter = DeadLetter.of(rec, reason, detail, max_value_bytes=self.s.dlq_max_value_bytes)
        return self.publisher.send(self.s.topics.dlq, key=rec.key, value=letter.model_dump_json().encode())

    def _text(self, item: NewsItem) -> str:
        if self.s.sentiment_text == "headline_body" and item.body:
            return f"{item.headline}. {item.body}"
        return item.headline

    def _wait(self, delay: float, records: dict) -> None:
        """Back off before a retry. Abandon on shutdown past the grace period, or when a partition of the batch
        was revoked."""
        # No poll() here (it would hand out more records): kafka-python 3 heartbeats from a background thread,
        # so the member stays in the group for max_poll_interval_ms; past that it is dropped, the commit fails
        # and the batch is replayed by whoever owns the partitions.
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
            if self._lost_partitions(records):
                raise BatchAbandoned("partitions were revoked while retrying")
            if self.stop.is_set():
                if self._stop_deadline is None:
                    self._stop_deadline = time.monotonic() + self.shutdown_grace_s
                elif time.monotonic() > self._stop_deadline:
                    raise BatchAbandoned("shutdown while the batch could not finish")

    _stop_deadline: float | None = None

    @contextmanager
    def _timed(self, phase: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.metrics.score_loop.labels(phase).inc(time.perf_counter() - t0)

    def _lost_partitions(self, records: dict) -> bool:
        revoked = self.listener.revoked
        assignment = self.consumer.assignment()
        return any(tp in revoked or tp not in assignment for tp in records)
