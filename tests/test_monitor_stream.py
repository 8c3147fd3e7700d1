"""End to end: a real Tansu broker, the real sentiment server (subprocess) and the real monitor.

Slow: they need a real sentiment model (see the `sentiment_repository` fixture; set NLPSUITE_TEST_MODELS
to reuse a built one). Topic names are unique per test; everything is on loopback.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from nlpsuite.examples import __file__ as _examples_init
from nlpsuite.services.monitor.app import Monitor
from nlpsuite.services.monitor.broker import LocalBroker, free_port
from nlpsuite.services.monitor.producer import replay
from tests.monitor_support import ROOT, SentimentProcess, monitor_settings, read_topic, unique_topics

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

NEWS = Path(_examples_init).parent / "news.jsonl"
ITEMS = [json.loads(line) for line in NEWS.read_text().splitlines() if line.strip()]
IDS = {item["id"] for item in ITEMS}
PLANTED = "MWCH"


@pytest.fixture(scope="module")
def broker():
    with LocalBroker() as b:
        yield b


@pytest.fixture(scope="module")
def sentiment(sentiment_repository, tmp_path_factory):
    proc = SentimentProcess(sentiment_repository, free_port(),
                            log_file=tmp_path_factory.mktemp("logs") / "sentiment.log").start()
    yield proc
    proc.stop()


def new_topics(broker, prefix):
    topics = unique_topics(prefix)
    broker.create_topics(topics.all(), partitions=4)
    return topics


def scored_ids(records) -> set[str]:
    return {json.loads(r.value)["item"]["id"] for r in records}


def wait_for_ids(broker, topic, ids, timeout_s=180):
    deadline = time.monotonic() + timeout_s
    while True:
        records = read_topic(broker.bootstrap, topic, timeout_s=5, idle_s=0.3)
        if ids <= scored_ids(records) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def alerts_of(broker, topics):
    return [json.loads(r.value) for r in read_topic(broker.bootstrap, topics.alerts, idle_s=2.0)]


def entity_alerts(alerts):
    return [a for a in alerts if a["key_kind"] == "entity"]


@pytest.fixture(scope="module")
def single_run(broker, sentiment):
    """The example file replayed through one monitor instance."""
    topics = new_topics(broker, "single")
    monitor = Monitor(monitor_settings(broker.bootstrap, topics, sentiment.target)).start()
    try:
        replay(NEWS, topics.news, monitor.s.kafka)
        scored = wait_for_ids(broker, topics.scored, IDS)
        alerts = alerts_of(broker, topics)
    finally:
        monitor.stop()
    assert not monitor.errors
    return topics, scored, alerts, monitor


def test_replay_yields_one_alert_for_the_planted_company_and_scores_every_id(single_run):
    topics, scored, alerts, monitor = single_run
    assert scored_ids(scored) == IDS
    assert len(alerts) == 1, [(a["key_kind"], a["key"], a["negatives"]) for a in alerts]
    alert = alerts[0]
    assert (alert["key_kind"], alert["key"], alert["name"]) == ("entity", PLANTED, "Marrowind Chemicals")
    assert "11:30" <= alert["window_start"][11:16] and alert["window_start"][11:16] <= "11:55"
    assert alert["negatives"] >= 5 and alert["share"] >= 0.5
    surge = {"n-0226", "n-0229", "n-0234", "n-0235", "n-0236", "n-0238", "n-0239", "n-0240", "n-0251", "n-0252",
             "n-0256", "n-0257", "n-0259", "n-0261"}
    assert {h["id"] for h in alert["headlines"]} <= surge
    # scored records are keyed by entity/topic; each carries the model and the scores
    first = json.loads(scored[0].value)
    assert first["model"]["name"] == "sentiment" and first["model"]["version"]
    assert {s["label"] for s in first["scores"]} == {"negative", "neutral", "positive"}
    keyed = defaultdict(set)
    for r in scored:
        v = json.loads(r.value)
        assert r.key.decode() == v["key"]
        keyed[v["key"]].add(r.partition)
    assert all(len(parts) == 1 for parts in keyed.values())  # one key, one partition
    # alias-only items were matched to the company
    mwch = {json.loads(r.value)["item"]["id"] for r in scored if r.key == b"MWCH"}
    assert {"n-0226", "n-0261"} <= mwch or len(mwch & surge) == 14
    assert monitor.metrics.scored._value.get() == len(IDS)


def test_malformed_messages_go_to_the_dlq_and_every_valid_one_is_scored(broker, sentiment, tmp_path):
    topics = new_topics(broker, "dlq")
    valid = ITEMS[:40]
    bad = [
        (b"this is not json", "not_json"),
        (json.dumps({k: v for k, v in valid[0].items() if k != "headline"} | {"id": "bad-1"}).encode(), "missing_headline"),
        (json.dumps(valid[1] | {"id": "bad-2", "published_at": "last tuesday"}).encode(), "bad_timestamp"),
        (json.dumps(valid[2] | {"id": "bad-3", "body": "x" * 70_000}).encode(), "oversize"),
        (b"[\"a list\"]", "not_object"),
    ]
    lines = [json.dumps(v).encode() for v in valid]
    for i, (value, _) in enumerate(bad):
        lines.insert(5 + i * 7, value)
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    port = free_port()
    monitor = Monitor(monitor_settings(broker.bootstrap, topics, sentiment.target, metrics_port=port)).start()
    try:
        replay(path, topics.news, monitor.s.kafka)
        scored = wait_for_ids(broker, topics.scored, {v["id"] for v in valid})
        dlq = read_topic(broker.bootstrap, topics.dlq, min_count=len(bad))
        time.sleep(1.5)  # lag gauges refresh once a second
        import urllib.request

        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        monitor.stop()
    for reason in ("not_json", "missing_headline", "bad_timestamp", "oversize", "not_object"):
        assert f'nlpsuite_monitor_dead_lettered_total{{reason="{reason}"}} 1.0' in metrics
    assert "nlpsuite_monitor_scored_total 40.0" in metrics
    assert f'nlpsuite_monitor_consumed_total{{topic="{topics.news}"}} 45.0' in metrics
    assert f'nlpsuite_monitor_consumer_lag{{partition="0",topic="{topics.news}"}} 0.0' in metrics
    assert "nlpsuite_monitor_publish_to_scored_seconds_count 40.0" in metrics
    assert scored_ids(scored) == {v["id"] for v in valid}
    letters = [json.loads(r.value) for r in dlq]
    import base64

    got = sorted((base64.b64decode(d["value_b64"]), d["reason"]) for d in letters)
    assert got == sorted(bad)
    for d in letters:
        assert d["topic"] == topics.news and d["partition"] >= 0 and d["offset"] >= 0


def _cli_monitor(broker, topics, sentiment, group, log_path) -> subprocess.Popen:
    env = os.environ | {
        "NLPSUITE_MONITOR_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap,
        "NLPSUITE_MONITOR_TOPICS__NEWS": topics.news, "NLPSUITE_MONITOR_TOPICS__SCORED": topics.scored,
        "NLPSUITE_MONITOR_TOPICS__ALERTS": topics.alerts, "NLPSUITE_MONITOR_TOPICS__DLQ": topics.dlq,
        "NLPSUITE_MONITOR_GROUP_ID": group, "NLPSUITE_MONITOR_SENTIMENT_TARGET": sentiment.target,
        "NLPSUITE_MONITOR_WATCHLIST": str(NEWS.parent / "watchlist.yaml"),
        "NLPSUITE_MONITOR_WINDOWS__ALLOWED_LATENESS_S": "7200", "NLPSUITE_MONITOR_ALIGN_S": "600",
        "NLPSUITE_MONITOR_BATCH_MAX": "32",
    }
    return subprocess.Popen([sys.executable, "-m", "nlpsuite.cli", "stream", "--local-broker"], cwd=ROOT, env=env,
                            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)


def _same_content_per_id(alerts):
    by_id = defaultdict(list)
    for a in alerts:
        by_id[a["id"]].append(a)
    for aid, copies in by_id.items():
        assert all(c == copies[0] for c in copies), f"alert {aid} published with different content"
    return by_id


def test_consumer_killed_mid_stream_and_restarted_loses_nothing(broker, sentiment, single_run, tmp_path):
    topics = new_topics(broker, "kill")
    group = f"kill-{os.getpid()}"
    log_path = tmp_path / "monitor.log"
    proc = _cli_monitor(broker, topics, sentiment, group, log_path)
    try:
        import threading

        producer = threading.Thread(target=replay, args=(NEWS, topics.news,
                                                         monitor_settings(broker.bootstrap, topics, "").kafka),
                                    kwargs={"rate": 25})
        producer.start()
        # Kill it (SIGKILL: no commit, no goodbye) twice: once early, once while the surge is being scored.
        for target in ("n-0100", "n-0240"):
            deadline = time.monotonic() + 120
            while target not in (seen := scored_ids(read_topic(broker.bootstrap, topics.scored, timeout_s=3,
                                                                idle_s=0.1))):
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                assert proc.poll() is None, log_path.read_text()[-3000:]
                time.sleep(0.2)
            proc.kill()
            assert seen < IDS  # killed mid-stream
            proc.wait(10)
            proc = _cli_monitor(broker, topics, sentiment, group, log_path)
        producer.join(60)
        scored = wait_for_ids(broker, topics.scored, IDS)
        time.sleep(2)
        alerts = alerts_of(broker, topics)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    assert rc == 0, log_path.read_text()[-3000:]
    assert scored_ids(scored) == IDS
    by_id = _same_content_per_id(alerts)
    assert set(by_id) == {a["id"] for a in single_run[2]}, (alerts, single_run[2])


def test_sentiment_outage_of_10s_mid_stream_loses_nothing(broker, sentiment, single_run):
    topics = new_topics(broker, "outage")
    monitor = Monitor(monitor_settings(broker.bootstrap, topics, sentiment.target)).start()
    import threading

    try:
        producer = threading.Thread(target=replay, args=(NEWS, topics.news, monitor.s.kafka), kwargs={"rate": 40})
        producer.start()
        deadline = time.monotonic() + 120
        while len(scored_ids(read_topic(broker.bootstrap, topics.scored, timeout_s=3, idle_s=0.1))) < 60:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        sentiment.stop()
        time.sleep(10)
        during = scored_ids(read_topic(broker.bootstrap, topics.scored, timeout_s=3, idle_s=0.1))
        sentiment.start()
        producer.join(60)
        scored = wait_for_ids(broker, topics.scored, IDS)
        alerts = alerts_of(broker, topics)
    finally:
        monitor.stop()
    assert len(during) < len(IDS)  # the outage really was mid-stream
    assert sum(s.value for m in monitor.metrics.sentiment_errors.collect() for s in m.samples
               if s.name.endswith("_total")) > 0
    assert scored_ids(scored) == IDS
    assert {a["id"] for a in alerts} == {a["id"] for a in single_run[2]}
    assert not monitor.errors


def test_two_instances_split_the_partitions_and_publish_the_same_alerts(broker, sentiment, single_run):
    topics = new_topics(broker, "two")
    settings = monitor_settings(broker.bootstrap, topics, sentiment.target)
    a = Monitor(settings).start()
    b = Monitor(settings).start()
    try:
        deadline = time.monotonic() + 60
        while not (a.aggregator.consumer.assignment() and b.aggregator.consumer.assignment()
                   and a.scorer.consumer.assignment() and b.scorer.consumer.assignment()):
            assert time.monotonic() < deadline, "the two instances did not split the partitions"
            time.sleep(0.2)
        replay(NEWS, topics.news, settings.kafka, rate=200)
        scored = wait_for_ids(broker, topics.scored, IDS)
        alerts = alerts_of(broker, topics)
        parts_a = {tp.partition for tp in a.aggregator.consumer.assignment()}
        parts_b = {tp.partition for tp in b.aggregator.consumer.assignment()}
    finally:
        a.stop()
        b.stop()
    assert parts_a and parts_b and not parts_a & parts_b
    assert scored_ids(scored) == IDS
    _same_content_per_id(alerts)
    assert sorted(x["id"] for x in alerts) == sorted(x["id"] for x in single_run[2])
    assert a.aggregator.published or b.aggregator.published
