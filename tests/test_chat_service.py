"""ChatService over a real channel with a tiny real intent classifier and embedder."""
from __future__ import annotations

import csv
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from nlpsuite.services.chat.client import ChatClient
from nlpsuite.services.chat.conversations import ConversationStore, Turn
from nlpsuite.services.chat.knowledge_base import KnowledgeBase
from nlpsuite.services.chat.routing import Routing
from nlpsuite.services.chat.service import ChatService
from nlpsuite.shared.config import ChatSettings, ModelSettings
from nlpsuite.shared.model import open_model, softmax
from nlpsuite.shared.resources import examples_path
from nlpsuite.v1 import chat_pb2
from nlpsuite.shared.local_run import ServerThread
from tests.support import reflected_services


def model_settings(version) -> ModelSettings:
    return ModelSettings(name=version.manifest.name, repository=version.path.parent.parent)


def chat_settings(intent, embedder, **overrides) -> ChatSettings:
    return ChatSettings(host="127.0.0.1", port=0, intent_model=model_settings(intent),
                        embedder=model_settings(embedder), **overrides)


def routing_file(tmp_path, **params) -> Path:
    """Routing parameters as the levers of a test (a real one comes from `evaluate --task chat --calibrate`)."""
    path = tmp_path / "routing.json"
    Routing(**params).save(path)
    return path


ALWAYS_INTENT = {"min_confidence": 0.0, "margin": 2.0}  # retrieval never beats the intent by 2
ALWAYS_RETRIEVAL = {"min_confidence": 0.0, "margin": -2.0, "lexical_weight": 0.0}

CLIENT = ChatClient  # the `client` fixture (conftest.py) connects one to the module's `server`


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


def test_low_confidence_is_handed_off_and_unlike_anything_is_out_of_scope(built_intent, built_embedder, tmp_path):
    for floor, reason in ((-1.0, "low_confidence"), (2.0, "out_of_scope")):
        routing = routing_file(tmp_path, min_confidence=1.0, out_of_scope_below=floor)
        settings = chat_settings(built_intent, built_embedder, routing=routing)
        with ServerThread(ChatService(settings)).start() as srv, ChatClient(srv.target) as c:
            reply = c.reply("c1", "my card has not arrived yet")
            assert reply.handoff and reply.handoff_reason == reason
            assert reply.source == chat_pb2.ANSWER_SOURCE_HANDOFF and reply.answer
            assert reply.turn == 1


def test_a_confident_intent_without_an_answer_is_handed_off_as_no_answer(
        built_intent, built_embedder, own_predictions, intent_data, tmp_path):
    texts, _ = intent_data
    predicted, _ = own_predictions
    raw = yaml.safe_load(examples_path("knowledge_base.yaml").read_text())
    del raw["intents"][predicted[0]]
    raw["documents"] = [str(examples_path("knowledge_base.yaml").parent / "knowledge" / "*.md")]
    path = tmp_path / "kb.yaml"
    path.write_text(yaml.safe_dump(raw))
    settings = chat_settings(built_intent, built_embedder, knowledge_base=path,
                             routing=routing_file(tmp_path, **ALWAYS_INTENT))
    with ServerThread(ChatService(settings)).start() as srv, ChatClient(srv.target) as c:
        reply = c.reply("c1", texts[0])
        assert reply.intent == predicted[0]
        assert reply.handoff and reply.handoff_reason == "no_answer"
        assert reply.source == chat_pb2.ANSWER_SOURCE_HANDOFF


