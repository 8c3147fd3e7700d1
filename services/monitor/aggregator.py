"""Stage 2: `news.scored` -> event-time windows per entity and per topic -> `alerts`.

This stage runs in its own consumer group (`<group_id>.aggregate`). Because `news.scored` is keyed by
entity/topic, the partitions this instance is assigned decide which keys' windows it owns: one key's
windows live in exactly one instance. Alerts derived from `news.scored` partition p are written to
`alerts` partition p (keyed by the entity), so the alerts of the keys an instance owns sit in the
partitions it can read back.

When a partition is assigned, its window state is rebuilt before any new record of it is processed:
the retained `news.scored` partition is re-read up to the group's committed offset (bounded by
`rebuild_max_records`) without evaluating, and `alerts` partition p is read to learn which alert ids were
already published and when each key last alerted (cooldown). So a restarted or newly assigned instance
does not start blind, and never publishes an alert id that is already on the log.
"""
from __future__ import annotations

import logging
import threading
import time

from kafka import KafkaConsumer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from nlpsuite.shared import tracing

from .config import MonitorSettings
from .delivery import (
    Backoff, Listener, Publisher, first_offsets, next_offsets, publish_confirmed, raise_if_unreadable, sleep_until,
)
from .metrics import MonitorMetrics
from .schema import Alert, ScoredItem
from .windows import Event, SurgeDetector

log = logging.getLogger(__name__)

NEGATIVE = "negative"


class RebuildTimeout(RuntimeError):
    pass


