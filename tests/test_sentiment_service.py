"""SentimentService over a real channel: a real server on a loopback port, a real tiny ONNX classifier."""
from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from nlpsuite.services.sentiment.client import SentimentClient
from nlpsuite.services.sentiment.service import SentimentService
from nlpsuite.shared.config import BatchSettings, ModelSettings, SentimentSettings
from nlpsuite.shared.model import open_model, softmax
from nlpsuite.shared.resources import examples_path
from nlpsuite.shared.local_run import ServerThread
from tests.support import settings_for

TEXTS = [
    "Norvale Mining beats estimates and raises forecast for the year",
    "Quillon Bank shares slump after the regulator opens a probe",
    "$ALTV unchanged in quiet trading",
    "Profit warning from Halden Pharma as sales fall",
    "The weather was fine",
]

CLIENT = SentimentClient  # the `client` fixture (conftest.py) connects one to the module's `server`


@pytest.fixture(scope="module")
def server(built_classifier):
    with ServerThread(SentimentService(settings_for(built_classifier, max_items=64))).start() as srv:
        yield srv


@pytest.fixture(scope="module")
def reference(built_classifier):
    model = open_model(built_classifier)
    return lambda texts: softmax(model.predict(texts))


def test_analyze_returns_labels_scores_topics_entities_model_and_timing(client, built_classifier, reference):
    reply = client.analyze(TEXTS)
    assert len(reply.results) == len(TEXTS)
    labels = built_classifier.manifest.labels
    expected = reference(TEXTS)
    for result, probs in zip(reply.results, expected):
        assert [s.label for s in result.scores] == labels
        assert np.allclose([s.score for s in result.scores], probs, atol=1e-4)
        assert result.label == labels[int(np.argmax(probs))]
        assert result.confidence == pytest.approx(float(probs.max()), abs=1e-4)
        assert not result.truncated
    first, second, third, fourth, fifth = reply.results
    assert [(e.name, e.ticker, e.matched) for e in first.entities] == [("Norvale Mining", "NVM", "Norvale Mining")]
    assert set(first.topics) >= {"earnings", "guidance"}
    assert [e.ticker for e in second.entities] == ["QLNB"] and "regulation" in second.topics
    assert [(e.ticker, e.matched) for e in third.entities] == [("ALTV", "$ALTV")]
    assert [e.matched for e in fourth.entities] == ["Halden Pharma"]
    assert set(fourth.topics) >= {"guidance", "earnings"}
    assert list(fifth.entities) == [] and list(fifth.topics) == ["regulation"]  # "fine" is a regulation keyword
    assert reply.model.name == built_classifier.manifest.name
    assert reply.model.version == built_classifier.manifest.version
    assert reply.model.variant == "int8" and reply.model.provider == "CPUExecutionProvider"
    t = reply.timing
    assert t.total_us > 0 and t.inference_us > 0 and t.total_us >= t.inference_us


def test_entity_matching_respects_word_boundaries(client):
    (result,) = client.analyze(["Norvalex and nvm are not companies; neither is HaldenX"]).results
    assert list(result.entities) == []


def test_64_concurrent_clients_get_the_one_by_one_results(server, client):
    texts = [f"{TEXTS[i % len(TEXTS)]} {' extra words' * (i % 7)}" for i in range(64)]
    alone = [client.analyze([t]).results[0] for t in texts]
    barrier = threading.Barrier(64)

    def call(text):
        with SentimentClient(server.target) as own:
            barrier.wait()
            return own.analyze([text]).results[0]

    with ThreadPoolExecutor(64) as pool:
        together = list(pool.map(call, texts))
    for a, b in zip(alone, together):
        assert a.label == b.label
        assert np.allclose([s.score for s in a.scores], [s.score for s in b.scores], atol=1e-5)


def test_overlong_text_is_truncated_and_flagged(client):
    long_text = "shares fell sharply " * 200
    reply = client.analyze([long_text, "short one"])
    assert reply.results[0].truncated and not reply.results[1].truncated


@pytest.mark.parametrize("texts, field", [
    ([], "texts is empty: send at least one"),
    (["ok", ""], "texts[1] is empty"),
    (["ok", "   "], "texts[1] is empty"),
    (["x"] * 65, "texts has 65 items"),
])
def test_bad_input_is_invalid_argument_naming_the_field(client, texts, field):
    with pytest.raises(grpc.RpcError) as err:
        client.analyze(texts)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()
    assert client.analyze(["still up"]).results[0].label  # the server stays up


def test_oversize_message_is_invalid_argument(built_classifier):
    settings = settings_for(built_classifier, max_message_bytes=4096, max_text_chars=100_000)
    with ServerThread(SentimentService(settings)).start() as srv, SentimentClient(srv.target) as c:
        with pytest.raises(grpc.RpcError) as err:
            c.analyze(["word " * 1000])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "texts" in err.value.details() and "max_message_bytes" in err.value.details()
        assert c.analyze(["fine"]).results


def test_reject_overlong_answers_invalid_argument(built_classifier):
    settings = settings_for(built_classifier, max_tokens=16, reject_overlong=True)
    with ServerThread(SentimentService(settings)).start() as srv, SentimentClient(srv.target) as c:
        with pytest.raises(grpc.RpcError) as err:
            c.analyze(["short", "this text is certainly longer than sixteen tokens once it is tokenized by wordpiece"])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "texts[1]" in err.value.details() and "limit of 16" in err.value.details()


