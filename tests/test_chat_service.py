"""ChatService over a real channel with a tiny real intent classifier and embedder."""
from __future__ import annotations

import csv

import grpc
import numpy as np
import pytest
import yaml

from nlpsuite.services.chat.client import ChatClient
from nlpsuite.services.chat.conversations import ConversationStore, Turn
from nlpsuite.services.chat.knowledge_base import KnowledgeBase
from nlpsuite.services.chat.service import ChatService
from nlpsuite.shared.config import ChatSettings, ModelSettings
from nlpsuite.shared.model import open_model, softmax
from nlpsuite.shared.resources import examples_path
from nlpsuite.v1 import chat_pb2
from tests.servers import ServerThread, reflected_services


def model_settings(version) -> ModelSettings:
    return ModelSettings(name=version.manifest.name, repository=version.path.parent.parent)


def chat_settings(intent, embedder, **overrides) -> ChatSettings:
    return ChatSettings(host="127.0.0.1", port=0, intent_model=model_settings(intent),
                        embedder=model_settings(embedder), **overrides)


@pytest.fixture(scope="module")
def intent_data():
    rows = list(csv.DictReader(open(examples_path("intents.csv"), newline="")))
    return [r["text"] for r in rows], [r["intent"] for r in rows]


@pytest.fixture(scope="module")
def own_predictions(built_intent, intent_data):
    model = open_model(built_intent)
    texts, _ = intent_data
    probs = np.concatenate([softmax(model.predict(texts[i:i + 32])) for i in range(0, len(texts), 32)])
    labels = built_intent.manifest.labels
    return [labels[i] for i in probs.argmax(1)], probs.max(1)


@pytest.fixture(scope="module")
def server(built_intent, built_embedder):
    settings = chat_settings(built_intent, built_embedder, max_items=1000)
    with ServerThread(ChatService(settings)).start() as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with ChatClient(server.target) as c:
        yield c


def test_intent_accuracy_through_the_service_equals_the_models_own(client, intent_data, own_predictions):
    texts, gold = intent_data
    predicted, confidence = own_predictions
    reply = client.classify_intent(texts)
    served = [p.intent for p in reply.predictions]
    assert served == predicted
    assert np.allclose([p.confidence for p in reply.predictions], confidence, atol=1e-4)
    served_acc = np.mean([s == g for s, g in zip(served, gold)])
    own_acc = np.mean([p == g for p, g in zip(predicted, gold)])
    assert served_acc == own_acc
    assert len(reply.predictions[0].top) == 3 and reply.predictions[0].top[0].label == served[0]
    assert reply.model.name == "tiny-intent" and reply.model.variant == "int8"
    # Reply, one fresh conversation per message, names the same intent.
    for i in range(0, len(texts), 40):
        assert client.reply(f"fresh-{i}", texts[i]).intent == predicted[i]


def test_low_confidence_is_handed_off(built_intent, built_embedder):
    settings = chat_settings(built_intent, built_embedder, intent_threshold=1.0, handoff_threshold=1.0,
                             faq_threshold=1.0)
    with ServerThread(ChatService(settings)).start() as srv, ChatClient(srv.target) as c:
        reply = c.reply("c1", "my card has not arrived yet")
        assert reply.handoff and reply.handoff_reason == "low_confidence"
        assert reply.source == chat_pb2.ANSWER_SOURCE_HANDOFF and reply.answer
        assert reply.turn == 1


def test_a_confident_intent_without_an_answer_is_handed_off_as_no_answer(
        built_intent, built_embedder, own_predictions, intent_data, tmp_path):
    texts, _ = intent_data
    predicted, _ = own_predictions
    kb = KnowledgeBase.load()
    del kb.intents[predicted[0]]
    path = tmp_path / "kb.yaml"
    path.write_text(yaml.safe_dump(kb.model_dump(mode="json")))
    settings = chat_settings(built_intent, built_embedder, knowledge_base=path, intent_threshold=0.0,
                             faq_threshold=1.0)
    with ServerThread(ChatService(settings)).start() as srv, ChatClient(srv.target) as c:
        reply = c.reply("c1", texts[0])
        assert reply.intent == predicted[0]
        assert reply.handoff and reply.handoff_reason == "no_answer"
        assert reply.source == chat_pb2.ANSWER_SOURCE_HANDOFF


