"""Chat routing, retrieval and calibration as pure logic, then `nlpsuite evaluate --task chat --calibrate` end to end
with the tiny models (the figures mean nothing for tiny models; the flow, the file and the report must be right)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from nlpsuite.services.chat.knowledge_base import Passage
from nlpsuite.services.chat.retrieval import BM25, Hit, RetrievalIndex, words
from nlpsuite.services.chat.routing import (
    ROUTES, Decision, LabelledTurn, Observed, RouteModel, Routing, Scores, calibrate, decide, decide_turn, fit_platt,
    fit_temperature, route_features, routed,
)
from nlpsuite.shared.resources import examples_path

FAQ = Passage("faq-1", "faq", "What are your opening hours?", "9 to 5.")
DOC = Passage("doc#cheques", "document", "Cheques", "Pay in a cheque with the app. Photograph both sides.")


def hit(score: float, passage: Passage = FAQ, cosine: float | None = None) -> Hit:
    return Hit(passage, score, score if cosine is None else cosine, 0.0)


def probs(best: float, n: int = 4) -> np.ndarray:
    rest = (1 - best) / (n - 1)
    return np.array([best] + [rest] * (n - 1))


def test_words_drop_stop_words_and_plural_endings():
    assert words("How do I pay in cheques at the branches?") == ["pay", "cheque", "branche"]
    assert words("Opening hours") == ["open", "hour"]


def test_bm25_prefers_the_document_with_the_rare_word_and_is_normalised():
    bm25 = BM25([words(FAQ.search_text), words(DOC.search_text), words("fees for cheques and cards")])
    scores = bm25.normalized(words("photograph a cheque"))
    assert scores.argmax() == 1 and 0 < scores.max() <= 1
    assert bm25.normalized(words("zebra")).tolist() == [0, 0, 0]


def test_index_scores_a_passage_by_its_best_unit():
    texts, owners = RetrievalIndex.unit_texts([FAQ, DOC])
    assert texts == ["What are your opening hours?", "Cheques", "Pay in a cheque with the app.",
                     "Photograph both sides.", DOC.search_text] and owners == [0, 1, 1, 1, 1]
    vectors = np.eye(5, dtype=np.float32)  # each unit its own direction
    index = RetrievalIndex([FAQ, DOC], vectors, owners)
    top = index.search("anything", vectors[3], lexical_weight=0.0)
    assert top[0].passage is DOC and top[0].cosine == pytest.approx(1.0) and top[1].cosine == 0


def test_other_ways_of_asking_are_searched_as_units_and_words():
    faq = Passage("faq-1", "faq", "What are your opening hours?", "9 to 5.", questions=("when do you open",))
    doc = Passage("doc#cheques", "document", "Cheques", "Pay in a cheque.", questions=("photo of a check",))
    texts, owners = RetrievalIndex.unit_texts([faq, doc])
    assert texts == ["What are your opening hours?", "when do you open", "Cheques", "Pay in a cheque.",
                     doc.search_text, "photo of a check"] and owners == [0, 0, 1, 1, 1, 1]
    index = RetrievalIndex([faq, doc], np.eye(6, dtype=np.float32), owners)
    top = index.search("a photo of my check", np.zeros(6, np.float32), lexical_weight=1.0)
    assert top[0].passage is doc and top[0].lexical > 0  # "check" and "photo" are only in its questions


def test_decide_each_way():
    sure = Routing(temperature=1.0, retrieval_scale=10, retrieval_bias=-5, min_confidence=0.5, margin=0.1,
                   out_of_scope_below=0.3)
    assert decide(Scores(probs(0.9), [hit(0.2)]), sure).route == "intent"
    assert decide(Scores(probs(0.6), [hit(0.9)]), sure).route == "retrieval"  # q 0.98 beats p 0.6 by > 0.1
    low = decide(Scores(probs(0.3), [hit(0.4)]), sure)
    assert (low.route, low.reason) == ("handoff", "low_confidence")
    assert decide(Scores(probs(0.3), [hit(0.1)]), sure).reason == "out_of_scope"
    close = sure.model_copy(update={"ambiguity": 0.1, "margin": 0.0})
    assert decide(Scores(probs(0.92), [hit(0.74)]), close).reason == "ambiguous"  # q 0.90 vs p 0.92
    assert decide(Scores(probs(0.9), []), sure).route == "intent"


def test_the_nearest_intent_example_weighs_against_the_best_passage():
    routing = Routing(min_confidence=0.0, margin=0.0, knn_weight=2.0, retrieval_scale=10, retrieval_bias=-5)
    # q 0.73 against p 0.9: on probabilities alone the intent wins
    assert decide(Scores(probs(0.9), [hit(0.6)]), routing).route == "intent"
    # but the message is much nearer the passage (0.6) than any intent example (0.2) ...
    assert decide(Scores(probs(0.9), [hit(0.6)], intent_similarity=0.2), routing).route == "retrieval"
    # ... or nearer an intent example (0.9) than the passage
    assert decide(Scores(probs(0.9), [hit(0.6)], intent_similarity=0.9), routing).route == "intent"


def test_the_knowledge_label_leaves_the_answer_to_retrieval():
    labels = ["card_lost", "knowledge"]
    routing = Routing(min_confidence=0.5, retrieval_scale=10, retrieval_bias=-5)
    deferring = np.array([0.05, 0.95])
    assert decide(Scores(deferring, [hit(0.8)]), routing, labels).route == "retrieval"  # q 0.95
    assert decide(Scores(deferring, [hit(0.3)]), routing, labels).route == "handoff"  # q 0.12: nothing to answer with
    assert decide(Scores(deferring[::-1].copy(), [hit(0.3)]), routing, labels).route == "intent"


def test_a_follow_up_is_read_with_the_previous_message_only_when_alone_it_is_a_hand_off():
    routing = Routing(min_confidence=0.5)
    unclear, clear = Scores(probs(0.2), []), Scores(probs(0.9), [])
    assert decide_turn(unclear, clear, routing).intent_confidence == pytest.approx(0.9)
    assert decide_turn(clear, unclear, routing).intent_confidence == pytest.approx(0.9)
    assert decide_turn(unclear, None, routing).route == "handoff"


def test_temperature_and_platt_are_fitted_from_data():
    rng = np.random.default_rng(0)
    # an over-confident model: right only 60% of the time at 0.99 confidence -> T > 1 softens it
    turns = []
    for i in range(50):
        gold = i % 4
        predicted = gold if i % 5 < 3 else (gold + 1) % 4
        p = np.full(4, 0.01 / 3)
        p[predicted] = 0.99
        turns.append(LabelledTurn("intent", f"l{gold}", Observed("m", p, np.zeros(2)), None))
    assert fit_temperature(turns, ["l0", "l1", "l2", "l3"]) > 1.5
    x = rng.uniform(0, 1, 2000)
    y = rng.uniform(0, 1, 2000) < 1 / (1 + np.exp(-(8 * x - 4)))
    a, b = fit_platt(x, y)
    assert a == pytest.approx(8, rel=0.2) and b == pytest.approx(-4, rel=0.2)


def test_calibrate_learns_a_route_model_that_separates_the_kinds(tmp_path):
    labels = ["a", "b"]
    index = RetrievalIndex([FAQ], np.array([[1.0, 0.0]], np.float32), [0])
    turns = []
    for k in range(10):  # intents: sure intent, far from the FAQ; FAQ: unsure intent, near it; chit-chat: neither
        turns.append(LabelledTurn("intent", "a", Observed("x", np.array([0.9 + k / 200, 0.1 - k / 200]),
                                                          np.array([0.2, 0.98])), None))
        turns.append(LabelledTurn("faq", "faq-1", Observed("y", np.array([0.6, 0.4]), np.array([0.97, 0.24])), None))
        turns.append(LabelledTurn("handoff", "out_of_scope", Observed("z", np.array([0.55, 0.45]),
                                                                      np.array([0.1, -0.99])), None))

    def judge(turn: LabelledTurn, decision: Decision) -> bool:
        if turn.kind == "handoff":
            return decision.route == "handoff"
        if turn.kind == "faq":
            return decision.route == "retrieval"
        return decision.route == "intent" and labels[decision.intent] == turn.expected

    routing, figures = calibrate(turns, labels, judge, lambda text, v, w: index.search(text, v, w))
    assert figures == {"balanced_accuracy": 1.0, "accuracy": 1.0, "turns": 30}
    assert all(judge(t, decide_turn(Scores(t.message.probs, index.search("", t.message.vector, 0.3)), None, routing))
               for t in turns)
    assert routing.out_of_scope_below > 0.1  # the chit-chat's similarity is below it: called out_of_scope
    assert routing.route_model is not None
    routing.save(tmp_path / "routing.json")  # the learned model travels with the file
    again = Routing.load(tmp_path / "routing.json")
    assert again.route_model == routing.route_model
    assert [decide(Scores(t.message.probs, index.search("", t.message.vector, 0.3)), again, labels).route
            for t in turns[:3]] == ["intent", "retrieval", "handoff"]


def _route_model_choosing(route: str, n_features: int) -> RouteModel:
    """A route model whose bias alone picks `route` (every feature weight zero)."""
    weights = [[0.0] * len(ROUTES) for _ in range(n_features + 1)]
    weights[0][ROUTES.index(route)] = 5.0
    return RouteModel(mean=[0.0] * n_features, scale=[1.0] * n_features, weights=weights)


def test_a_learned_route_is_finished_by_the_same_rules():
    labels = ["card_lost", "knowledge"]
    scores = Scores(np.array([0.9, 0.1]), [hit(0.8, cosine=0.7)], intent_similarity=0.5)
    n = len(route_features(scores, 1.0, labels))
    assert n == 9
    with pytest.raises(ValueError, match="expected 9 features"):
        RouteModel(mean=[0.0] * 8, scale=[1.0] * 8, weights=[[0.0] * 3] * 9)
    for route in ROUTES:
        routing = Routing(route_model=_route_model_choosing(route, n), out_of_scope_below=0.3)
        assert decide(scores, routing, labels).route == route
    # the knowledge label's "intent" is retrieval's to answer; retrieval with nothing found hands off
    deferring = Scores(np.array([0.1, 0.9]), [hit(0.8)])
    assert routed("intent", deferring, Routing(), labels).route == "retrieval"
    assert routed("retrieval", Scores(np.array([0.9, 0.1]), []), Routing(), labels).route == "handoff"
    # a hand-off's reason: out of scope below the floor, ambiguous when answering was likelier but split
    far = Scores(np.array([0.9, 0.1]), [hit(0.2, cosine=0.1)])
    assert routed("handoff", far, Routing(out_of_scope_below=0.3), labels).reason == "out_of_scope"
    near = Routing(out_of_scope_below=0.05)
    assert routed("handoff", far, near, labels, answering=0.6, handing_off=0.4).reason == "ambiguous"
    assert routed("handoff", far, near, labels, answering=0.3, handing_off=0.7).reason == "low_confidence"


@pytest.mark.slow
def test_evaluate_chat_calibrates_saves_and_reports(built_intent, built_embedder, tmp_path):
    repo = tmp_path / "repo"
    for version in (built_intent, built_embedder):
        target = repo / ("intent" if version is built_intent else "embedder") / "1"
        import shutil
        shutil.copytree(version.path, target)
        manifest = json.loads((target / "manifest.json").read_text())
        manifest["name"] = target.parent.name
        (target / "manifest.json").write_text(json.dumps(manifest))
    cases = examples_path("chat_cases.csv")
    routing_file = tmp_path / "routings" / "chat.json"  # not there yet: calibrating writes it
    proc = subprocess.run([sys.executable, "-m", "nlpsuite.cli", "evaluate", "--task", "chat", "--repository",
                           str(repo), "--data", str(cases), "--routing", str(routing_file), "--calibrate"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no calibrated routing" not in proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["split"] == "test" and result["n"] == sum(1 for line in cases.read_text().splitlines()
                                                              if ",test," in line)
    assert set(result["per_kind"]) == {"intent", "faq", "document", "handoff"}
    saved = Routing.load(routing_file)
    assert saved.calibration["split"] == "dev" and saved.calibration["models"] == {"intent": "1", "embedder": "1"}
    assert result["routing"]["temperature"] == saved.temperature and saved.route_model is not None
    assert "overall" in proc.stdout and "document" in proc.stdout
    # a case naming an FAQ id the knowledge base lacks is a clear error
    bad = tmp_path / "bad.csv"
    bad.write_text("id,split,kind,expected,previous,message\nx1,test,faq,faq-999,,hello\n")
    proc = subprocess.run([sys.executable, "-m", "nlpsuite.cli", "evaluate", "--task", "chat", "--repository",
                           str(repo), "--data", str(bad)], capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "case x1 expects faq 'faq-999', which the knowledge base does not have" in (
        proc.stderr + proc.stdout)


def test_calibrating_on_the_intent_model_s_training_texts_is_warned_about(tmp_path, caplog):
    from types import SimpleNamespace

    from nlpsuite.pipeline.chat_eval import ChatCase, _warn_if_trained_on
    from nlpsuite.shared.model_repo import write_label_examples

    write_label_examples(tmp_path, ["My card is lost", "hello there"], ["card_lost", "greeting"])
    service = SimpleNamespace(intents=SimpleNamespace(model=SimpleNamespace(version=SimpleNamespace(path=tmp_path))))
    fresh = ChatCase(id="d1", split="dev", kind="intent", expected="card_lost", message="I can't find my card")
    with caplog.at_level("WARNING", logger="nlpsuite.pipeline.chat_eval"):
        _warn_if_trained_on([fresh], service)
        assert not caplog.records
        _warn_if_trained_on([fresh, fresh.model_copy(update={"id": "d2", "message": "my  card is LOST"})], service)
    assert len(caplog.records) == 1 and "own training texts" in caplog.records[0].getMessage()
    assert caplog.records[0].cases == 1 and caplog.records[0].first == "d2"