def test_full_queue_is_resource_exhausted(built_classifier):
    """A queue of 2 texts, one text a batch: of 40 concurrent 2-text calls, those that find texts waiting are
    refused with RESOURCE_EXHAUSTED; the rest are answered. (A single request over the queue cannot happen:
    settings whose max_items exceed queue_capacity are refused at start, tests/test_limits.py.)"""
    settings = settings_for(built_classifier, max_items=2,
                            batch=BatchSettings(queue_capacity=2, workers=1, max_batch_size=1))
    with ServerThread(SentimentService(settings)).start() as srv, SentimentClient(srv.target) as c:
        def call(_) -> str:
            try:
                c.analyze(["shares fell sharply after the results", "b"])
                return "OK"
            except grpc.RpcError as exc:
                return exc.code().name

        with ThreadPoolExecutor(40) as pool:
            codes = list(pool.map(call, range(40)))
        assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, codes
        assert len(c.analyze(["a", "b"]).results) == 2


def test_stream_answers_each_item_and_survives_bad_ones(client):
    items = [(f"id-{i}", text) for i, text in enumerate(TEXTS)] + [("bad", "")] + [("last", "Tessaro Foods recall")]
    replies = {r.request_id: r for r in client.analyze_stream(iter(items), timeout=30)}
    assert set(replies) == {rid for rid, _ in items}
    assert "INVALID_ARGUMENT" in replies["bad"].error and "text" in replies["bad"].error
    assert not replies["bad"].HasField("result")
    assert [e.ticker for e in replies["last"].result.entities] == ["TSRF"]
    assert "safety_incident" in replies["last"].result.topics
    single = client.analyze([TEXTS[0]]).results[0]
    assert np.allclose([s.score for s in replies["id-0"].result.scores], [s.score for s in single.scores], atol=1e-5)


def test_reflection_lists_the_services(server):
    with grpc.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"nlpsuite.v1.SentimentService", "grpc.health.v1.Health"} <= names


def test_metrics_endpoint_counts_requests_and_batches(server, client):
    client.analyze(["metrics please"])
    port = server.service.metrics.port
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'nlpsuite_requests_total{code="OK",method="Analyze",service="sentiment"}' in body
    assert 'nlpsuite_stage_seconds_bucket{le="0.0005",method="Analyze",service="sentiment",stage="inference"}' in body
    assert "nlpsuite_batch_size_count" in body and "nlpsuite_batch_tokens_count" in body
    assert "nlpsuite_queue_depth" in body


class GatedSentiment(SentimentService):
    """Holds loading until the test says go, to observe the state before warm-up ends."""

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.gate = threading.Event()

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.gate.wait, 30)
        await super().load()


def test_health_is_serving_only_after_warm_up(built_classifier):
    service = GatedSentiment(settings_for(built_classifier))
    with ServerThread(service).start(wait_ready=False) as srv, SentimentClient(srv.target) as c:
        assert srv.health() == health_pb2.HealthCheckResponse.NOT_SERVING
        assert srv.health("nlpsuite.v1.SentimentService") == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as err:
            c.analyze(["too early"])
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "not loaded" in err.value.details()
        service.gate.set()
        srv.call(srv.server.wait_ready())
        assert service.model.loaded
        assert srv.health("nlpsuite.v1.SentimentService") == health_pb2.HealthCheckResponse.SERVING
        assert c.analyze(["now"]).results


def test_shutdown_drains_in_flight_calls(built_classifier):
    # A long batching delay keeps the request queued while shutdown starts.
    settings = settings_for(built_classifier, batch=BatchSettings(max_delay_ms=1500, max_batch_size=32))
    srv = ServerThread(SentimentService(settings)).start()
    c = SentimentClient(srv.target)
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(c.analyze, ["drain me"])
        deadline = time.monotonic() + 10
        while srv.service.model.batcher.depth == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert srv.service.model.batcher.depth == 1
        stopping = srv.stop_async(grace=10)
        time.sleep(0.2)
        assert srv.server.health._server_status[""] == health_pb2.HealthCheckResponse.NOT_SERVING
        reply = in_flight.result(30)
        assert reply.results[0].label
        stopping.result(30)
    with pytest.raises(grpc.RpcError) as err:
        c.analyze(["after"], timeout=2)
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    c.close()
    srv.server = None
    srv.stop()


def test_a_request_whose_deadline_passes_in_the_queue_costs_no_compute(built_classifier):
    settings = settings_for(built_classifier, batch=BatchSettings(max_delay_ms=800, max_batch_size=32))
    with ServerThread(SentimentService(settings)).start() as srv, SentimentClient(srv.target) as c:
        batcher = srv.service.model.batcher
        before = batcher.batches
        with pytest.raises(grpc.RpcError) as err:
            c.analyze(["too slow for me"], timeout=0.2)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(1.0)  # past the batching delay: the worker has looked at the queue again
        assert batcher.batches == before and batcher.depth == 0
        assert c.analyze(["next one"]).results[0].label
        assert batcher.batches == before + 1
