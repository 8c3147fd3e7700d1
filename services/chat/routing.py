"""Choosing an answer: the intent model and retrieval are both scored for every message and compared on
calibrated scales; neither confident, or too close to call, hands the conversation to a person.

- The intent model's confidence is temperature-scaled: softmax(log p / T), T fitted on labelled messages.
- Retrieval's is the probability that its best passage answers the message, a logistic curve over the hybrid
  score fitted on the same messages (Platt scaling).
- Where the intent model keeps its training examples (examples.json), the message's similarity to the nearest
  of them is weighed against its similarity to the best passage: both come from the same embedder, on one
  scale, which the two models' probabilities are not.
- Thresholds (least confidence to answer, margin and ambiguity between the two, the weight of that similarity
  comparison, and the similarity below which a message is unlike anything the bank handles) are chosen on the
  labelled dev messages by `calibrate`, and kept with the models (`Routing.save`), never set by hand.
"""
from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from nlpsuite.services.chat.retrieval import Hit

Route = Literal["intent", "retrieval", "handoff"]
# An intent model may learn this label for "a question for the knowledge collection" (the default one does, from
# the FAQ questions and section titles): chosen, it leaves the answer to retrieval.
KNOWLEDGE_LABEL = "knowledge"
Kind = Literal["intent", "faq", "document", "handoff"]


class Routing(BaseModel):
    """Calibrated routing parameters (defaults: uncalibrated, for a knowledge base nobody has labelled yet)."""

    temperature: float = Field(1.0, gt=0)
    lexical_weight: float = Field(0.3, ge=0, le=1)
    retrieval_scale: float = 12.0
    retrieval_bias: float = -7.0
    min_confidence: float = Field(0.5, ge=0, le=1)
    margin: float = 0.0  # retrieval answers when its advantage over the intent is more than this
    # The advantage: retrieval's confidence minus the intent's, plus knn_weight x how much closer the message is to
    # the best passage than to the nearest of the intent model's own training examples (same embedder, same scale).
    knn_weight: float = Field(0.0, ge=0)
    ambiguity: float = Field(0.0, ge=0)  # both confident and the advantage this close to the margin: "ambiguous"
    out_of_scope_below: float = 0.3  # a hand-off whose best passage similarity is below this is "out_of_scope"
    calibration: dict[str, object] = Field(default_factory=dict)  # data, models and dev figures it came from

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Routing:
        return cls.model_validate_json(path.read_text())


@dataclass(frozen=True)
class Scores:
    """What the models said about one text."""

    probs: np.ndarray  # the intent model's probabilities
    hits: list[Hit]  # best passages first
    intent_similarity: float | None = None  # cosine to the nearest intent training example (None: none known)


@dataclass(frozen=True)
class Decision:
    route: Route
    reason: str  # for a hand-off: low_confidence, out_of_scope or ambiguous
    intent: int  # the intent model's best label (index)
    intent_confidence: float  # calibrated
    hit: Hit | None
    retrieval_confidence: float  # calibrated


def intent_confidence(probs: np.ndarray, temperature: float) -> tuple[int, float]:
    logits = np.log(np.clip(probs.astype(np.float64), 1e-12, 1.0)) / temperature
    scaled = np.exp(logits - logits.max())
    scaled /= scaled.sum()
    best = int(np.argmax(scaled))
    return best, float(scaled[best])


def retrieval_confidence(hit: Hit | None, routing: Routing) -> float:
    if hit is None:
        return 0.0
    return 1.0 / (1.0 + math.exp(-(routing.retrieval_scale * hit.score + routing.retrieval_bias)))


def decide(scores: Scores, routing: Routing, labels: Sequence[str] = ()) -> Decision:
    best, p = intent_confidence(scores.probs, routing.temperature)
    hit = scores.hits[0] if scores.hits else None
    q = retrieval_confidence(hit, routing)
    deferring = bool(labels) and labels[best] == KNOWLEDGE_LABEL  # the intent model leaves it to retrieval
    if deferring and hit is not None and q >= routing.min_confidence:
        return Decision("retrieval", "", best, p, hit, q)

    def handoff(reason: str) -> Decision:
        return Decision("handoff", reason, best, p, hit, q)

    if deferring or max(p, q) < routing.min_confidence:
        similarity = hit.cosine if hit is not None else -1.0
        return handoff("out_of_scope" if similarity < routing.out_of_scope_below else "low_confidence")
    advantage = q - p
    if hit is not None and scores.intent_similarity is not None:
        advantage += routing.knn_weight * (hit.cosine - scores.intent_similarity)
    if (routing.ambiguity > 0 and min(p, q) >= routing.min_confidence
            and abs(advantage - routing.margin) < routing.ambiguity):
        return handoff("ambiguous")
    route: Route = "retrieval" if advantage > routing.margin else "intent"
    return Decision(route, "", best, p, hit, q)