def test_confident_intents_answer_from_the_knowledge_base_and_asking_for_a_person_hands_off(
        built_intent, built_embedder, own_predictions, intent_data):
    texts, _ = intent_data
    predicted, _ = own_predictions
    kb = KnowledgeBase.load()
    handoff_intent = predicted[0]
    other = next(i for i, p in enumerate(predicted) if p != handoff_intent and not kb.intents[p].handoff)
    settings = chat_settings(built_intent, built_embedder, intent_threshold=0.0, handoff_intents=[handoff_intent])
    with ServerThread(ChatService(settings)).start() as srv, ChatClient(srv.target) as c:
        asked = c.reply("c1", texts[0])
        assert asked.handoff and asked.handoff_reason == "customer_asked"
        assert asked.answer == kb.intents[handoff_intent].answer
        answered = c.reply("c2", texts[other])
        assert not answered.handoff and answered.source == chat_pb2.ANSWER_SOURCE_INTENT
        assert answered.answer == kb.intents[predicted[other]].answer
        assert answered.model.name == "tiny-intent" and answered.timing.total_us > 0


def test_unsure_intent_falls_back_to_the_most_similar_faq_entry(built_intent, built_embedder):
    kb = KnowledgeBase.load()
    entry = kb.faq[5]
    settings = chat_settings(built_intent, built_embedder, intent_threshold=1.0, faq_threshold=0.0)
    with ServerThread(ChatService(settings)).start() as srv, ChatClient(srv.target) as c:
        reply = c.reply("faq", entry.question)
        assert reply.source == chat_pb2.ANSWER_SOURCE_FAQ and not reply.handoff
        assert reply.faq_id == entry.id and reply.answer == entry.answer
        assert reply.faq_similarity == pytest.approx(1.0, abs=1e-3)


def test_turns_are_counted_per_conversation(client):
    assert [client.reply("turns", "hello").turn for _ in range(3)] == [1, 2, 3]
    assert client.reply("other", "hello").turn == 1


@pytest.mark.parametrize("conversation_id, message, needle", [
    ("", "hello", "conversation_id is required"),
    ("x" * 200, "hello", "conversation_id is longer"),
    ("c", "", "message is empty"),
    ("c", "  ", "message is empty"),
])
def test_reply_bad_input(client, conversation_id, message, needle):
    with pytest.raises(grpc.RpcError) as err:
        client.reply(conversation_id, message)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in err.value.details()
    assert client.reply("still-up", "hello").intent


def test_classify_intent_bad_input(client):
    for texts, needle in (([], "texts is empty"), (["a", ""], "texts[1] is empty")):
        with pytest.raises(grpc.RpcError) as err:
            client.classify_intent(texts)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in err.value.details()


def test_conversation_store_is_bounded_by_turns_ttl_and_count():
    now = [0.0]
    store = ConversationStore(max_turns=2, ttl_s=10, max_conversations=2, clock=lambda: now[0])
    conv = store.get("a")
    for i in range(4):
        store.add(conv, Turn(f"m{i}", "x", 0.5))
    # Only the last turn's message is kept (the only one a follow-up uses); older turns keep intent and confidence.
    assert [(t.message, t.intent) for t in conv.turns] == [("", "x"), ("m3", "x")] and conv.count == 4
    store.get("b")
    store.get("c")  # over the cap: "a", least recently used, goes
    assert len(store) == 2 and store.get("a").count == 0
    now[0] = 100.0  # everything expired
    assert store.get("b").count == 0 and len(store) == 1


def test_knowledge_base_rejects_bad_files(tmp_path):
    path = tmp_path / "kb.yaml"
    path.write_text("faq:\n  - {id: a, question: q, answer: x}\n  - {id: a, question: q2, answer: y}\n")
    with pytest.raises(ValueError, match="duplicate FAQ id"):
        KnowledgeBase.load(path)


def test_health_and_reflection(server):
    from grpc_health.v1 import health_pb2

    assert server.health("nlpsuite.v1.ChatService") == health_pb2.HealthCheckResponse.SERVING
    assert {"nlpsuite.v1.ChatService", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= reflected_services(server.target)
