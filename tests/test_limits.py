"""Every configurable limit is enforced, each checked on a real server (or the real monitor part) set to a
small value: requests past it are refused with the status and message that name it, state past it is evicted."""
from __future__ import annotations

import http.server
import threading
import time
from datetime import datetime, timezone

import grpc
import pytest

from nlpsuite.services.chat.client import ChatClient
from nlpsuite.services.chat.service import ChatService
from nlpsuite.services.recommend.client import RecommendClient
from nlpsuite.services.recommend.service import RecommendService
from nlpsuite.services.sentiment.client import SentimentClient
from nlpsuite.services.sentiment.service import SentimentService
from nlpsuite.shared.config import ChatSettings, ModelSettings, RecommendSettings
from nlpsuite.v1 import sentiment_pb2, sentiment_pb2_grpc
from nlpsuite.shared.local_run import ServerThread
from tests.support import settings_for


def _refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def _invalid(call, *needles: str) -> None:
    err = _refused(call)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    for needle in needles:
        assert needle in err.details()


def _model(version) -> ModelSettings:
    return ModelSettings(name=version.manifest.name, repository=version.path.parent.parent)


# -- sentiment: items, characters, message bytes (unary, stream, transport) -------------------------------

@pytest.fixture(scope="module")
def sentiment(built_classifier):
    settings = settings_for(built_classifier, max_items=4, max_text_chars=1000, max_message_bytes=2048)
    with ServerThread(SentimentService(settings)).start() as srv, SentimentClient(srv.target) as client:
        yield srv, client


def test_max_items(sentiment):
    _, c = sentiment
    assert len(c.analyze(["a"] * 4).results) == 4
    _invalid(lambda: c.analyze(["a"] * 5), "texts has 5 items", "limit of 4")


def test_max_text_chars(sentiment):
    _, c = sentiment
    assert c.analyze(["x" * 1000]).results
    _invalid(lambda: c.analyze(["ok", "x" * 1001]), "texts[1] has 1001 characters", "limit of 1000")
    replies = {r.request_id: r.error for r in c.analyze_stream([("long", "x" * 1001), ("ok", "fine")], timeout=30)}
    assert "INVALID_ARGUMENT" in replies["long"] and "1001 characters" in replies["long"] and not replies["ok"]


def test_max_message_bytes(sentiment):
    srv, c = sentiment
    _invalid(lambda: c.analyze(["x" * 900] * 3), "max_message_bytes", "2048")  # each text is within its limits
    # A stream item: 1000 two-byte characters (within max_text_chars) plus its id pass 2048 bytes.
    replies = {r.request_id: r.error for r in c.analyze_stream([("w" * 100, "é" * 1000)], timeout=30)}
    assert "INVALID_ARGUMENT" in replies["w" * 100] and "2048" in replies["w" * 100]
    # Far past the limit the transport refuses the message before any handler sees it.
    with grpc.insecure_channel(srv.target) as channel:
        stub = sentiment_pb2_grpc.SentimentServiceStub(channel)
        err = _refused(lambda: stub.Analyze(sentiment_pb2.AnalyzeRequest(texts=["x" * 80_000]), timeout=10))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert c.analyze(["still up"]).results


# -- recommend: candidates, history, embedding cache -------------------------------------------------------

@pytest.fixture(scope="module")
def recommend(built_embedder):
    settings = RecommendSettings(host="127.0.0.1", port=0, max_items=3, max_history=2, cache_size=4,
                                 embedder=_model(built_embedder), ranker=None)
    with ServerThread(RecommendService(settings)).start() as srv, RecommendClient(srv.target) as client:
        yield srv, client


def test_max_candidates_and_history(recommend):
    _, c = recommend
    user = c.user(history=["Alien (1979). Horror", "Heat (1995). Crime"])
    assert len(c.score(user, [("a", "Up (2009)"), ("b", "Jaws (1975)"), ("c", "Big (1988)")]).items) == 3
    _invalid(lambda: c.score(user, [(f"m{i}", f"Film {i}") for i in range(4)]), "candidates has 4 items", "limit of 3")
    longer = c.user(history=["Alien (1979)", "Heat (1995)", "Up (2009)"])
    _invalid(lambda: c.score(longer, [("a", "Big (1988)")]), "user.history has 3 items", "limit of 2")


