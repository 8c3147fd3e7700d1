"""Local replays of the monitor (tests, benchmarks/stream_monitor.py): fresh topic names, monitor settings for a replay
of the example news at full speed on the local broker, and a reader of a whole topic."""
from __future__ import annotations

import time
import uuid
from pathlib import Path


def read_topic(bootstrap: str, topic: str, min_count: int = 0, timeout_s: float = 60.0, idle_s: float = 1.5):
    """Every record of `topic` (all partitions), waiting until at least `min_count` arrived and the topic has
    been idle for `idle_s` at its high-water marks."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", fetch_max_wait_ms=50, allow_auto_create_topics=False)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out, deadline, last_new = [], time.monotonic() + timeout_s, time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=200)
            for recs in batch.values():
                out.extend(recs)
                if recs:
                    last_new = time.monotonic()
            at_end = all(consumer.highwater(tp) is not None and consumer.position(tp) >= consumer.highwater(tp)
                         for tp in tps)
            if len(out) >= min_count and at_end and time.monotonic() - last_new >= idle_s:
                break
        return out
    finally:
        consumer.close()


def unique_topics(prefix: str = "t"):
    from nlpsuite.services.monitor.config import Topics

    tag = f"{prefix}-{uuid.uuid4().hex[:8]}"
    return Topics(news=f"{tag}.news", scored=f"{tag}.news.scored", alerts=f"{tag}.alerts", dlq=f"{tag}.news.dlq")


def replay_settings(bootstrap: str, topics, sentiment_target: str, **overrides):
    """Settings for a replay of the example file at full speed on the local broker.

    The replay compresses 4 simulated hours into seconds, so the allowed lateness (event time) is raised to
    cover the reordering between the `news` partitions and instances (in real time it is milliseconds of
    skew); the partition alignment (`align_s`) keeps that reordering well under it."""
    from nlpsuite.services.monitor.config import KafkaSettings, MonitorSettings, WindowSettings
    from nlpsuite.examples import __file__ as examples_init

    kafka = KafkaSettings(bootstrap_servers=bootstrap, client_id="monitor-test").local()
    defaults = dict(kafka=kafka, topics=topics, group_id=f"g-{uuid.uuid4().hex[:8]}", sentiment_target=sentiment_target,
                    watchlist=Path(examples_init).parent / "watchlist.yaml",
                    windows=WindowSettings(allowed_lateness_s=7200), align_s=600, retry_initial_s=0.1, retry_max_s=1.0,
                    poll_timeout_ms=500)
    return MonitorSettings(**(defaults | overrides))
