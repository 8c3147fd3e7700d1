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

import pytest

from nlpsuite.services.monitor.app import Monitor
from nlpsuite.services.monitor.broker import LocalBroker
from nlpsuite.shared.local_run import free_port
from nlpsuite.services.monitor.producer import replay
from nlpsuite.services.monitor.local_replay import read_topic, replay_settings, unique_topics
from tests.support import ITEMS, NEWS, ROOT, new_topics, scored_ids, wait_for_ids

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

IDS = {item["id"] for item in ITEMS}
PLANTED = "MWCH"


def alerts_of(broker, topics, expect: set[str] = frozenset(), timeout_s: float = 120):
    """The alerts on the topic, once it has been idle 2 s and holds every id in `expect` (or timeout_s passed:
    after a fault an alert can follow its items by a producer replacement and a flush timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        alerts = [json.loads(r.value) for r in read_topic(broker.bootstrap, topics.alerts, idle_s=2.0)]
        if expect <= {a["id"] for a in alerts} or time.monotonic() > deadline:
            return alerts
        time.sleep(0.5)


def entity_alerts(alerts):
    return [a for a in alerts if a["key_kind"] == "entity"]


@pytest.fixture(scope="module")
def single_run(broker, sentiment):
    """The example file replayed through one monitor instance."""
    topics = new_topics(broker, "single")
    monitor = Monitor(replay_settings(broker.bootstrap, topics, sentiment.target)).start()
    try:
        replay(NEWS, topics.news, monitor.s.kafka)
        scored = wait_for_ids(broker, topics.scored, IDS)
        alerts = alerts_of(broker, topics)
    finally:
        monitor.stop()
    assert not monitor.errors
    return topics, scored, alerts, monitor


def texts_run_by_lane(url: str) -> dict[str, float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    body = urllib.request.urlopen(url, timeout=10).read().decode()
    return {s.labels["lane"]: s.value for f in text_string_to_metric_families(body) for s in f.samples
            if s.name == "nlpsuite_texts_run_total"}


def test_replay_yields_one_alert_for_the_planted_company_and_scores_every_id(single_run, sentiment):
    topics, scored, alerts, monitor = single_run
    # The monitor's texts ride in the bulk lane: a news burst never delays a person's call.
    lanes = texts_run_by_lane(sentiment.metrics_url)
    assert lanes.get("bulk", 0) >= len(IDS) and lanes.get("interactive", 0) == 0, lanes
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


def poison_messages(valid: list[dict]) -> list[tuple[bytes | None, bytes | None, str]]:
    """(key, value, reason) of every kind of bad input, built from valid items so only the flaw differs."""
    def item(i, **changes):
        return valid[i] | {"id": f"bad-{i}"} | changes

    def enc(d):
        return json.dumps(d).encode()

    def without(i, field):
        return enc({k: v for k, v in item(i).items() if k != field})

    return [
        (b"bad-0", b"this is not json", "not_json"),
        (b"bad-1", b"[" * 30_000 + b"]" * 30_000, "not_json"),  # deeper than the parser's recursion limit
        (b"bad-2", b'["a list"]', "not_object"),
        (b"bad-3", b"42", "not_object"),
        (None, without(4, "id"), "missing_id"),  # also: a null key
        (b"bad-5", without(5, "headline"), "missing_headline"),
        (b"bad-6", enc(item(6, headline="   ")), "missing_headline"),
        (b"bad-7", enc(item(7, id=7)), "invalid"),  # wrong types
        (b"bad-8", enc(item(8, tickers="MWCH")), "invalid"),
        (b"bad-9", enc(item(9, headline={"text": "x"})), "invalid"),
        (b"bad-10", enc(item(10, body="x" * 70_000)), "oversize"),  # beyond max_message_bytes
        (b"bad-11", enc(item(11, headline="Marrowind " * 200)), "oversize"),  # beyond max_headline_chars
        (b"bad-12", enc(item(12)).replace(b'"headline": "', b'"headline": "\xff\xfe'), "not_utf8"),
        (b"bad-13", enc(item(13)).replace(b'"headline": "', b'"headline": "\\ud800'), "invalid"),  # lone surrogate
        (b"bad-14", None, "empty"),  # a tombstone
        (b"bad-15", enc(item(15, published_at="last tuesday")), "bad_timestamp"),
        (b"bad-16", enc(item(16, published_at="2026-03-02T11:30:12")), "bad_timestamp"),  # no time zone
        (b"bad-17", enc(item(17, published_at="0001-01-01T00:00:00+01:00")), "bad_timestamp"),  # out of range
        (b"bad-18", enc(item(18, published_at="1970-01-01T00:00:00Z")), "bad_timestamp"),  # absurdly old
        (b"bad-19", enc(item(19, published_at="2226-03-02T11:30:12Z")), "bad_timestamp"),  # far future
        (b"bad-20", enc(item(20, published_at=1e300)), "bad_timestamp"),
        (b"bad-22", enc(item(22, tickers=[f"T{i}" for i in range(5000)])), "invalid"),  # one record per ticker
        # an id already used with different content (the valid item with this id was sent earlier)
        (valid[21]["id"].encode(), enc(valid[21] | {"headline": "Quietly rewritten headline"}), "duplicate_id"),
    ]


def test_poison_messages_of_every_kind_go_to_the_dlq_and_never_stop_the_stream(broker, sentiment):
    """Bad input interleaved with valid items: each bad message is dead-lettered with its reason and its
    original bytes, every valid item is scored, an exact repeat (a producer retry) is scored again, and the
    stream keeps going (the valid items after the last bad one are scored too)."""
    from kafka import KafkaProducer

    topics = new_topics(broker, "dlq")
    valid = ITEMS[:40]
    bad = poison_messages(valid)
    messages = [(v["id"].encode(), json.dumps(v).encode()) for v in valid]
    for i, (key, value, _) in enumerate(bad):
        messages.insert(25 + i * 2, (key, value))  # after valid[21], so the duplicate id comes second
    messages.append((valid[3]["id"].encode(), json.dumps(valid[3]).encode()))  # exact repeat: not poison
    messages.append((None, json.dumps(ITEMS[40]).encode()))  # a valid item with a null key
    port = free_port()
    monitor = Monitor(replay_settings(broker.bootstrap, topics, sentiment.target, metrics_port=port)).start()
    try:
        producer = KafkaProducer(**monitor.s.kafka.producer())
        for key, value in messages:
            producer.send(topics.news, key=key, value=value)
        producer.flush(30)
        producer.close()
        want = {v["id"] for v in valid} | {ITEMS[40]["id"]}
        scored = wait_for_ids(broker, topics.scored, want)
        dlq = read_topic(broker.bootstrap, topics.dlq, min_count=len(bad))
        time.sleep(1.5)  # lag gauges refresh once a second
        import urllib.request

        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        monitor.stop()
    assert not monitor.errors
    assert scored_ids(scored) == want
    repeats = [r for r in scored if json.loads(r.value)["item"]["id"] == valid[3]["id"]]
    assert len({json.loads(r.value)["key"] for r in repeats}) < len(repeats)  # scored twice: not dead-lettered
    letters = [json.loads(r.value) for r in dlq]
    import base64

    got = sorted((d["key_b64"] and base64.b64decode(d["key_b64"]) or b"", d["value_b64"] and
                  base64.b64decode(d["value_b64"]) or b"", d["reason"]) for d in letters)
    assert got == sorted((k or b"", v or b"", reason) for k, v, reason in bad)
    for d in letters:
        assert d["topic"] == topics.news and d["partition"] >= 0 and d["offset"] >= 0 and d["detail"] is not None
    reasons = defaultdict(int)
    for _, _, reason in bad:
        reasons[reason] += 1
    for reason, n in reasons.items():
        assert f'nlpsuite_monitor_dead_lettered_total{{reason="{reason}"}} {float(n)}' in metrics
    assert f"nlpsuite_monitor_scored_total {float(len(want) + 1)}" in metrics
    assert f'nlpsuite_monitor_consumed_total{{topic="{topics.news}"}} {float(len(messages))}' in metrics
    assert f'nlpsuite_monitor_consumer_lag{{partition="0",topic="{topics.news}"}} 0.0' in metrics
    print(f"\nFIGURES poison: sent {len(messages)} (bad {len(bad)}), scored ids {len(scored_ids(scored))}, "
          f"dlq {len(letters)}, missing {len(want - scored_ids(scored))}")


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

        # 30 s of news: a restarted monitor catches up in one big batch, so a faster replay could be fully
        # scored before the second kill (then nothing is killed mid-stream).
        producer = threading.Thread(target=replay, args=(NEWS, topics.news,
                                                         replay_settings(broker.bootstrap, topics, "").kafka),
                                    kwargs={"rate": 12})
        producer.start()
        # Kill it (SIGKILL: no commit, no goodbye) twice: once early, once while the surge is being scored.
        recoveries: list[float] = []
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
            recoveries.append(_recovery_s(broker, topics, seen, time.monotonic()))
        producer.join(60)
        scored = wait_for_ids(broker, topics.scored, IDS)
        time.sleep(2)
        alerts = alerts_of(broker, topics, expect={a["id"] for a in single_run[2]})
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    assert rc == 0, log_path.read_text()[-3000:]
    assert scored_ids(scored) == IDS
    by_id = _same_content_per_id(alerts)
    assert set(by_id) == {a["id"] for a in single_run[2]}, (alerts, single_run[2])
    _check_and_report("consumer SIGKILLed twice (restart to first new id)", broker, topics, scored, alerts,
                      single_run[2], max(recoveries))


def test_sentiment_outage_of_10s_mid_stream_loses_nothing(broker, sentiment, single_run):
    topics = new_topics(broker, "outage")
    monitor = Monitor(replay_settings(broker.bootstrap, topics, sentiment.target)).start()
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
        alerts = alerts_of(broker, topics, expect={a["id"] for a in single_run[2]})
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
    settings = replay_settings(broker.bootstrap, topics, sentiment.target)
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
        alerts = alerts_of(broker, topics, expect={a["id"] for a in single_run[2]})
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


# -- faults ------------------------------------------------------------------------------------------------
FAULT_S = float(os.environ.get("NLPSUITE_FAULT_S", "10"))  # how long each fault lasts; raise it for a soak
LONG = os.environ.get("NLPSUITE_LONG") == "1"


def _ids_now(broker, topics) -> set[str]:
    return scored_ids(read_topic(broker.bootstrap, topics.scored, timeout_s=3, idle_s=0.1))


def _wait_scored(broker, topics, n: int, timeout_s: float = 120) -> set[str]:
    deadline = time.monotonic() + timeout_s
    while len(seen := _ids_now(broker, topics)) < n:
        assert time.monotonic() < deadline, f"only {len(seen)} ids scored"
        time.sleep(0.2)
    return seen


def _recovery_s(broker, topics, before: set[str], since: float, timeout_s: float = 180) -> float:
    """Seconds from `since` (the fault's end) until an id not scored before the fault is scored."""
    deadline = time.monotonic() + timeout_s
    while not (_ids_now(broker, topics) - before):
        assert time.monotonic() < deadline, "scoring did not resume after the fault"
        time.sleep(0.1)
    return time.monotonic() - since


def _check_and_report(name, broker, topics, scored, alerts, reference_alerts, recovery_s, monitor=None):
    by_id = _same_content_per_id(alerts)  # no alert id with different content
    missing = IDS - scored_ids(scored)
    replaced = ""
    if monitor is not None:
        samples = [s for m in monitor.metrics.producer_replacements.collect() for s in m.samples
                   if s.name.endswith("_total")]
        failures = [s for m in monitor.metrics.publish_failures.collect() for s in m.samples
                    if s.name.endswith("_total")]
        replaced = (f", publish failures {int(sum(s.value for s in failures))}, "
                    f"producers replaced {int(sum(s.value for s in samples))}")
    print(f"\nFIGURES {name}: sent {len(IDS)}, scored ids {len(scored_ids(scored))} "
          f"({len(scored)} records), missing {len(missing)}, alerts {len(alerts)} "
          f"(ids {len(by_id)}, conflicts 0), recovery {recovery_s:.1f}s{replaced}")
    assert not missing
    assert set(by_id) == {a["id"] for a in reference_alerts}


def _fault_mid_stream(broker, sentiment, single_run, prefix: str, fault, cleanup=lambda: None):
    """Replay the example news at 30 items/s through a fresh monitor; once some of it is scored,
    `fault(topics, before)` breaks something and repairs it, returning (ids scored when the repair began, when). Then every id
    must be scored and the alerts must be the fault-free run's. `cleanup` runs in any case."""
    import threading

    topics = new_topics(broker, prefix)
    monitor = Monitor(replay_settings(broker.bootstrap, topics, sentiment.target)).start()
    producer = threading.Thread(target=replay, args=(NEWS, topics.news, monitor.s.kafka), kwargs={"rate": 30})
    try:
        producer.start()
        before = _wait_scored(broker, topics, 60)
        seen, repaired = fault(topics, before)
        recovery = _recovery_s(broker, topics, seen, repaired)
        producer.join(180)
        assert not producer.is_alive()
        scored = wait_for_ids(broker, topics.scored, IDS)
        alerts = alerts_of(broker, topics, expect={a["id"] for a in single_run[2]})
    finally:
        monitor.stop()
        cleanup()
    assert len(before) < len(IDS)  # the fault really was mid-stream
    assert not monitor.errors
    return monitor, topics, scored, alerts, recovery


def _pause_broker_mid_stream(broker, sentiment, single_run, pause_s: float):
    def pause(topics, before):
        broker.pause()
        try:
            time.sleep(pause_s)
        finally:
            broker.resume()
        return before, time.monotonic()

    monitor, topics, scored, alerts, recovery = _fault_mid_stream(broker, sentiment, single_run, "pause", pause)
    _check_and_report(f"broker paused {pause_s:g}s", broker, topics, scored, alerts, single_run[2], recovery,
                      monitor)
    return monitor


def test_broker_paused_mid_stream_loses_nothing(broker, sentiment, single_run):
    """The broker stops answering (SIGSTOP) for FAULT_S seconds while news is produced and scored, then resumes
    (SIGCONT; its memory storage would not survive a restart). The replay, both monitor stages and their
    producers recover without a restart: every id is scored and the alerts are the same as without a fault."""
    _pause_broker_mid_stream(broker, sentiment, single_run, FAULT_S)


@pytest.mark.skipif(not LONG, reason="long variant: NLPSUITE_LONG=1")
def test_broker_paused_past_every_request_timeout_loses_nothing(broker, sentiment, single_run):
    """Longer than the request (10 s) and flush timeouts: depending on what is in flight when the broker stops,
    publishes fail and producers are replaced, or commits time out and batches are replayed."""
    _pause_broker_mid_stream(broker, sentiment, single_run, max(40.0, 4 * FAULT_S))


def test_sentiment_service_killed_mid_stream_loses_nothing(broker, sentiment, single_run):
    """SIGKILL of the real `nlpsuite serve sentiment` process while batches are in flight, restarted on the same
    port FAULT_S seconds later: in-flight calls fail, the batch is retried with backoff and nothing is lost."""
    during: set[str] = set()

    def kill(topics, before):
        sentiment.kill()
        time.sleep(FAULT_S)
        during.update(_ids_now(broker, topics))
        sentiment.start()
        return during, time.monotonic()

    def restart_if_down():
        if not sentiment.running:
            sentiment.start()  # the module's other tests need it

    monitor, topics, scored, alerts, recovery = _fault_mid_stream(broker, sentiment, single_run, "svckill", kill,
                                                                  restart_if_down)
    assert len(during) < len(IDS)  # killed mid-stream
    assert sum(s.value for m in monitor.metrics.sentiment_errors.collect() for s in m.samples
               if s.name.endswith("_total")) > 0
    _check_and_report("sentiment killed", broker, topics, scored, alerts, single_run[2], recovery, monitor)


def test_producers_broken_by_a_broker_restart_are_replaced_without_restarting_the_monitor(sentiment, single_run):
    """A broker that restarts loses its producer-id state (here: everything, as Tansu keeps it in memory; the
    topics are created again at once). kafka-python's idempotent producers can then stay broken (a fatal
    state, or retrying UnknownProducerId forever); the monitor must detect it and replace them, and its
    consumers must rejoin.
    News produced after the restart is scored completely and yields the same alerts as an undisturbed run."""
    topics = unique_topics("restart")
    first = LocalBroker().start()
    port = first.port
    try:
        first.create_topics(topics.all(), partitions=4)
        monitor = Monitor(replay_settings(first.bootstrap, topics, sentiment.target)).start()
        try:
            deadline = time.monotonic() + 60
            while not (monitor.scorer.consumer.assignment() and monitor.aggregator.consumer.assignment()):
                assert time.monotonic() < deadline, "the monitor did not join its groups"
                time.sleep(0.2)
            first.stop()
            first = LocalBroker(port=port).start()
            first.create_topics(topics.all(), partitions=4)
            restarted = time.monotonic()
            replay(NEWS, topics.news, monitor.s.kafka, rate=100)
            recovery = _recovery_s(first, topics, set(), restarted)
            scored = wait_for_ids(first, topics.scored, IDS)
            alerts = alerts_of(first, topics, expect={a["id"] for a in single_run[2]})
        finally:
            monitor.stop()
    finally:
        first.stop()
    assert not monitor.errors
    replaced = {s.labels["stage"]: s.value for m in monitor.metrics.producer_replacements.collect()
                for s in m.samples if s.name.endswith("_total")}
    # Which stage's producer breaks varies (seen: the alert producer looping on UnknownProducerIdError until its
    # flush timed out); at least one must have been replaced for this test to have tested anything.
    assert sum(replaced.values()) >= 1, replaced
    _check_and_report("broker restarted", first, topics, scored, alerts, single_run[2], recovery, monitor)