def test_embedding_cache_size(recommend):
    srv, c = recommend
    user = c.user(profile="space adventures")
    for start in range(0, 12, 3):
        c.score(user, [(f"id{i}", f"Catalogue film {i}") for i in range(start, start + 3)])
        assert len(srv.service.cache) <= 4
    assert len(srv.service.cache) == 4  # full, and no fuller
    again = c.score(user, [("id0", "Catalogue film 0")])  # long evicted: embedded again
    assert not again.items[0].cached


# -- chat: conversations kept, turns kept, conversation id, items ------------------------------------------

@pytest.fixture(scope="module")
def chat(built_intent, built_embedder):
    settings = ChatSettings(host="127.0.0.1", port=0, intent_model=_model(built_intent),
                            embedder=_model(built_embedder), max_conversations=2, context_turns=2, max_items=2,
                            max_conversation_id_chars=16)
    with ServerThread(ChatService(settings)).start() as srv, ChatClient(srv.target) as client:
        yield srv, client


def test_conversations_and_turns_kept(chat):
    srv, c = chat
    store = srv.service.conversations
    assert [c.reply("a", "my card was stolen").turn for _ in range(3)] == [1, 2, 3]
    assert len(store.get("a").turns) == 2  # context_turns: only the last two are kept (get: "a" stays oldest)
    c.reply("b", "hello")
    c.reply("c", "hello")
    assert len(store) == 2
    assert c.reply("a", "hello again").turn == 1  # the least recently used conversation was evicted


def test_conversation_id_and_items(chat):
    _, c = chat
    assert c.reply("x" * 16, "hello").turn == 1
    _invalid(lambda: c.reply("x" * 17, "hello"), "longer than 16", "max_conversation_id_chars")
    assert len(c.classify_intent(["hello", "bye"]).predictions) == 2
    _invalid(lambda: c.classify_intent(["a", "b", "c"]), "texts has 3 items", "limit of 2")


# -- monitor: the webhook queue --------------------------------------------------------------------------------

class _HeldReceiver(http.server.BaseHTTPRequestHandler):
    release = threading.Event()
    received: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802
        self.received.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.release.wait(30)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_webhook_queue():
    from nlpsuite.services.monitor.app import Monitor
    from nlpsuite.services.monitor.config import MonitorSettings
    from nlpsuite.services.monitor.schema import Alert

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HeldReceiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    now = datetime.now(timezone.utc)
    alerts = [Alert(id=f"a{i}", rule="r", key_kind="entity", key="K", name="K", window_start=now, window_end=now,
                    negatives=5, total=5, share=1.0, baseline=0.0, ratio=10.0, severity="high", triggered_by="n",
                    triggered_event_time=now, headlines=[]) for i in range(4)]
    try:
        monitor = Monitor(MonitorSettings(webhook_url=f"http://127.0.0.1:{server.server_port}/hook",
                                          webhook_queue=2, webhook_retries=0), stages=())
        monitor.sink(alerts[0])
        for _ in range(300):  # until the sender holds the first one (its POST is blocked in the receiver)
            if _HeldReceiver.received:
                break
            time.sleep(0.05)
        assert len(_HeldReceiver.received) == 1
        for alert in alerts[1:]:
            monitor.sink(alert)  # two fit in the queue, the third is dropped
        assert monitor.metrics.webhook_failures._value.get() == 1
        _HeldReceiver.release.set()
        monitor.stop()
        assert len(_HeldReceiver.received) == 3
    finally:
        _HeldReceiver.release.set()
        server.shutdown()


