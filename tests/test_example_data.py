"""The shipped example data keeps its evaluation honest: no chat case is, even as a near copy, a text the models
learn from (the intent and embedder training texts) or one retrieval indexes as a way of asking (an FAQ question,
a section title, the knowledge base's other ways of asking). A test-half copy would make the reported accuracy
measure memory, not the models; a dev-half copy would teach the routing calibration that a near-perfect match is
what customers' messages usually get."""
import csv
import difflib
import re

from nlpsuite.pipeline.defaults import examples_dir
from nlpsuite.services.chat.knowledge_base import KnowledgeBase

NEAR_COPY = 0.85  # difflib ratio on lower-cased letters, digits and spaces


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


def _rows(name: str) -> list[dict]:
    with open(examples_dir() / name, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _learned_texts() -> list[str]:
    """intents.csv, and every FAQ question, section title and other way of asking in the example knowledge base
    (the defaults train the intent model and the embedder on them, and retrieval matches messages against them)."""
    kb = KnowledgeBase.load(examples_dir() / "knowledge_base.yaml")
    texts = [r["text"] for r in _rows("intents.csv")]
    for passage in kb.passages:
        texts += [passage.title, *passage.questions] if passage.title else list(passage.questions)
    return texts


def _near_copies(texts: list[str], cases: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    copies = []
    for text in dict.fromkeys(_norm(t) for t in texts):
        for case_id, message in cases:
            matcher = difflib.SequenceMatcher(None, text, message)
            if matcher.real_quick_ratio() >= NEAR_COPY and matcher.ratio() >= NEAR_COPY:
                copies.append((case_id, message, text))
    return copies


def test_no_chat_case_is_a_near_copy_of_a_text_the_models_learn_or_index():
    texts = _learned_texts()
    cases = [(r["id"], _norm(r["message"])) for r in _rows("chat_cases.csv")]
    assert len(texts) > 700 and len(cases) > 200
    assert _near_copies(texts, cases) == []


def test_the_near_copy_rule_catches_a_copy():
    assert _near_copies(["What's my balance?"], [("c1", _norm("whats my balance pls"))]) != []
    assert _near_copies(["What's my balance?"], [("c1", _norm("is my card blocked"))]) == []


def test_no_dev_case_is_a_near_copy_of_a_test_case():
    """The routing is calibrated and recipes are chosen on the dev half: a copy of a test case there would leak it."""
    rows = _rows("chat_cases.csv")
    dev = [_norm(r["message"]) for r in rows if r["split"] == "dev"]
    test = [(r["id"], _norm(r["message"])) for r in rows if r["split"] == "test"]
    assert len(dev) > 150
    assert _near_copies(dev, test) == []
