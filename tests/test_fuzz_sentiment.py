"""Property-based fuzzing of SentimentService (Analyze, AnalyzeStream) on a real server with a tiny real model.

Examples per RPC and mode: NLPSUITE_FUZZ_EXAMPLES (default 150).
"""
from __future__ import annotations

import grpc
import pytest
from hypothesis import given, strategies as st

from nlpsuite.services.sentiment.service import SentimentService
from nlpsuite.shared.config import ModelSettings, SentimentSettings
from nlpsuite.v1 import sentiment_pb2, sentiment_pb2_grpc
from tests import fuzz_support as fz
from tests.fuzz_support import channel  # noqa: F401 - the fixture

SERVICE = "nlpsuite.v1.SentimentService"
ALLOWED_ITEM_ERRORS = tuple(code.name for code in fz.ALLOWED)


@pytest.fixture(scope="module")
def classifier_version(request):
    return fz.model_version(request, "built_classifier", "tiny")


@pytest.fixture(scope="module")
def server(classifier_version):
    settings = SentimentSettings(
        host="127.0.0.1", port=0, max_items=fz.MAX_ITEMS, max_text_chars=fz.MAX_TEXT_CHARS,
        max_message_bytes=fz.MAX_MESSAGE_BYTES,
        model=ModelSettings(name=classifier_version.manifest.name, repository=classifier_version.path.parent.parent))
    yield from fz.serve(SentimentService(settings))


@pytest.fixture(scope="module")
def labels(classifier_version):
    return list(classifier_version.manifest.labels)


def check_result(result: sentiment_pb2.SentimentResult, labels: list[str]) -> None:
    assert [s.label for s in result.scores] == labels
    scores = [s.score for s in result.scores]
    assert fz.probabilities_ok(scores), scores
    best = max(range(len(scores)), key=scores.__getitem__)
    assert result.confidence == pytest.approx(scores[best], abs=1e-6)
    assert result.label in labels and scores[labels.index(result.label)] == pytest.approx(max(scores), abs=1e-6)


def check_analyze(response: sentiment_pb2.AnalyzeResponse, texts: list[str], labels: list[str]) -> None:
    assert len(response.results) == len(texts)
    for result in response.results:
        check_result(result, labels)
    assert fz.model_info_ok(response.model)


@fz.FUZZ
@given(texts=fz.text_lists(), timeout=st.sampled_from([fz.TIMEOUT_S] * 9 + [0.001]))
def test_analyze_typed(channel, labels, texts, timeout):
    stub = sentiment_pb2_grpc.SentimentServiceStub(channel)
    fz.typed_case(channel, SERVICE, "Analyze",
                  [lambda: stub.Analyze(sentiment_pb2.AnalyzeRequest(texts=texts), timeout=timeout)],
                  lambda response: check_analyze(response, texts, labels))


@fz.FUZZ
@given(payload=fz.wire_messages("texts"))
def test_analyze_raw_wire(channel, labels, payload):
    def check(raw: bytes) -> None:
        request = sentiment_pb2.AnalyzeRequest.FromString(payload)  # it parsed on the server, so it parses here
        check_analyze(sentiment_pb2.AnalyzeResponse.FromString(raw), list(request.texts), labels)

    fz.raw_case(channel, SERVICE, "Analyze", payload, check)


stream_items = st.lists(st.tuples(fz.short_texts(), fz.texts()), max_size=12)


@fz.FUZZ
@given(items=st.one_of(stream_items, st.builds(lambda t, n: [("r", t)] * n, fz.texts(), st.integers(50, 400))))
def test_analyze_stream_typed(channel, labels, items):
    fz.CASES["AnalyzeStream"] += 1
    stub = sentiment_pb2_grpc.SentimentServiceStub(channel)
    requests = [sentiment_pb2.AnalyzeStreamRequest(request_id=rid, text=text) for rid, text in items]
    try:
        replies = list(stub.AnalyzeStream(iter(requests), timeout=fz.TIMEOUT_S))
    except grpc.RpcError as err:
        fz.check_status(err.code(), err.details(), "AnalyzeStream")
    else:
        assert sorted(r.request_id for r in replies) == sorted(rid for rid, _ in items)  # one reply per item
        for reply in replies:
            if reply.error:
                assert reply.error.startswith(ALLOWED_ITEM_ERRORS), reply.error
                assert not reply.HasField("result")
            else:
                check_result(reply.result, labels)
                assert fz.model_info_ok(reply.model)
    fz.assert_serving(channel, SERVICE)


@fz.FUZZ
@given(payloads=st.lists(fz.wire_messages("stream_item"), min_size=1, max_size=6))
def test_analyze_stream_raw_wire(channel, labels, payloads):
    fz.CASES["AnalyzeStream.raw"] += 1
    call = channel.stream_stream(f"/{SERVICE}/AnalyzeStream")
    try:
        replies = [sentiment_pb2.AnalyzeStreamResponse.FromString(r)
                   for r in call(iter(payloads), timeout=fz.TIMEOUT_S)]
    except grpc.RpcError as err:
        fz.check_status(err.code(), err.details(), "AnalyzeStream (raw)")
    else:
        assert len(replies) == len(payloads)
        for reply in replies:
            if reply.error:
                assert reply.error.startswith(ALLOWED_ITEM_ERRORS), reply.error
            else:
                check_result(reply.result, labels)
    fz.assert_serving(channel, SERVICE)