def test_monitor_batch_max():
    import json
    import threading as _threading

    from kafka import KafkaProducer

    from nlpsuite.services.monitor.broker import LocalBroker, create_topics
    from nlpsuite.services.monitor.metrics import MonitorMetrics
    from nlpsuite.services.monitor.scorer import Scorer
    from nlpsuite.services.monitor.local_replay import replay_settings, unique_topics

    topics = unique_topics("limits")
    with LocalBroker() as broker:
        create_topics(broker.bootstrap, topics.all(), partitions=1)
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, allow_auto_create_topics=False)
        for i in range(10):
            producer.send(topics.news, value=json.dumps({"id": f"n{i}"}).encode())
        producer.flush()
        producer.close()
        scorer = Scorer(replay_settings(broker.bootstrap, topics, "127.0.0.1:1", batch_max=3), MonitorMetrics(),
                        _threading.Event())
        scorer.open()
        try:
            polls = []
            deadline = time.monotonic() + 60
            while sum(polls) < 10 and time.monotonic() < deadline:
                records = scorer.consumer.poll(timeout_ms=500)
                polls.append(sum(len(r) for r in records.values()))
        finally:
            scorer.close()
    assert sum(polls) == 10 and max(polls) == 3


# -- the maxima together ---------------------------------------------------------------------------------

def test_limits_that_cannot_be_met_together_are_refused_at_start():
    """Before: recommend's defaults allowed 1,000 candidates + 500 history items + a profile (1,501 texts) with a
    queue of 1,024, so that request got RESOURCE_EXHAUSTED on an idle server every time; and 256 texts of 20,000
    characters were over the 4 MiB message limit."""
    from nlpsuite.shared.config import BatchSettings, ConfigError, SentimentSettings, load_settings

    with pytest.raises(ValueError, match=r"max_items \(1000\) \+ max_history \(500\) \+ the profile \(1\) = 1501 "
                                         r"texts in one request, over batch.queue_capacity \(1024\)"):
        RecommendSettings(batch=BatchSettings(queue_capacity=1024))
    # The byte limit binding first is said at start (INVALID_ARGUMENT is not retried, so it is no error).
    assert SentimentSettings().byte_limit_binds() is None and RecommendSettings().byte_limit_binds() is None
    assert "over max_message_bytes (4194304)" in SentimentSettings(max_message_bytes=4 << 20).byte_limit_binds()
    with pytest.raises(ConfigError, match="recommend: .*over batch.queue_capacity"):
        load_settings(recommend={"max_history": 5000})
    with pytest.raises(ValueError, match=r"2 for a follow-up Reply\) = 2 texts in one request"):
        ChatSettings(max_items=1, batch=BatchSettings(queue_capacity=1))
    # A partial batch section keeps the section's defaults (recommend's larger queue among them).
    assert load_settings(recommend={"batch": {"workers": 4}}).recommend.batch.queue_capacity == 4096


def _big_channel(target: str) -> grpc.Channel:
    return grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 32 << 20),
                                                  ("grpc.max_receive_message_length", 32 << 20)])


