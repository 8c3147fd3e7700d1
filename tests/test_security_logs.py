"""At INFO (the default level) no log record holds a request's text or a token: a real server with the token
check, requests carrying a distinctive text through every outcome (served, rejected, denied, failing inside a
handler, streamed), and the monitor scoring a news item through a real broker."""
from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime, timezone

import grpc
import pytest

from nlpsuite.services.sentiment.client import SentimentClient
from nlpsuite.services.sentiment.service import SentimentService
from nlpsuite.shared.config import AuthSettings
from nlpsuite.shared.logs import JsonFormatter
from nlpsuite.shared.local_run import ServerThread
from tests.support import settings_for

TEXT = "Zorblax-7731 private note: card 4111 1111 1111 1111 stolen, call me on 0770 900 123"
TOKEN = "tok-SECRET-9c0ffee-1d2e3f"
WRONG_TOKEN = "tok-GUESS-feedface-4a5b6c"
FAIL = "FAIL-HERE"
NEEDLES = ("Zorblax", "4111 1111", TOKEN, WRONG_TOKEN, "9c0ffee", "feedface")


class TextQuotingBug(SentimentService):
    """The real service with one bug planted: an exception whose message quotes the text (as a careless
    library error might), to check that the failure log leaves the message out."""

    def _result(self, text, probs, truncated):
        if FAIL in text:
            raise ValueError(f"cannot describe {text!r}")
        return super()._result(text, probs, truncated)


def leaked(records: list[logging.LogRecord]) -> list[str]:
    formatter = JsonFormatter()
    out = []
    for record in records:
        line = formatter.format(record)  # the message, its args, every extra field and any traceback
        out += [f"{needle!r} in {line}" for needle in NEEDLES if needle in line]
    return out


def test_server_logs_at_info_hold_no_text_and_no_token(built_classifier, caplog):
    caplog.set_level(logging.INFO)
    settings = settings_for(built_classifier, max_text_chars=200, auth=AuthSettings(token=TOKEN))
    with ServerThread(TextQuotingBug(settings)).start() as srv:
        with SentimentClient(srv.target, token=TOKEN) as c:
            assert c.analyze([TEXT]).results[0].label
            replies = list(c.analyze_stream([("ok", TEXT), ("bad", f"{FAIL} {TEXT}")], timeout=30))
            assert {r.request_id: r.error for r in replies} == {"ok": "", "bad": "INTERNAL: internal error"}
            for texts, code in (([f"{FAIL} {TEXT}"], grpc.StatusCode.INTERNAL),
                                ([TEXT * 5], grpc.StatusCode.INVALID_ARGUMENT), ([TEXT, " "], grpc.StatusCode.INVALID_ARGUMENT)):
                with pytest.raises(grpc.RpcError) as err:
                    c.analyze(texts)
                assert err.value.code() == code
                assert "Zorblax" not in (err.value.details() or "")
        with SentimentClient(srv.target, token=WRONG_TOKEN) as c, pytest.raises(grpc.RpcError) as err:
            c.analyze([TEXT])
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    records = caplog.records
    messages = [r.getMessage() for r in records]
    assert "serving" in messages and "handler failed" in messages and "stream item failed" in messages
    failed = next(r for r in records if r.getMessage() == "handler failed")
    assert failed.error == "ValueError" and "_result" in failed.where and failed.levelno == logging.ERROR
    item_failed = next(r for r in records if r.getMessage() == "stream item failed")
    assert item_failed.request_id == "bad" and item_failed.method == "AnalyzeStream"
    assert leaked(records) == []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_monitor_logs_at_info_hold_no_text_and_no_token(built_classifier, caplog, tmp_path):
    from kafka import KafkaProducer

    from nlpsuite.services.monitor.app import Monitor
    from nlpsuite.services.monitor.broker import LocalBroker, create_topics
    from nlpsuite.services.monitor.local_replay import read_topic, replay_settings, unique_topics

    caplog.set_level(logging.INFO)
    topics = unique_topics("logs")
    news = [{"id": f"n-{i}", "headline": f"{TEXT} #{i}", "source": "Wire", "tickers": ["MWCH"],
             "published_at": datetime.now(timezone.utc).isoformat()} for i in range(3)]
    oversize = {**news[0], "id": "too-long", "headline": TEXT * 20}
    with LocalBroker() as broker, \
            ServerThread(SentimentService(settings_for(built_classifier, auth=AuthSettings(token=TOKEN)))).start() as srv:
        create_topics(broker.bootstrap, topics.all(), partitions=2)
        settings = replay_settings(broker.bootstrap, topics, srv.target, sentiment_token=TOKEN,
                                    max_headline_chars=300, group_id=f"logs-{uuid.uuid4().hex[:6]}")
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, allow_auto_create_topics=False)
        for item in [*news, oversize]:
            producer.send(topics.news, key=item["id"].encode(), value=json.dumps(item).encode())
        producer.flush()
        producer.close()
        monitor = Monitor(settings, stages=("score",)).start()
        try:
            scored = read_topic(broker.bootstrap, topics.scored, min_count=3, timeout_s=120)
            dead = read_topic(broker.bootstrap, topics.dlq, min_count=1, timeout_s=30)
        finally:
            monitor.stop()
        assert not monitor.errors
    assert {json.loads(r.value)["item"]["id"] for r in scored} == {"n-0", "n-1", "n-2"}
    assert [json.loads(r.value)["reason"] for r in dead] == ["oversize"]
    assert any(r.name.startswith("kafka") for r in caplog.records)  # the client library's INFO lines were seen
    assert leaked(caplog.records) == []
