"""Stage 1: `news` -> validate (bad input to `news.dlq`) -> sentiment service (gRPC, batched) -> `news.scored`.

Each valid item is published once per matched entity and once per topic, keyed by that entity or topic,
so all of one entity's news lands in one `news.scored` partition in order (the repartition step that lets
stage 2 keep each entity's windows in exactly one instance). Items that match nothing get one `none`
record keyed by their id, so every valid input id appears in `news.scored`.

Delivery: the offsets of a batch are committed only after every DLQ and scored record it caused was
acknowledged by the broker. If the sentiment service fails, the batch is retried with backoff (the
partitions are paused meanwhile so the consumer stays in its group) and nothing is committed.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict, deque
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
import yaml
from kafka import KafkaConsumer
from kafka.errors import KafkaError

from nlpsuite.shared.logs import failure
from nlpsuite.shared import tracing
from nlpsuite.shared.security import open_channel
from nlpsuite.v1 import sentiment_pb2, sentiment_pb2_grpc

from .config import MonitorSettings
from .delivery import (
    Backoff, Listener, PublishFailed, Publisher, first_offsets, next_offsets, raise_if_unreadable,
)
from .merge import EventTimeMerge
from .metrics import MonitorMetrics
from .schema import DeadLetter, Entity, ModelRef, NewsItem, Rejected, ScoredItem, Score, parse_news

log = logging.getLogger(__name__)

class BatchAbandoned(Exception):
    """The batch in hand cannot finish (shutdown during an outage, or its partitions were revoked)."""


def load_ticker_names(path) -> dict[str, str]:
    if path is None:
        return {}
    data = yaml.safe_load(open(path)) or {}
    return {c["ticker"].upper(): c["name"] for c in data.get("companies", []) if c.get("ticker")}


@dataclass
class _Valid:
    record: object
    item: NewsItem


@dataclass
class _Batch:
    records: dict
    valid: list = field(default_factory=list)
    texts: list = field(default_factory=list)
    futures: list = field(default_factory=list)  # broker acks to wait for (dead letters)
    rejected: list = field(default_factory=list)  # (record, reason, detail) dead-lettered by the service
    call: object = None  # the in-flight gRPC future
    t0: float = 0.0
    span: object = None  # the batch's tracing span (tracing on only)
    parent: dict = field(default_factory=dict)  # the trace carrier that parents `span` (its first traced item's)

    def ready(self) -> bool:
        return self.call is None or self.call.done()


class Scorer:
    def __init__(self, settings: MonitorSettings, metrics: MonitorMetrics, stop: threading.Event):
        self.s = settings
        self.metrics = metrics
        self.stop = stop
        self.shutdown_grace_s = settings.shutdown_grace_s
        self.tickers = load_ticker_names(settings.watchlist)
        self.listener = Listener(on_revoked=self._forget)
        # polled records wait here until the event-time merge releases them into a batch
        self.merge = EventTimeMerge(settings.align_s, max_buffered=settings.buffer_max)
        self.consumer: KafkaConsumer | None = None
        self.publisher: Publisher | None = None
        self.seen_ids: OrderedDict[str, bytes] = OrderedDict()  # news id -> digest of its content (LRU)
        # Reconnect quickly once the service is back (gRPC's default reconnect backoff grows to 120 s).
        options = [("grpc.initial_reconnect_backoff_ms", int(settings.retry_initial_s * 1000)),
                   ("grpc.min_reconnect_backoff_ms", int(settings.retry_initial_s * 1000)),
                   ("grpc.max_reconnect_backoff_ms", int(settings.retry_max_s * 1000))]
        self.channel = open_channel(settings.sentiment_target, settings.sentiment_tls, settings.sentiment_secret(),
                                    options=options, priority=settings.sentiment_priority)
        self.stub = sentiment_pb2_grpc.SentimentServiceStub(self.channel)

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
        self.channel.close()

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
                    for tp, offset in self.merge.add(records).items():
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
        """Validate (dead-letter the bad ones) and send the sentiment call without waiting for it."""
        batch = _Batch(records=records)
        for tp, recs in records.items():
            self.metrics.consumed.labels(tp.topic).inc(len(recs))
            for rec in recs:
                try:
                    batch.valid.append(_Valid(rec, self._validate(rec)))
                except Rejected as exc:
                    batch.rejected.append((rec, exc.reason, exc.detail))
                    batch.futures.append(self._dead_letter(rec, exc.reason, exc.detail))
        if batch.valid:
            batch.texts = [self._text(v.item) for v in batch.valid]
            if tracing.enabled():
                # One span per batch: the first traced item's trace is its parent, the other items' are links.
                carriers = [c for c in (tracing.carrier_of_headers(v.record.headers) for v in batch.valid) if c]
                batch.parent = carriers[0] if carriers else {}
                batch.span = tracing.start("monitor.score", batch.parent, links=carriers[1:], kind="consumer",
                                           attributes={"items": len(batch.valid)})
            batch.t0 = time.perf_counter()
            batch.call = self.stub.Analyze.future(sentiment_pb2.AnalyzeRequest(texts=batch.texts),
                                                  timeout=self.s.sentiment_timeout_s,
                                                  metadata=tracing.metadata(batch.span))
        return batch

    def _validate(self, rec) -> NewsItem:
        """Parse one record, or raise Rejected. Nothing a message holds may stop the stream: an unexpected
        error while parsing dead-letters the message too."""
        try:
            item = parse_news(rec.value, max_bytes=self.s.max_message_bytes,
                              max_headline_chars=self.s.max_headline_chars, received_ms=rec.timestamp,
                              max_future_s=self.s.max_future_s, earliest=self.s.earliest_published_at)
        except Rejected:
            raise
        except Exception as exc:  # noqa: BLE001
            log.error("unexpected error validating", extra={"record": f"{rec.topic}-{rec.partition}@{rec.offset}",
                                                            **failure(exc)})
            log.debug("validation failure detail", exc_info=True)  # the message may quote the news text
            raise Rejected("unreadable", f"{type(exc).__name__}: {exc}"[:500]) from None
        self._check_id(item)
        return item

    def _check_id(self, item: NewsItem) -> None:
        """Dead-letter an id seen before with different content (the first content wins). A redelivery or a
        producer retry repeats the same content and passes. Remembered per instance, last `dedupe_ids` ids."""
        digest = hashlib.blake2b(item.model_dump_json().encode(), digest_size=16).digest()
        seen = self.seen_ids.get(item.id)
        if seen is not None and seen != digest:
            raise Rejected("duplicate_id", f"id {item.id!r} was already used with different content")
        self.seen_ids[item.id] = digest
        self.seen_ids.move_to_end(item.id)
        while len(self.seen_ids) > self.s.dedupe_ids:
            self.seen_ids.popitem(last=False)

    def _finish(self, batch: "_Batch") -> bool:
        """Wait for the batch's scores (retrying with backoff), publish, confirm, commit. False: the batch was
        abandoned; the caller rewinds (see _abandon) so its records are redelivered."""
        backoff = Backoff(self.s.retry_initial_s, self.s.retry_max_s)
        try:
            results, model, elapsed = self._analyze(batch)
            while True:
                try:
                    self._publish(batch, results, model, elapsed)
                    tracing.end(batch.span)
                    return True
                except PublishFailed as exc:
                    self.metrics.publish_failures.labels("score").inc()
                    log.warning("publishing the batch failed (%s); replacing the producer and retrying", exc)
                    self.publisher.replace()
                    self._wait(backoff.next(), batch.records)
                    batch.futures = [self._dead_letter(r, reason, detail, count=False)
                                     for r, reason, detail in batch.rejected]
        except BatchAbandoned as exc:
            log.warning("batch abandoned (%s); its records will be redelivered", exc)
            if batch.call is not None:
                batch.call.cancel()
            tracing.end(batch.span)
            return False

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

    def _publish(self, batch: "_Batch", results, model: dict, elapsed: float) -> None:
        records, valid, futures = batch.records, batch.valid, list(batch.futures)
        topic = self.s.topics
        now_ms = int(time.time() * 1000)
        # Event-time order within the batch, so each key's records reach news.scored in time order.
        t_publish = time.perf_counter()
        order = sorted(range(len(valid)), key=lambda i: (valid[i].item.published_at, valid[i].item.id))
        scored_ts: list[int | None] = []
        for i in order:
            v, res = valid[i], results[i]
            if res is None:
                continue  # rejected by the service: dead-lettered in _analyze
            # An item keeps its own trace; the one that parents the batch's span (or one without a trace) gets the
            # span's, so its record leads on through the sentiment call.
            own = tracing.carrier_of_headers(v.record.headers) if batch.span is not None else {}
            headers = tracing.headers(batch.span, own if own and own != batch.parent else None)
            for out in self._scored(v, res, model, elapsed, now_ms):
                futures.append(self.publisher.send(topic.scored, key=out.key.encode(),
                                                   value=out.model_dump_json().encode(), headers=headers))
            scored_ts.append(v.record.timestamp)
        self.metrics.score_loop.labels("publish").inc(time.perf_counter() - t_publish)
        with self._timed("confirm"):
            self.publisher.confirm(futures, timeout_s=self.s.kafka.request_timeout_ms / 1000 + 5)
        acked = time.time()
        if self._lost_partitions(records):
            raise BatchAbandoned("partitions were revoked before the commit")
        try:
            with self._timed("commit"):
                self.consumer.commit(next_offsets(records))
        except KafkaError as exc:  # e.g. a rebalance took the partitions: their new owner replays them
            raise BatchAbandoned(f"commit failed: {exc!r}") from None
        self.metrics.scored.inc(len(scored_ts))
        for ts in scored_ts:
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

    def _analyze(self, batch: "_Batch"):
        """Results in `valid` order (None for an item the service rejects), model info and call time."""
        valid, records = batch.valid, batch.records
        if not valid:
            return [], {}, 0.0
        try:
            try:
                with self._timed("wait_sentiment"):
                    resp = batch.call.result()
                elapsed = time.perf_counter() - batch.t0
                self.metrics.sentiment_seconds.observe(elapsed)
            except grpc.RpcError as exc:
                self._failed(exc)  # raises _Invalid for INVALID_ARGUMENT
                self._wait(self._first_delay, records)
                resp, elapsed = self._call(batch.texts, records)
            return list(resp.results), _model(resp), elapsed
        except _Invalid:
            pass
        # The service rejected the batch: find the bad items one by one and dead-letter them.
        results, model, elapsed = [], {}, 0.0
        for v, text in zip(valid, batch.texts):
            try:
                resp, el = self._call([text], records)
                results.append(resp.results[0])
                model, elapsed = _model(resp), elapsed + el
            except _Invalid as exc:
                results.append(None)
                batch.rejected.append((v.record, "rejected_by_sentiment", str(exc)))
                batch.futures.append(self._dead_letter(v.record, "rejected_by_sentiment", str(exc)))
        return results, model, elapsed

    @property
    def _first_delay(self) -> float:
        return self.s.retry_initial_s

    def _failed(self, exc: grpc.RpcError) -> None:
        code = exc.code()
        self.metrics.sentiment_errors.labels(code.name if code else "UNKNOWN").inc()
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            raise _Invalid(exc.details()) from None
        log.warning("sentiment call failed (%s: %s); retrying with backoff, nothing committed", code, exc.details())

    def _call(self, texts: list[str], records: dict):
        backoff = Backoff(self.s.retry_initial_s, self.s.retry_max_s)
        while True:
            t0 = time.perf_counter()
            try:
                resp = self.stub.Analyze(sentiment_pb2.AnalyzeRequest(texts=texts), timeout=self.s.sentiment_timeout_s)
                elapsed = time.perf_counter() - t0
                self.metrics.sentiment_seconds.observe(elapsed)
                return resp, elapsed
            except grpc.RpcError as exc:
                self._failed(exc)
                delay = backoff.next()
                self._wait(delay, records)

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

    def _scored(self, v: _Valid, res, model: dict, elapsed: float, now_ms: int) -> list[ScoredItem]:
        entities: dict[str, Entity] = {}
        for m in res.entities:
            e = Entity(name=m.name, ticker=m.ticker.upper(), matched=m.matched)
            entities.setdefault(e.key, e)
        for t in v.item.tickers:
            t = t.strip().upper()
            if t and t not in entities:
                entities[t] = Entity(name=self.tickers.get(t, t), ticker=t, matched="tickers")
        topics = sorted(set(res.topics))
        base = dict(
            item=v.item, label=res.label, confidence=res.confidence,
            scores=[Score(label=s.label, score=s.score) for s in res.scores], topics=topics,
            entities=list(entities.values()), model=model, truncated=res.truncated,
            source_topic=v.record.topic, source_partition=v.record.partition, source_offset=v.record.offset,
            published_ms=v.record.timestamp, sentiment_ms=round(elapsed * 1000, 3), scored_at_ms=now_ms,
        )
        out = [ScoredItem(key_kind="entity", key=key, **base) for key in entities]
        if self.s.watch_topics:
            out += [ScoredItem(key_kind="topic", key=t, **base) for t in topics]
        if not out:
            out.append(ScoredItem(key_kind="none", key=v.item.id, **base))
        return out


class _Invalid(Exception):
    pass


def _model(resp) -> ModelRef:
    m = resp.model
    return ModelRef(name=m.name, version=m.version, variant=m.variant, provider=m.provider)
