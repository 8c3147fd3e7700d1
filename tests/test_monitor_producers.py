"""What real producers send to `news`: every compression codec, messages near and over the size limits, and a
batch this process cannot read. Real Tansu broker, real sentiment server (subprocess), real monitor.

Slow: they need a real sentiment model (set NLPSUITE_TEST_MODELS to reuse a built one)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from nlpsuite.services.monitor.app import Monitor
from nlpsuite.services.monitor.local_replay import read_topic, replay_settings
from tests.support import ITEMS, NEWS, ROOT, new_topics, scored_ids, wait_for_ids

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_every_compression_codec_is_scored_and_consumers_read_committed(broker, sentiment):
    """Ten news per codec (none, gzip, snappy, lz4, zstd), each from its own producer. Before the fix the first
    snappy/lz4/zstd batch stopped the monitor for good: 0 of 40 scored.

    Also: both stages read with isolation_level=read_committed, so on Apache Kafka records of aborted
    transactions are never scored. That filtering itself cannot be checked here: the local Tansu broker hands
    aborted records to read_committed readers too (shared notes, local-kafka.md)."""
    from kafka import KafkaProducer

    topics = new_topics(broker, "codec")
    codecs = [None, "gzip", "snappy", "lz4", "zstd"]
    monitor = Monitor(replay_settings(broker.bootstrap, topics, sentiment.target)).start()
    try:
        assert monitor.scorer.consumer.config["isolation_level"] == "read_committed"
        assert monitor.aggregator.consumer.config["isolation_level"] == "read_committed"
        for i, codec in enumerate(codecs):
            producer = KafkaProducer(**monitor.s.kafka.producer(compression_type=codec, linger_ms=50))
            for item in ITEMS[i * 10:(i + 1) * 10]:
                producer.send(topics.news, key=item["id"].encode(), value=json.dumps(item).encode())
            producer.flush(30)
            producer.close()
        want = {item["id"] for item in ITEMS[:10 * len(codecs)]}
        scored = wait_for_ids(broker, topics.scored, want, timeout_s=120)
    finally:
        monitor.stop()
    assert not monitor.errors
    assert scored_ids(scored) == want


def test_messages_near_and_over_a_megabyte_are_dead_lettered_in_records_that_fit(broker, sentiment):
    """A ~900 KB and a ~3 MB news message between valid news on one partition. Before the fix the dead letter
    of the 900 KB one (its value in base64, ~1.2 MB) was over the producer's 1 MiB request limit: the batch was
    retried forever, later news were never scored, and scored records were re-published again and again."""
    from kafka import KafkaProducer

    topics = new_topics(broker, "big")
    big = [b'{"id": "big-1", "headline": "' + b"x" * 900_000 + b'"}', b"not json " + b"y" * 3_000_000]
    before, after = ITEMS[:10], ITEMS[10:20]
    monitor = Monitor(replay_settings(broker.bootstrap, topics, sentiment.target)).start()
    try:
        producer = KafkaProducer(**monitor.s.kafka.producer(max_request_size=8 << 20))
        send = lambda key, value: producer.send(topics.news, key=key, value=value, partition=0)  # noqa: E731
        for item in before:
            send(item["id"].encode(), json.dumps(item).encode())
        for i, value in enumerate(big):
            send(f"big-{i}".encode(), value)
        for item in after:
            send(item["id"].encode(), json.dumps(item).encode())
        producer.flush(30)
        producer.close()
        want = {item["id"] for item in before + after}
        scored = wait_for_ids(broker, topics.scored, want, timeout_s=120)
        time.sleep(3)  # a jammed batch would be re-published meanwhile
        scored = read_topic(broker.bootstrap, topics.scored, min_count=len(scored))
        dlq = read_topic(broker.bootstrap, topics.dlq, min_count=2)
    finally:
        monitor.stop()
    assert not monitor.errors
    assert scored_ids(scored) == want
    copies = Counter((json.loads(r.value)["item"]["id"], r.key) for r in scored)
    assert max(copies.values()) == 1, "scored records were published more than once"
    letters = sorted((json.loads(r.value) for r in dlq), key=lambda d: d["offset"])
    assert [d["reason"] for d in letters] == ["oversize", "oversize"]
    assert [d["value_bytes"] for d in letters] == [len(v) for v in big]
    assert all(d["truncated"] for d in letters)
    assert all(len(r.value) < 1_000_000 for r in dlq)
    import hashlib

    assert [d["value_sha256"] for d in letters] == [hashlib.sha256(v).hexdigest() for v in big]


def test_a_batch_the_monitor_cannot_decompress_stops_it_with_a_clear_error(broker, sentiment, tmp_path):
    """`nlpsuite stream` without the zstd library meets a zstd batch. Before the fix it logged a warning and its
    next poll() blocked for good (nothing scored on any partition, SIGTERM ignored). Now it exits non-zero,
    naming the codec and the partitions' positions, so a supervisor restarts it."""
    from kafka import KafkaProducer

    topics = new_topics(broker, "nocodec")
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "zstandard.py").write_text("raise ImportError('hidden by the test')\n")
    env = os.environ | {
        "PYTHONPATH": f"{hide}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "NLPSUITE_MONITOR_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap,
        "NLPSUITE_MONITOR_TOPICS__NEWS": topics.news, "NLPSUITE_MONITOR_TOPICS__SCORED": topics.scored,
        "NLPSUITE_MONITOR_TOPICS__ALERTS": topics.alerts, "NLPSUITE_MONITOR_TOPICS__DLQ": topics.dlq,
        "NLPSUITE_MONITOR_GROUP_ID": f"g-{topics.news}", "NLPSUITE_MONITOR_SENTIMENT_TARGET": sentiment.target,
        "NLPSUITE_MONITOR_WATCHLIST": str(NEWS.parent / "watchlist.yaml"),
    }
    log_path = tmp_path / "monitor.log"
    proc = subprocess.Popen([sys.executable, "-m", "nlpsuite.cli", "stream", "--local-broker"], cwd=ROOT, env=env,
                            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)
    try:
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, compression_type="zstd")
        for item in ITEMS[:5]:
            producer.send(topics.news, key=item["id"].encode(), value=json.dumps(item).encode(), partition=1)
        producer.flush(30)
        producer.close()
        code = proc.wait(90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    log = Path(log_path).read_text()
    assert code != 0, log[-3000:]
    assert "UnsupportedCodecError" in log and "zstd" in log and f"{topics.news}-1@" in log, log[-3000:]
