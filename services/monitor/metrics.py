"""Prometheus metrics of one monitor instance (own registry, so several instances can share a process)."""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0)


class MonitorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.consumed = Counter("nlpsuite_monitor_consumed_total", "records read, by topic", ["topic"], registry=r)
        self.scored = Counter("nlpsuite_monitor_scored_total", "news items scored and published", registry=r)
        self.dead_lettered = Counter("nlpsuite_monitor_dead_lettered_total", "records sent to the DLQ",
                                     ["reason"], registry=r)
        self.alerts = Counter("nlpsuite_monitor_alerts_total", "alerts published", ["key_kind"], registry=r)
        self.late = Counter("nlpsuite_monitor_late_total", "items dropped: all their windows had closed", registry=r)
        self.sentiment_errors = Counter("nlpsuite_monitor_sentiment_errors_total",
                                        "failed sentiment calls (retried)", ["code"], registry=r)
        self.publish_failures = Counter("nlpsuite_monitor_publish_failures_total",
                                        "batches whose produce failed (replayed)", ["stage"], registry=r)
        self.producer_replacements = Counter("nlpsuite_monitor_producer_replacements_total",
                                             "producers replaced after a failed publish", ["stage"], registry=r)
        self.webhook_failures = Counter("nlpsuite_monitor_webhook_failures_total",
                                        "webhook posts given up after retries", registry=r)
        self.lag = Gauge("nlpsuite_monitor_consumer_lag", "high-water mark minus position",
                         ["topic", "partition"], registry=r)
        self.publish_to_scored = Histogram("nlpsuite_monitor_publish_to_scored_seconds",
                                           "news record timestamp to scored record acknowledged",
                                           buckets=LATENCY_BUCKETS, registry=r)
        self.publish_to_alert = Histogram("nlpsuite_monitor_publish_to_alert_seconds",
                                          "triggering news record timestamp to alert acknowledged",
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.sentiment_seconds = Histogram("nlpsuite_monitor_sentiment_call_seconds", "sentiment batch call",
                                           buckets=LATENCY_BUCKETS, registry=r)
        self.score_loop = Counter("nlpsuite_monitor_score_loop_seconds_total",
                                  "wall time of the scoring thread by phase (poll, validate, wait_sentiment, "
                                  "publish, confirm, commit): where it waits and where it works", ["phase"],
                                  registry=r)
        self._lag_at: dict[int, float] = {}
        self.rebuilt = Counter("nlpsuite_monitor_rebuilt_records_total",
                               "records re-read from the log to rebuild window state", registry=r)

    def serve(self, port: int, addr: str = "0.0.0.0"):
        return start_http_server(port, addr=addr, registry=self.registry)

    def update_lag(self, consumer, every_s: float = 1.0) -> None:
        """Refresh the lag gauges of this consumer's partitions, at most once per `every_s`."""
        now = time.monotonic()
        last = self._lag_at.get(id(consumer), 0.0)
        if now - last < every_s:
            return
        self._lag_at[id(consumer)] = now
        for tp in consumer.assignment():
            high = consumer.highwater(tp)  # from fetch responses; right on Kafka and on Tansu
            if high is None:
                continue
            try:
                pos = consumer.position(tp, timeout_ms=100)
            except Exception:  # noqa: BLE001 - lag is best effort
                continue
            if pos is not None:
                self.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - pos))
