"""From a routing decision to the reply a customer gets: the knowledge base's answer rules, in one place."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nlpsuite.services.chat.knowledge_base import KnowledgeBase
from nlpsuite.services.chat.routing import Decision, LabelledTurn

Source = Literal["intent", "faq", "document", "handoff"]

NOT_UNDERSTOOD = "I'm not sure I understood. Let me pass you to one of our advisors."
OUT_OF_SCOPE = "I'm sorry, that isn't something I can help with here. Let me pass you to one of our advisors."


@dataclass(frozen=True)
class Outcome:
    source: Source
    answer: str
    source_id: str  # the intent label, FAQ id or document passage id answered from ("" for a plain hand-off)
    handoff: bool
    reason: str  # why it was handed off: customer_asked, no_answer, low_confidence, out_of_scope, ambiguous


def outcome(decision: Decision, kb: KnowledgeBase, labels: list[str], handoff_intents: list[str]) -> Outcome:
    if decision.route == "retrieval" and decision.hit is not None:
        passage = decision.hit.passage
        if passage.handoff:  # e.g. complaints: answer, and pass the conversation on
            return Outcome("handoff", passage.answer, passage.id, True, "customer_asked")
        return Outcome("faq" if passage.source == "faq" else "document", passage.answer, passage.id, False, "")
    if decision.route == "intent":
        label = labels[decision.intent]
        answer = kb.intents.get(label)
        if answer is None:  # a confident intent the knowledge base has no answer for
            return Outcome("handoff", NOT_UNDERSTOOD, label, True, "no_answer")
        if answer.handoff or label in handoff_intents:
            return Outcome("handoff", answer.answer, label, True, answer.handoff_reason)
        return Outcome("intent", answer.answer, label, False, "")
    text = OUT_OF_SCOPE if decision.reason == "out_of_scope" else NOT_UNDERSTOOD
    return Outcome("handoff", text, "", True, decision.reason)


def unclear_with(kb: KnowledgeBase, labels: list[str], handoff_intents: list[str]):
    """A decision that leaves the customer unanswered for want of understanding (not a requested hand-off): a
    follow-up is then read with the previous message."""
    def unclear(decision: Decision) -> bool:
        return outcome(decision, kb, labels, handoff_intents).reason in ("low_confidence", "out_of_scope",
                                                                         "ambiguous")

    return unclear


def is_right(kind: str, expected: str, out: Outcome) -> bool:
    """Whether a reply is what a labelled message expects (a hand-off is right for a hand-off, whatever the reason)."""
    if kind == "handoff":
        return out.handoff
    if kind == "intent":
        return out.source == "intent" and out.source_id == expected
    return out.source in ("faq", "document") and out.source_id == expected


def judge_with(kb: KnowledgeBase, labels: list[str], handoff_intents: list[str]):
    def judge(turn: LabelledTurn, decision: Decision) -> bool:
        return is_right(turn.kind, turn.expected, outcome(decision, kb, labels, handoff_intents))

    return judge