def test_confident_intents_answer_from_the_knowledge_base_and_asking_for_a_person_hands_off(
        built_intent, built_embedder, own_predictions, intent_data, tmp_path):
    texts, _ = intent_data
    predicted, _ = own_predictions
    kb = KnowledgeBase.load()
    handoff_intent = predicted[0]
    other = next(i for i, p in enumerate(predicted) if p != handoff_intent and not kb.intents[p].handoff)
    settings = chat_settings(built_intent, built_embedder, handoff_intents=[handoff_intent],
                             routing=routing_file(tmp_path, **ALWAYS_INTENT))
    with ServerThread(ChatService(settings)).start() as srv, ChatClient(srv.target) as c:
        asked = c.reply("c1", texts[0])
        assert asked.handoff and asked.handoff_reason == "customer_asked"
        assert asked.answer == kb.intents[handoff_intent].answer
        answered = c.reply("c2", texts[other])
        assert not answered.handoff and answered.source == chat_pb2.ANSWER_SOURCE_INTENT
        assert answered.answer == kb.intents[predicted[other]].answer and answered.source_id == predicted[other]
        assert answered.model.name == "tiny-intent" and answered.timing.total_us > 0


def test_retrieval_answers_from_the_faq_and_from_document_passages(built_intent, built_embedder, tmp_path):
    kb = KnowledgeBase.load()
    entry = kb.faq[5]
    passage = next(p for p in kb.passages if p.source == "document")
    complaint = next(p for p in kb.passages if p.handoff)
    settings = chat_settings(built_intent, built_embedder, routing=routing_file(tmp_path, **ALWAYS_RETRIEVAL))
    with ServerThread(ChatService(settings)).start() as srv, ChatClient(srv.target) as c:
        reply = c.reply("faq", entry.question)
        assert reply.source == chat_pb2.ANSWER_SOURCE_FAQ and not reply.handoff
        assert reply.faq_id == reply.source_id == entry.id and reply.answer == entry.answer
        assert reply.faq_similarity == pytest.approx(1.0, abs=1e-3)
        assert 0 < reply.retrieval_confidence <= 1
        doc = c.reply("doc", passage.answer)  # the whole passage is one of its embedded units
        assert doc.source == chat_pb2.ANSWER_SOURCE_DOCUMENT and doc.source_id == passage.id
        assert doc.answer == passage.answer and not doc.faq_id
        handed = c.reply("complaint", complaint.title)  # an entry that answers and hands off
        assert handed.handoff and handed.handoff_reason == "customer_asked" and handed.source_id == complaint.id


def test_a_follow_up_is_read_with_the_previous_message_only_when_alone_it_is_unclear(
        built_intent, built_embedder, tmp_path):
    kb = KnowledgeBase.load()
    entry = kb.faq[3]
    # Retrieval only answers what matches well: a bare "thanks?" does not, the FAQ question before it does.
    routing = routing_file(tmp_path, min_confidence=0.9, margin=-2.0, lexical_weight=0.0, retrieval_scale=40.0,
                           retrieval_bias=-36.0, temperature=100.0)
    settings = chat_settings(built_intent, built_embedder, routing=routing)
    with ServerThread(ChatService(settings)).start() as srv, ChatClient(srv.target) as c:
        assert c.reply("alone", "and then?").handoff
        first = c.reply("conv", entry.question)
        assert first.source_id == entry.id
        follow = c.reply("conv", "and then?")
        assert not follow.handoff and follow.source_id == entry.id and follow.turn == 2


def test_routing_file_is_read_and_a_missing_one_named(built_intent, built_embedder, tmp_path):
    import asyncio

    service = ChatService(chat_settings(built_intent, built_embedder, routing=tmp_path / "absent.json"))
    with pytest.raises(ValueError, match="routing file .*absent.json does not exist"):
        asyncio.run(service.load())


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


