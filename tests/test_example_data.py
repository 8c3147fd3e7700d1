"""The shipped example data keeps its evaluation honest: the chat cases' test half is not in the intent model's
training texts, not even as a near copy (the reported test accuracy would then measure memory, not the model)."""
import csv
import difflib
import re

from nlpsuite.pipeline.defaults import examples_dir

NEAR_COPY = 0.85  # difflib ratio on lower-cased letters, digits and spaces


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


def _rows(name: str) -> list[dict]:
    with open(examples_dir() / name, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_no_intent_training_text_is_a_near_copy_of_a_test_case():
    training = [_norm(r["text"]) for r in _rows("intents.csv")]
    cases = [(r["id"], _norm(r["message"])) for r in _rows("chat_cases.csv") if r["split"] == "test"]
    assert len(training) > 500 and len(cases) > 100
    copies = []
    for text in training:
        for case_id, message in cases:
            matcher = difflib.SequenceMatcher(None, text, message)
            if matcher.real_quick_ratio() >= NEAR_COPY and matcher.ratio() >= NEAR_COPY:
                copies.append((case_id, message, text))
    assert copies == []


def test_the_near_copy_rule_catches_a_copy():
    matcher = difflib.SequenceMatcher(None, _norm("whats my balance pls"), _norm("What's my balance?"))
    assert matcher.ratio() >= NEAR_COPY