Unclear = Callable[[Decision], bool]  # whether a decision leaves the customer without an answer


def _handed_off(decision: Decision) -> bool:
    return decision.route == "handoff"


def decide_turn(message: Scores, combined: Scores | None, routing: Routing, labels: Sequence[str] = (),
                unclear: Unclear = _handed_off) -> Decision:
    """A follow-up ("it still hasn't come") is read with the previous message when alone it is unclear (by default:
    handed off; the service also counts an intent whose answer is an out-of-scope hand-off)."""
    decision = decide(message, routing, labels)
    if combined is not None and unclear(decision):
        together = decide(combined, routing, labels)
        if not unclear(together):
            return together
    return decision


# -- calibration ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Observed:
    """One text as the models saw it: enough to score it again under any routing parameters."""

    text: str
    probs: np.ndarray  # the intent model's probabilities
    vector: np.ndarray  # the embedder's unit vector
    intent_similarity: float | None = None  # cosine to the nearest intent training example


@dataclass(frozen=True)
class LabelledTurn:
    """A dev message with its expected outcome, and (for a follow-up) the message read with its predecessor."""

    kind: Kind
    expected: str  # an intent label, an FAQ or passage id, or a hand-off reason
    message: Observed
    combined: Observed | None


Search = Callable[[str, np.ndarray, float], list[Hit]]  # (text, vector, lexical_weight) -> best passages first
Judge = Callable[[LabelledTurn, Decision], bool]


def scored(turn: LabelledTurn, search: Search, lexical_weight: float) -> tuple[Scores, Scores | None]:
    def one(o: Observed) -> Scores:
        return Scores(o.probs, search(o.text, o.vector, lexical_weight), o.intent_similarity)

    return one(turn.message), (one(turn.combined) if turn.combined is not None else None)


def fit_temperature(turns: Sequence[LabelledTurn], labels: list[str]) -> float:
    """T minimising the negative log-likelihood of the expected intents."""
    rows = [(t.message.probs, labels.index(t.expected)) for t in turns if t.kind == "intent" and t.expected in labels]
    if not rows:
        return 1.0

    def nll(temperature: float) -> float:
        total = 0.0
        for probs, gold in rows:
            logits = np.log(np.clip(probs.astype(np.float64), 1e-12, 1.0)) / temperature
            total -= logits[gold] - (logits.max() + math.log(np.exp(logits - logits.max()).sum()))
        return total

    grid = np.exp(np.linspace(math.log(0.2), math.log(10.0), 60))
    return float(min(grid, key=nll))


def fit_lexical_weight(turns: Sequence[LabelledTurn], search: Search) -> float:
    """The BM25 share that puts the expected passage first most often on FAQ/document messages."""
    wanted = [t for t in turns if t.kind in ("faq", "document")]
    if not wanted:
        return 0.3
    grid = [round(float(w), 2) for w in np.arange(0.0, 0.61, 0.05)]
    accuracy = {w: sum(1 for t in wanted if (h := search(t.message.text, t.message.vector, w))
                       and h[0].passage.id == t.expected) for w in grid}
    best = max(accuracy.values())
    return float(np.median([w for w, a in accuracy.items() if a == best]))  # the middle of the best plateau


def fit_platt(scores: np.ndarray, correct: np.ndarray) -> tuple[float, float]:
    """Logistic regression of `correct` on `scores` (Newton's method, a small ridge keeps it finite)."""
    a, b = 1.0, 0.0
    x, y = scores.astype(np.float64), correct.astype(np.float64)
    for _ in range(100):
        p = 1 / (1 + np.exp(-(a * x + b)))
        w = p * (1 - p) + 1e-9
        grad = np.array([((p - y) * x).sum() + 1e-3 * a, (p - y).sum()])
        hess = np.array([[(w * x * x).sum() + 1e-3, (w * x).sum()], [(w * x).sum(), w.sum()]])
        step = np.linalg.solve(hess, grad)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-8:
            break
    return float(a), float(b)