def _text(chars: int, i: int) -> str:
    return (f"item {i} " + "shares rose after the results beat expectations " * (chars // 40 + 1))[:chars]


@pytest.mark.slow
def test_the_largest_request_the_default_limits_allow_is_answered(built_classifier, built_embedder, built_intent):
    """Each service with its default limits gets, on an idle server, the largest request its documentation
    allows (every item at its character limit, ASCII) and answers it."""
    from nlpsuite.shared.config import BatchSettings, SentimentSettings
    from nlpsuite.v1 import chat_pb2, chat_pb2_grpc, recommend_pb2, recommend_pb2_grpc

    s = SentimentSettings(host="127.0.0.1", port=0, model=_model(built_classifier))
    with ServerThread(SentimentService(s)).start() as srv, _big_channel(srv.target) as channel:
        texts = [_text(s.max_text_chars, i) for i in range(s.max_items)]
        reply = sentiment_pb2_grpc.SentimentServiceStub(channel).Analyze(
            sentiment_pb2.AnalyzeRequest(texts=texts), timeout=120)
        assert len(reply.results) == s.max_items == 256

    c = ChatSettings(host="127.0.0.1", port=0, intent_model=_model(built_intent), embedder=_model(built_embedder))
    with ServerThread(ChatService(c)).start() as srv, _big_channel(srv.target) as channel:
        texts = [_text(c.max_text_chars, i) for i in range(c.max_items)]
        reply = chat_pb2_grpc.ChatServiceStub(channel).ClassifyIntent(
            chat_pb2.ClassifyIntentRequest(texts=texts), timeout=120)
        assert len(reply.predictions) == c.max_items

    r = RecommendSettings(host="127.0.0.1", port=0, embedder=_model(built_embedder), ranker=None)
    assert r.batch == BatchSettings(queue_capacity=4096)
    with ServerThread(RecommendService(r)).start() as srv, _big_channel(srv.target) as channel:
        user = recommend_pb2.User(history=[recommend_pb2.HistoryItem(text=_text(r.max_text_chars, i))
                                           for i in range(r.max_history)], profile=_text(r.max_text_chars, -1))
        candidates = [recommend_pb2.Candidate(id=f"m{i}", text=_text(r.max_text_chars, 10_000 + i))
                      for i in range(r.max_items)]
        reply = recommend_pb2_grpc.RecommendServiceStub(channel).Score(
            recommend_pb2.ScoreRequest(user=user, candidates=candidates), timeout=120)
        assert len(reply.items) == r.max_items == 1000


def _deep_bytes(store) -> int:
    """What the store really holds: conversations, their deques, turns, messages and ids."""
    import sys

    total = sys.getsizeof(store._items)
    for key, conv in store._items.items():
        total += sys.getsizeof(key) + sys.getsizeof(conv) + sys.getsizeof(conv.turns) + sys.getsizeof(conv.extra)
        total += sum(sys.getsizeof(t) + sys.getsizeof(t.message) for t in conv.turns)
    return total


def test_conversation_context_memory_is_bounded_not_only_counted(built_intent, built_embedder):
    """Long messages through the real Reply RPC. Before the fix every kept turn held its whole message (a 20,000
    character message starting with an emoji: ~80 KB a turn), so the default caps (10,000 conversations x 5 turns)
    allowed several GiB against the chat pod's 3 GiB limit."""
    budget = 512 << 10
    settings = ChatSettings(host="127.0.0.1", port=0, intent_model=_model(built_intent),
                            embedder=_model(built_embedder), context_memory_bytes=budget)
    message = "\N{CREDIT CARD} " + ("my card was stolen and I need a new one " * 500)[:19_998]
    with ServerThread(ChatService(settings)).start() as srv, ChatClient(srv.target) as c:
        store = srv.service.conversations
        for i in range(150):
            assert [c.reply(f"conv-{i}", message).turn for _ in range(3)] == [1, 2, 3]
        held, counted, kept = _deep_bytes(store), store.bytes, len(store)
        last = store.get("conv-149")
    per_conversation = held / kept
    print(f"context: {kept} conversations kept, {held} bytes held ({per_conversation:.0f} per conversation), "
          f"{counted} counted, budget {budget}")
    assert held <= budget and counted <= budget
    assert 0.5 * held <= counted <= 2 * held  # the store's own count tracks what it really holds
    assert 50 <= kept < 150  # the budget, not the count cap (10,000), dropped the least recently used
    assert [t.message for t in last.turns][:-1] == ["", ""] and message.startswith(last.last.message)
    assert settings.max_tokens * 8 - 40 <= len(last.last.message) <= settings.max_tokens * 8


def test_a_knowledge_base_larger_than_the_queue_still_loads(built_intent, built_embedder):
    """The knowledge collection is embedded in chunks of half the queue: with a queue of 2 texts the shipped FAQ and
    documents (many more units than that) load, and a follow-up Reply (two texts) is answered."""
    from nlpsuite.shared.config import BatchSettings

    settings = ChatSettings(host="127.0.0.1", port=0, intent_model=_model(built_intent),
                            embedder=_model(built_embedder), max_items=2, batch=BatchSettings(queue_capacity=2))
    with ServerThread(ChatService(settings)).start() as srv, ChatClient(srv.target) as c:
        index = srv.service.index
        assert len(srv.service.kb.passages) > 2 and index.vectors.shape[0] == len(index.owners) > len(index.passages)
        assert [c.reply("q", "where is my card").turn, c.reply("q", "it has not arrived").turn] == [1, 2]