class Aggregator:
    def __init__(self, settings: MonitorSettings, metrics: MonitorMetrics, stop: threading.Event, sink=None):
        self.s = settings
        self.metrics = metrics
        self.stop = stop
        self.sink = sink  # optional: called with each published Alert (e.g. the webhook)
        self.detectors = {
            "entity": SurgeDetector("entity", settings.windows, settings.entity_rule),
            "topic": SurgeDetector("topic", settings.windows, settings.topic_rule),
        }
        self.listener = Listener(on_assigned=self._assigned, on_revoked=self._revoked)
        self.pending_rebuild: set[TopicPartition] = set()
        self.consumer: KafkaConsumer | None = None
        self.publisher: Publisher | None = None
        self.published: list[Alert] = []  # this process's publications (tests and the benchmark read it)

    @property
    def group_id(self) -> str:
        return f"{self.s.group_id}.aggregate"

    def open(self) -> None:
        k = self.s.kafka
        self.consumer = KafkaConsumer(**k.consumer(self.group_id, max_poll_records=self.s.batch_max))
        self.consumer.subscribe([self.s.topics.scored], listener=self.listener)
        self.publisher = Publisher(k.producer(),
                                   on_replace=lambda: self.metrics.producer_replacements.labels("alert").inc())
        self._check_partitions()

    def _check_partitions(self) -> None:
        scored = self.consumer.partitions_for_topic(self.s.topics.scored) or set()
        alerts = self.publisher.partitions_for(self.s.topics.alerts) or set()
        if len(alerts) < len(scored):
            raise RuntimeError(f"topic {self.s.topics.alerts} needs at least as many partitions as "
                               f"{self.s.topics.scored} ({len(alerts)} < {len(scored)})")

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
        if self.publisher is not None:
            self.publisher.close(timeout_s=10)

    # -- rebalance -------------------------------------------------------------------------------------
    def _assigned(self, assigned: set[TopicPartition]) -> None:
        # Called inside poll(): only note them; the loop rebuilds them before processing any of their records
        # (those start at the committed offset, where the rebuild stops). No pause(): kafka-python 3.0.12 can
        # leave a paused partition's parked records stuck after resume().
        self.pending_rebuild |= set(assigned)

    def _revoked(self, revoked: set[TopicPartition]) -> None:
        for tp in revoked:
            for det in self.detectors.values():
                det.drop_partition(tp.partition)
            self.pending_rebuild.discard(tp)

    def rebuild(self, tps: set[TopicPartition]) -> None:
        """Re-read the retained log for these partitions: scored records up to the committed offset, and all
        alerts already published from them."""
        t0 = time.monotonic()
        committed = {tp: self.consumer.committed(tp) for tp in tps}
        reader = KafkaConsumer(**self.s.kafka.consumer(None, max_poll_records=2000, enable_auto_commit=False))
        try:
            stop_at: dict[TopicPartition, int] = {}
            for tp in tps:
                for det in self.detectors.values():
                    det.drop_partition(tp.partition)
                end = committed[tp] or 0
                if end > 0:
                    stop_at[tp] = end
                stop_at[TopicPartition(self.s.topics.alerts, tp.partition)] = -1  # up to the high-water mark
            reader.assign(list(stop_at))
            for tp, end in stop_at.items():
                start = 0 if end < 0 else max(0, end - self.s.rebuild_max_records)
                reader.seek(tp, start)
            done: set[TopicPartition] = set()
            deadline = time.monotonic() + 120
            n = 0
            while len(done) < len(stop_at):
                if time.monotonic() > deadline:
                    raise RebuildTimeout(f"rebuilding window state timed out for {sorted(stop_at)}")
                batch = reader.poll(timeout_ms=200)
                for tp, recs in batch.items():
                    if tp in done:
                        continue
                    for rec in recs:
                        end = stop_at[tp]
                        if end >= 0 and rec.offset >= end:
                            break
                        n += 1
                        if tp.topic == self.s.topics.alerts:
                            self._restore_alert(tp.partition, rec.value)
                        else:
                            self._apply(tp.partition, rec.value, evaluate=False)
                for tp, end in stop_at.items():
                    if tp in done:
                        continue
                    pos = reader.position(tp)
                    target = end if end >= 0 else reader.highwater(tp)
                    if target is not None and pos is not None and pos >= target:
                        done.add(tp)
                        reader.pause(tp)
            self.metrics.rebuilt.inc(n)
            log.info("rebuilt window state of %s from %d records in %.2fs", sorted(str(t) for t in tps), n,
                     time.monotonic() - t0)
        finally:
            reader.close()

    def _restore_alert(self, partition: int, value: bytes) -> None:
        try:
            alert = Alert.model_validate_json(value)
        except Exception:  # noqa: BLE001 - not ours; ignore
            return
        det = self.detectors.get(alert.key_kind)
        if det is not None:
            det.mark_emitted(partition, alert)

    # -- processing ------------------------------------------------------------------------------------
    def _apply(self, partition: int, value: bytes, evaluate: bool = True) -> tuple[Alert, int | None] | None:
        try:
            scored = ScoredItem.model_validate_json(value)
        except Exception:  # noqa: BLE001 - our own topic; a bad record is logged and skipped
            log.error("skipping an unreadable news.scored record in partition %d", partition)
            return None
        det = self.detectors.get(scored.key_kind)
        if det is None:
            return None
        neg = next((s.score for s in scored.scores if s.label == NEGATIVE), 0.0)
        item = scored.item
        event = Event(id=item.id, time=item.event_time, negative=scored.label == NEGATIVE, negative_score=neg,
                      headline=item.headline)
        late = det.late
        name = next((e.name for e in scored.entities if e.key == scored.key), scored.key)
        alert = det.add(partition, scored.key, name, event, evaluate=evaluate)
        if det.late > late and evaluate:
            self.metrics.late.inc()
        if alert is not None:
            return alert, scored.published_ms
        return None

    def run(self) -> None:
        backoff = Backoff(self.s.retry_initial_s, self.s.retry_max_s)
        while not self.stop.is_set():
            records = self.consumer.poll(timeout_ms=self.s.poll_timeout_ms)
            self.listener.take_revoked()
            if self.pending_rebuild:
                tps, self.pending_rebuild = set(self.pending_rebuild), set()
                owned = self.consumer.assignment()
                tps = {tp for tp in tps if tp in owned}
                if tps:
                    try:
                        self.rebuild(tps)
                        backoff.reset()
                    except (KafkaError, RebuildTimeout) as exc:
                        raise_if_unreadable(exc, self.consumer)
                        # A broker fault while re-reading the log: no record of these partitions may be
                        # evaluated without their state, so put them back and try again.
                        log.warning("rebuilding %s failed (%r); retrying", sorted(map(str, tps)), exc)
                        self.pending_rebuild |= tps
                        for tp, offset in first_offsets(records).items():
                            if tp in tps:
                                self.consumer.seek(tp, offset)
                        records = {tp: recs for tp, recs in records.items() if tp not in tps}
                        sleep_until(time.monotonic() + backoff.next(), self.stop)
            self.metrics.update_lag(self.consumer)
            if records:
                self.process(records)

    def process(self, records: dict) -> bool:
        backoff = Backoff(self.s.retry_initial_s, self.s.retry_max_s)
        # Window state changes as records are applied, so a failed publish is retried by re-sending the
        # alerts already computed (never by re-applying the records).
        alerts: list[tuple[int, Alert, int | None, list | None]] = []
        for tp, recs in records.items():
            self.metrics.consumed.labels(tp.topic).inc(len(recs))
            for rec in recs:
                out = self._apply(tp.partition, rec.value)
                if out is not None:
                    alert, published_ms = out
                    # The alert continues the trace of the scored record that tipped the window over.
                    headers = tracing.headers(carrier=tracing.carrier_of_headers(rec.headers)) \
                        if tracing.enabled() and rec.headers else None
                    alerts.append((tp.partition, alert, published_ms, headers))

        def send(_attempt: int) -> list:
            return [self.publisher.send(self.s.topics.alerts, key=a.key.encode(), value=a.to_bytes(), partition=p,
                                        headers=h) for p, a, _, h in alerts]

        def wait(delay: float) -> bool:
            sleep_until(time.monotonic() + delay, self.stop)
            return not self.stop.is_set()

        if not publish_confirmed(self.publisher, send, self.s.kafka.confirm_timeout_s, "alerts",
                                 self.metrics.publish_failures.labels("alert").inc, wait, backoff):
            return False  # nothing committed: replayed (same ids) after restart
        acked = time.time()
        for p, alert, published_ms, _ in alerts:
            self.metrics.alerts.labels(alert.key_kind).inc()
            if published_ms:
                self.metrics.publish_to_alert.observe(max(0.0, acked - published_ms / 1000))
            self.published.append(alert)
            log.warning("ALERT %s %s %s: %d/%d negative in %s..%s (baseline %.2f)", alert.id, alert.key_kind,
                        alert.key, alert.negatives, alert.total, alert.window_start.isoformat(),
                        alert.window_end.isoformat(), alert.baseline)
            if self.sink is not None:
                self.sink(alert)
        owned = self.consumer.assignment()
        commit = {tp: om for tp, om in next_offsets(records).items() if tp in owned}
        if commit:
            try:
                self.consumer.commit(commit)
            except Exception as exc:  # noqa: BLE001 - e.g. a rebalance: the new owner replays, same ids
                log.warning("commit failed (%s); records will be replayed by the partition's owner", exc)
                return False
        return True
