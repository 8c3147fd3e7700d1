"""OpenTelemetry tracing, captured in memory: a request's spans, and one news item followed from its `news` record
through the monitor and the sentiment service onto its `news.scored` record (real broker, real servers)."""
from __future__ import annotations

import json
import time

import grpc
import pytest

from nlpsuite.services.sentiment.service import SentimentService
from nlpsuite.shared import tracing
from nlpsuite.v1 import sentiment_pb2, sentiment_pb2_grpc
from nlpsuite.shared.local_run import ServerThread
from tests.support import settings_for

otel = pytest.importorskip("opentelemetry.sdk.trace", reason="the tracing extra is not installed")

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture(scope="module")
def spans():
    """An in-memory exporter behind the process's tracer provider (set once: OpenTelemetry allows one)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()
    tracing.disable()


def by_name(exporter, trace_id: str) -> dict[str, list]:
    found: dict[str, list] = {}
    for s in exporter.get_finished_spans():
        if format(s.context.trace_id, "032x") == trace_id:
            found.setdefault(s.name, []).append(s)
    return found


def test_a_request_has_a_server_span_with_tokenize_queue_and_inference_children(built_classifier, spans):
    spans.clear()
    service = SentimentService(settings_for(built_classifier, tracing=True))
    with ServerThread(service).start() as server, grpc.insecure_channel(server.target) as channel:
        stub = sentiment_pb2_grpc.SentimentServiceStub(channel)
        stub.Analyze(sentiment_pb2.AnalyzeRequest(texts=["Profits rose.", "Sales fell."]), timeout=30,
                     metadata=[("traceparent", TRACEPARENT)])
        stub.Analyze(sentiment_pb2.AnalyzeRequest(texts=["An untraced call starts its own trace."]), timeout=30)
        items = (sentiment_pb2.AnalyzeStreamRequest(request_id=str(i), text=t) for i, t in enumerate(["Up.", "Down."]))
        assert len(list(stub.AnalyzeStream(items, timeout=30, metadata=[("traceparent", TRACEPARENT)]))) == 2
    found = by_name(spans, TRACE_ID)
    assert len(found["nlpsuite.v1.SentimentService/AnalyzeStream.item"]) == 2  # a span per stream item, same trace
    (root,) = found["nlpsuite.v1.SentimentService/Analyze"]
    assert format(root.parent.span_id, "016x") == "00f067aa0ba902b7"  # the caller's span is its parent
    for stage in ("tokenize", "queue", "inference"):
        child = next(c for c in found[stage] if c.parent.span_id == root.context.span_id)
        assert root.start_time <= child.start_time <= child.end_time <= root.end_time + 1_000_000, stage
    assert all(s.attributes["batch_size"] >= 1 for s in found["inference"])
    assert {s.attributes["lane"] for s in found["queue"]} == {"interactive"}
    assert len(found["inference"]) == 3  # the unary call's and the two stream items
    others = [s for s in spans.get_finished_spans() if s.name.endswith("/Analyze") and s is not root]
    assert len(others) == 1 and others[0].parent is None  # the second call: a new trace of its own


@pytest.mark.slow
def test_one_news_item_is_one_trace_from_news_through_the_service_to_news_scored(built_classifier, spans, tmp_path):
    from kafka import KafkaProducer

    from nlpsuite.services.monitor.app import Monitor
    from nlpsuite.services.monitor.broker import LocalBroker
    from nlpsuite.services.monitor.local_replay import read_topic, replay_settings, unique_topics

    spans.clear()
    item = {"id": "n-trace-1", "headline": "Norvale Mining issues profit warning", "body": "",
            "source": "Harbourview Financial Service", "published_at": "2026-03-02T09:00:14Z", "tickers": ["NVM"]}
    other = dict(item, id="n-plain-1", headline="Tessaro Foods updates packaging")
    service = SentimentService(settings_for(built_classifier, tracing=True))
    with LocalBroker() as broker, ServerThread(service).start() as server:
        topics = unique_topics("trace")
        broker.create_topics(topics.all(), partitions=1)
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        producer.send(topics.news, key=b"NVM", value=json.dumps(item).encode(),
                      headers=[("traceparent", TRACEPARENT.encode()), ("x-private", b"not carried on")])
        producer.send(topics.news, key=b"TSF", value=json.dumps(other).encode())  # a producer without tracing
        producer.flush()
        producer.close()
        monitor = Monitor(replay_settings(broker.bootstrap, topics, server.target, tracing=True),
                          stages=("score",)).start()
        try:
            scored = read_topic(broker.bootstrap, topics.scored, min_count=2, timeout_s=120)
        finally:
            monitor.stop()
    found = by_name(spans, TRACE_ID)
    (batch,) = found["monitor.score"]
    (call,) = found["nlpsuite.v1.SentimentService/Analyze"]
    assert batch.parent is not None and format(batch.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert call.parent.span_id == batch.context.span_id  # the service's span is a child of the monitor's
    assert {"tokenize", "queue", "inference"} <= set(found)
    assert found["queue"][0].attributes["lane"] == "bulk"
    headers = {json.loads(r.value)["item"]["id"]: dict(r.headers) for r in scored}
    traced = headers["n-trace-1"]
    assert traced["traceparent"].decode().split("-")[1] == TRACE_ID and "x-private" not in traced
    assert traced["traceparent"].decode().split("-")[2] == format(batch.context.span_id, "016x")
    # The untraced item's record carries its batch's span (this trace's when they rode together): followable too.
    assert len(headers["n-plain-1"]["traceparent"].decode().split("-")[1]) == 32