@pytest.mark.parametrize("kb, files, needle", [
    ("faq:\n  - {id: a, question: q, answer: x}\n  - {id: a, question: q2, answer: y}\n", {},
     "duplicate FAQ id 'a'"),
    ("", {}, "kb.yaml is empty: give intents, faq or documents"),
    ("intents: {}\nfaq: []\n", {}, "kb.yaml is empty"),
    ("- just\n- a list\n", {}, "expected a mapping with intents, faq and documents"),
    ("faq: [{id: x, question: [unclosed\n", {}, "kb.yaml: while parsing"),
    ("faq:\n  - {id: ok, question: q, answer: a}\n  - {id: no-answer, question: q2}\n", {},
     "faq entry 2 (id 'no-answer'): answer: Field required"),
    ("faqs:\n  - {id: a, question: q, answer: x}\n", {}, "faqs: Extra inputs are not permitted"),
    ("documents: [missing.md]\n", {}, "documents entry 'missing.md' names no readable file"),
    ("documents: [long.md]\n", {"long.md": "# T\n\n## Fees\n\n" + "word " * 500}, "long.md: section 'Fees' has "
     "2499 characters, over the 2000 a passage may have"),
    ("documents: [empty.md]\n", {"empty.md": "# Title only\n"}, "empty.md has no `## ` sections"),
    ("documents: [p.yaml]\n", {"p.yaml": "- {id: p1, title: t}\n"}, "p.yaml: passage 1 (id 'p1'): text: Field "
     "required"),
    ("faq:\n  - {id: fees#a, question: q, answer: x}\ndocuments: [fees.md]\n", {"fees.md": "## A\ntext\n"},
     "passage id 'fees#a' is used twice"),
    ("documents: [notes.txt]\n", {"notes.txt": "hello"}, "only Markdown (.md) and YAML (.yaml) documents"),
    ("faq:\n  - {id: a, question: q, answer: x}\nquestions:\n  hours#sunday: ['open sundays?']\n", {},
     "questions given for 'hours#sunday', which no FAQ entry or document passage has as its id"),
    ("faq:\n  - {id: a, question: q, answer: x, questions: ['  ']}\n", {},
     "faq entry 1 (id 'a'): questions.0: String should have at least 1 character"),
])
def test_knowledge_base_rejects_bad_files_naming_file_and_entry(tmp_path, kb, files, needle):
    path = tmp_path / "kb.yaml"
    path.write_text(kb)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ValueError) as err:
        KnowledgeBase.load(path)
    assert needle in str(err.value), str(err.value)


def test_knowledge_documents_become_passages(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "hours.md").write_text("# Hours\n\nIntro.\n\n## Saturday opening\nOpen 9 to 1.\n\n"
                                                "## Bank holidays\nClosed.\nReally.\n")
    (tmp_path / "docs" / "more.yaml").write_text("- {id: m1, title: Coins, text: We count coins., handoff: true}\n")
    (tmp_path / "kb.yaml").write_text("faq:\n  - {id: f1, question: 'q?', answer: a.}\ndocuments: [docs/*]\n")
    kb = KnowledgeBase.load(tmp_path / "kb.yaml")
    assert [(p.id, p.source, p.title, p.answer, p.handoff) for p in kb.passages] == [
        ("f1", "faq", "q?", "a.", False),
        ("hours#saturday-opening", "document", "Saturday opening", "Open 9 to 1.", False),
        ("hours#bank-holidays", "document", "Bank holidays", "Closed. Really.", False),
        ("m1", "document", "Coins", "We count coins.", True)]


def test_other_ways_of_asking_are_kept_per_passage(tmp_path):
    (tmp_path / "hours.md").write_text("## Saturday opening\nOpen 9 to 1.\n")
    (tmp_path / "more.yaml").write_text("- {id: m1, title: Coins, text: We count coins., "
                                        "questions: ['bag of coins?']}\n")
    (tmp_path / "kb.yaml").write_text(
        "faq:\n  - {id: f1, question: 'q?', answer: a., questions: [other q, another q]}\n"
        "documents: [hours.md, more.yaml]\n"
        "questions:\n  hours#saturday-opening: ['open at the weekend?']\n  f1: [another q, third q]\n")
    kb = KnowledgeBase.load(tmp_path / "kb.yaml")
    assert {p.id: p.questions for p in kb.passages} == {
        "f1": ("other q", "another q", "third q"), "hours#saturday-opening": ("open at the weekend?",),
        "m1": ("bag of coins?",)}


def test_health_and_reflection(server):
    from grpc_health.v1 import health_pb2

    assert server.health("nlpsuite.v1.ChatService") == health_pb2.HealthCheckResponse.SERVING
    assert {"nlpsuite.v1.ChatService", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= reflected_services(server.target)
