"""Property-based fuzzing of ChatService (Reply, ClassifyIntent) on a real server with tiny real models.

Examples per RPC and mode: NLPSUITE_FUZZ_EXAMPLES (default 150).
"""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from nlpsuite.services.chat.service import ChatService
from nlpsuite.shared.config import ChatSettings, ModelSettings
from nlpsuite.v1 import chat_pb2, chat_pb2_grpc
from tests import fuzz_support as fz
from tests.fuzz_support import channel  # noqa: F401 - the fixture

SERVICE = "nlpsuite.v1.ChatService"
TOP_K = 3


def model_settings(version) -> ModelSettings:
    return ModelSettings(name=version.manifest.name, repository=version.path.parent.parent)


@pytest.fixture(scope="module")
def intent_version(request):
    return fz.model_version(request, "built_intent", "tiny-intent")


@pytest.fixture(scope="module")
def embedder_version(request):
    return fz.model_version(request, "built_embedder", "tiny-embed")


@pytest.fixture(scope="module")
def server(intent_version, embedder_version):
    settings = ChatSettings(host="127.0.0.1", port=0, max_items=fz.MAX_ITEMS, max_text_chars=fz.MAX_TEXT_CHARS,
                            max_message_bytes=fz.MAX_MESSAGE_BYTES, top_k=TOP_K, max_conversations=500,
                            intent_model=model_settings(intent_version), embedder=model_settings(embedder_version))
    yield from fz.serve(ChatService(settings))


@pytest.fixture(scope="module")
def labels(intent_version):
    return list(intent_version.manifest.labels)


def check_classify(response: chat_pb2.ClassifyIntentResponse, n: int, labels: list[str]) -> None:
    assert len(response.predictions) == n
    for p in response.predictions:
        top = [(s.label, s.score) for s in p.top]
        assert len(top) == min(TOP_K, len(labels))
        assert all(label in labels for label, _ in top) and len({label for label, _ in top}) == len(top)
        assert [s for _, s in top] == sorted((s for _, s in top), reverse=True)
        assert all(0.0 <= s <= 1.0 + 1e-6 for _, s in top) and sum(s for _, s in top) <= 1.0 + 1e-3
        assert p.intent == top[0][0] and p.confidence == pytest.approx(top[0][1], abs=1e-6)
    assert fz.model_info_ok(response.model)


def check_reply(reply: chat_pb2.ReplyResponse, labels: list[str]) -> None:
    assert reply.intent in labels and 0.0 <= reply.confidence <= 1.0 + 1e-6
    assert reply.answer and reply.source != chat_pb2.ANSWER_SOURCE_UNSPECIFIED
    assert reply.turn >= 1
    assert reply.handoff == (reply.source == chat_pb2.ANSWER_SOURCE_HANDOFF)
    assert bool(reply.faq_id) == (reply.source == chat_pb2.ANSWER_SOURCE_FAQ)
    assert -1.0 - 1e-3 <= reply.faq_similarity <= 1.0 + 1e-3
    assert fz.model_info_ok(reply.model)


@fz.FUZZ
@given(texts=fz.text_lists(), timeout=st.sampled_from([fz.TIMEOUT_S] * 9 + [0.001]))
def test_classify_intent_typed(channel, labels, texts, timeout):
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    fz.typed_case(channel, SERVICE, "ClassifyIntent",
                  [lambda: stub.ClassifyIntent(chat_pb2.ClassifyIntentRequest(texts=texts), timeout=timeout)],
                  lambda response: check_classify(response, len(texts), labels))


@fz.FUZZ
@given(payload=fz.wire_messages("texts"))
def test_classify_intent_raw_wire(channel, labels, payload):
    def check(raw: bytes) -> None:
        n = len(chat_pb2.ClassifyIntentRequest.FromString(payload).texts)
        check_classify(chat_pb2.ClassifyIntentResponse.FromString(raw), n, labels)

    fz.raw_case(channel, SERVICE, "ClassifyIntent", payload, check)


conversation_ids = st.one_of(fz.short_texts(), st.sampled_from(["c1", "c2", "x" * 128, "x" * 129, "\x00"]))


@fz.FUZZ
@given(turns=st.lists(st.tuples(conversation_ids, fz.texts()), min_size=1, max_size=4),
       timeout=st.sampled_from([fz.TIMEOUT_S] * 9 + [0.001]))
def test_reply_typed(channel, labels, turns, timeout):
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    calls = [lambda c=conversation_id, m=message: stub.Reply(chat_pb2.ReplyRequest(conversation_id=c, message=m),
                                                             timeout=timeout) for conversation_id, message in turns]
    fz.typed_case(channel, SERVICE, "Reply", calls, lambda reply: check_reply(reply, labels))


@fz.FUZZ
@given(payload=fz.wire_messages("reply"))
def test_reply_raw_wire(channel, labels, payload):
    fz.raw_case(channel, SERVICE, "Reply", payload,
                lambda raw: check_reply(chat_pb2.ReplyResponse.FromString(raw), labels))
