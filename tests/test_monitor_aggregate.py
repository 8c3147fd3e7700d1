"""Stage 2 against a real Tansu broker with crafted `news.scored` records (no model needed): window state
is rebuilt from the log on assignment, and an alert already on the log is never published again."""
from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from kafka import KafkaProducer

from nlpsuite.services.monitor.app import Monitor
from nlpsuite.services.monitor.config import KafkaSettings, MonitorSettings, SurgeRule
from nlpsuite.services.monitor.schema import Entity, NewsItem, Score, ScoredItem
from nlpsuite.services.monitor.local_replay import read_topic, unique_topics

pytestmark = pytest.mark.timeout(180)
T0 = datetime(2026, 3, 2, 11, 30, tzinfo=timezone.utc)


def scored(i: int, minute: float, negative: bool = True) -> ScoredItem:
    item = NewsItem(id=f"n-{i}", headline=f"Marrowind headline {i}", source="Test Wire",
                    published_at=T0 + timedelta(minutes=minute), tickers=["MWCH"])
    neg = 0.9 if negative else 0.05
    return ScoredItem(key_kind="entity", key="MWCH", item=item, label="negative" if negative else "neutral",
                      confidence=0.9, scores=[Score(label="negative", score=neg), Score(label="neutral", score=1 - neg)],
                      topics=[], entities=[Entity(name="Marrowind Chemicals", ticker="MWCH")],
                      model={"name": "sentiment", "version": "1"}, source_topic="news", source_partition=0,
                      source_offset=i, published_ms=int(time.time() * 1000))


def publish(broker, topic, items):
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, allow_auto_create_topics=False)
    for s in items:
        p.send(topic, key=s.key.encode(), value=s.model_dump_json().encode())
    p.flush()
    p.close()


def settings(broker, topics, group):
    return MonitorSettings(kafka=KafkaSettings(bootstrap_servers=broker.bootstrap).local(), topics=topics,
                           group_id=group, poll_timeout_ms=300,
                           entity_rule=SurgeRule(min_negatives=5, min_share=0.5, min_ratio=2.0))


def run_until_consumed(s: MonitorSettings, count: int) -> Monitor:
    m = Monitor(s, stages=("aggregate",)).start()
    deadline = time.monotonic() + 60
    while m.metrics.consumed.labels(s.topics.scored)._value.get() < count:
        assert time.monotonic() < deadline and not m.errors
        time.sleep(0.1)
    m.stop()  # graceful: commit, leave the group
    return m


def test_restarted_instance_rebuilds_windows_from_the_log_and_does_not_repeat_alerts(broker):
    topics = unique_topics("agg")
    broker.create_topics(topics.all(), partitions=3)
    group = f"g-{uuid.uuid4().hex[:6]}"
    publish(broker, topics.scored, [scored(1, 0), scored(2, 2), scored(3, 4), scored(3, 4)])  # one duplicate
    first = run_until_consumed(settings(broker, topics, group), 4)
    assert first.aggregator.published == []

    # Two more negatives: 3 (from the rebuilt state) + 2 = 5 fires; a blind instance would see only 2.
    publish(broker, topics.scored, [scored(4, 6), scored(5, 8), scored(6, 9)])
    second = run_until_consumed(settings(broker, topics, group), 3)
    assert len(second.aggregator.published) == 1
    alert = second.aggregator.published[0]
    assert alert.negatives == 5 and alert.triggered_by == "n-5"
    assert second.metrics.rebuilt._value.get() >= 4

    # A new group replays everything from the start: the same alert id is already on the log, so it is
    # not published again.
    third = run_until_consumed(settings(broker, topics, f"{group}-replay"), 7)
    assert third.aggregator.published == []
    on_log = [json.loads(r.value) for r in read_topic(broker.bootstrap, topics.alerts, min_count=1)]
    assert [a["id"] for a in on_log] == [alert.id]
    assert on_log[0] == json.loads(alert.to_bytes())


def test_webhook_posts_each_alert_with_retries(broker):
    import http.server
    import threading

    received, attempts = [], []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            attempts.append(body)
            if len(attempts) <= 2:  # fail twice, then accept
                self.send_response(503)
                self.end_headers()
                return
            received.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        topics = unique_topics("hook")
        broker.create_topics(topics.all(), partitions=2)
        publish(broker, topics.scored, [scored(i, i) for i in range(1, 6)])
        s = settings(broker, topics, f"g-{uuid.uuid4().hex[:6]}").model_copy(
            update={"webhook_url": f"http://127.0.0.1:{server.server_port}/alerts"})
        m = Monitor(s, stages=("aggregate",))
        m.sink.initial_backoff_s = 0.05
        m.start()
        deadline = time.monotonic() + 30
        while not received:
            assert time.monotonic() < deadline, attempts
            time.sleep(0.1)
        m.stop()
    finally:
        server.shutdown()
    assert len(attempts) == 3
    assert [a["id"] for a in received] == [a.id for a in m.aggregator.published]
    assert received[0]["key"] == "MWCH" and received[0]["negatives"] == 5
