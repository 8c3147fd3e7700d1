"""Producer recovery against a real local broker (Tansu): the monitor's Publisher and `nlpsuite produce`.

kafka-python's idempotent producer can stay broken after a broker fault; these tests create such faults
for real (a broker restart that loses the producer-id state, a broker that stops answering) and check that
the producer is detected as failed, replaced, and that nothing is lost.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest

from nlpsuite.examples import __file__ as _examples_init
from nlpsuite.services.monitor.broker import LocalBroker
from nlpsuite.services.monitor.config import KafkaSettings
from nlpsuite.services.monitor.delivery import PublishFailed, Publisher, broken
from nlpsuite.services.monitor.producer import replay
from nlpsuite.services.monitor.local_replay import read_topic

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

NEWS = Path(_examples_init).parent / "news.jsonl"


def test_publisher_replaces_a_producer_left_broken_by_a_broker_restart():
    broker = LocalBroker().start()
    try:
        broker.create_topics(["out"], partitions=2)
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap).local()
        publisher = Publisher(kafka.producer())
        publisher.confirm([publisher.send("out", key=b"a", value=b"before")], timeout_s=15)
        port = broker.port
        broker.stop()  # memory storage: the new broker knows neither the topic nor the producer id
        broker = LocalBroker(port=port).start()
        broker.create_topics(["out"], partitions=2)
        old = publisher.producer
        with pytest.raises(PublishFailed):
            publisher.confirm([publisher.send("out", key=str(i).encode(), value=b"lost") for i in range(5)],
                              timeout_s=15)
        publisher.replace()
        assert publisher.replacements == 1 and publisher.producer is not old
        old._sender.join(10)
        assert not old._sender.is_alive()  # the broken producer's sender thread was stopped, not leaked
        assert not broken(publisher.producer)
        publisher.confirm([publisher.send("out", key=str(i).encode(), value=f"after-{i}".encode())
                           for i in range(5)], timeout_s=15)
        publisher.close()
        values = sorted(r.value for r in read_topic(broker.bootstrap, "out", min_count=5))
        assert values == [f"after-{i}".encode() for i in range(5)]
    finally:
        broker.stop()


def test_produce_resends_what_a_paused_broker_did_not_acknowledge(caplog):
    """`nlpsuite produce` while the broker stops answering for longer than the send timeouts: it resends with a
    fresh producer instead of dying, and every line reaches the topic (a line may arrive twice)."""
    lines = [line for line in NEWS.read_bytes().splitlines() if line.strip()]
    with LocalBroker() as broker:
        broker.create_topics(["news"], partitions=4)
        # local() sets a 10 s request timeout; 2 s makes a confirm give up after 7 s, before the pause ends
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap).local().model_copy(
            update={"request_timeout_ms": 2000})
        result: dict = {}

        def run():
            try:
                result["sent"] = replay(NEWS, "news", kafka, rate=100)
            except Exception as exc:  # noqa: BLE001 - reported below
                result["error"] = exc

        caplog.set_level(logging.WARNING, logger="nlpsuite.services.monitor.producer")
        producer = threading.Thread(target=run)
        producer.start()
        time.sleep(1.0)
        broker.pause()
        time.sleep(10)
        broker.resume()
        producer.join(120)
        assert not producer.is_alive()
        assert "error" not in result, result
        assert result["sent"] == len(lines)
        assert any("resending" in r.getMessage() for r in caplog.records)
        values = [r.value for r in read_topic(broker.bootstrap, "news", min_count=len(lines))]
    assert set(values) == set(lines)
    keys = {json.loads(v)["id"] for v in values}
    assert len(keys) == len(lines)
    print(f"\nFIGURES produce through a 10 s pause: lines {len(lines)}, records {len(values)}, "
          f"duplicates {len(values) - len(set(values))}, missing {len(set(lines) - set(values))}")


def test_produce_survives_a_broker_restart_and_delivers_everything_sent_after_it():
    """A restarted broker (memory storage: it lost the records and the producer id; the topic is created again)
    leaves kafka-python's idempotent producer failing every send. `nlpsuite produce` replaces it and goes on:
    every line first sent after the broker was back is in the topic, and the replay ends without an error."""
    lines = [line for line in NEWS.read_bytes().splitlines() if line.strip()]
    broker = LocalBroker().start()
    try:
        broker.create_topics(["news"], partitions=4)
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap).local()
        sent_at: dict[bytes, float] = {}
        result: dict = {}

        def run():
            try:
                result["sent"] = replay(NEWS, "news", kafka, rate=60, on_sent=lambda v, t: sent_at.setdefault(v, t))
            except Exception as exc:  # noqa: BLE001 - reported below
                result["error"] = exc

        producer = threading.Thread(target=run)
        producer.start()
        time.sleep(1.5)
        port = broker.port
        broker.stop()
        broker = LocalBroker(port=port).start()
        broker.create_topics(["news"], partitions=4)
        back = time.time()
        producer.join(120)
        assert not producer.is_alive()
        assert "error" not in result, result
        after = {line for line in lines if sent_at[line] > back}
        assert len(after) > len(lines) // 2  # the restart really was mid-replay
        values = set(r.value for r in read_topic(broker.bootstrap, "news", min_count=len(after)))
    finally:
        broker.stop()
    assert after <= values
    print(f"\nFIGURES produce through a broker restart: lines {len(lines)}, sent after the restart {len(after)}, "
          f"missing of those {len(after - values)}")