def calibrate(turns: Sequence[LabelledTurn], labels: list[str], judge: Judge,
              search: Search, unclear: Unclear = _handed_off) -> tuple[Routing, dict[str, float]]:
    """Routing parameters that get the most dev turns right, balanced over the kinds (each kind counts equally).

    `search` ranks passages for a text under a BM25 share; `judge(turn, decision)` says whether the reply a
    decision leads to is the expected one (the service's answer rules applied)."""
    temperature = fit_temperature(turns, labels)
    lexical_weight = fit_lexical_weight(turns, search)
    turn_scores = [scored(t, search, lexical_weight) for t in turns]
    tops = np.array([m.hits[0].score if m.hits else 0.0 for m, _ in turn_scores])
    correct = np.array([bool(m.hits) and t.kind in ("faq", "document") and m.hits[0].passage.id == t.expected
                        for t, (m, _) in zip(turns, turn_scores)])
    scale, bias = fit_platt(tops, correct) if correct.any() and not correct.all() else (12.0, -7.0)
    kinds = sorted({t.kind for t in turns})
    tried: list[tuple[tuple[float, float], Routing]] = []
    knn = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0) if any(t.message.intent_similarity is not None for t in turns) else (0.0,)
    grid = itertools.product(np.round(np.arange(0.2, 0.81, 0.05), 2), np.round(np.arange(-1.0, 1.01, 0.1), 2),
                             (0.0, 0.02, 0.05, 0.1), knn)
    for min_confidence, margin, ambiguity, knn_weight in grid:
        routing = Routing(temperature=temperature, lexical_weight=lexical_weight, retrieval_scale=scale,
                          retrieval_bias=bias, min_confidence=float(min_confidence), margin=float(margin),
                          ambiguity=float(ambiguity), knn_weight=knn_weight, out_of_scope_below=-1.0)
        right = [judge(t, decide_turn(m, c, routing, labels, unclear)) for t, (m, c) in zip(turns, turn_scores)]
        per_kind = [np.mean([r for r, t in zip(right, turns) if t.kind == k]) for k in kinds]
        tried.append(((float(np.mean(per_kind)), float(np.mean(right))), routing))
    key, routing = _robust_best(tried)
    routing.out_of_scope_below = _fit_out_of_scope(turns, turn_scores, routing, labels, unclear)
    return routing, {"balanced_accuracy": round(key[0], 4), "accuracy": round(key[1], 4), "turns": len(turns)}


def _robust_best(tried: list[tuple[tuple[float, float], Routing]], within: float = 0.01
                 ) -> tuple[tuple[float, float], Routing]:
    """Of the settings within `within` of the best balanced accuracy, the one nearest their median: a few
    hundred labelled messages leave many near-ties, and the middle of that region generalises better than
    whichever corner happened to score highest."""
    top = max(k[0] for k, _ in tried)
    near = [(k, r) for k, r in tried if k[0] >= top - within]
    fields = ("min_confidence", "margin", "ambiguity", "knn_weight")
    values = np.array([[getattr(r, f) for f in fields] for _, r in near])
    spread = np.maximum(values.max(axis=0) - values.min(axis=0), 1e-9)
    centre = np.median(values, axis=0)
    return min(near, key=lambda kr: (float((np.abs(np.array([getattr(kr[1], f) for f in fields]) - centre)
                                            / spread).sum()), -kr[0][0]))


def _fit_out_of_scope(turns: Sequence[LabelledTurn], turn_scores: list[tuple[Scores, Scores | None]],
                      routing: Routing, labels: Sequence[str], unclear: Unclear) -> float:
    """The similarity below which a hand-off is called out_of_scope: the best split of the dev hand-offs."""
    rows = []
    for t, (m, c) in zip(turns, turn_scores):
        decision = decide_turn(m, c, routing, labels, unclear)
        if decision.route == "handoff" and decision.hit is not None:
            rows.append((decision.hit.cosine, t.kind == "handoff" and t.expected == "out_of_scope"))
    if not rows:
        return 0.3
    grid = sorted({round(c, 3) for c, _ in rows} | {1.0})
    return float(max(grid, key=lambda g: (sum((c < g) == oos for c, oos in rows), -g)))


def describe(routing: Routing) -> str:
    return json.dumps({k: round(v, 4) if isinstance(v, float) else v
                       for k, v in routing.model_dump().items() if k != "calibration"})
