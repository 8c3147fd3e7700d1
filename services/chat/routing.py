"""Choosing an answer: the intent model and retrieval are both scored for every message and compared on
calibrated scales; neither confident, or too close to call, hands the conversation to a person.

- The intent model's confidence is temperature-scaled: softmax(log p / T), T fitted on labelled messages.
- Retrieval's is the probability that its best passage answers the message, a logistic curve over the hybrid
  score fitted on the same messages (Platt scaling).
- Where the intent model keeps its training examples (examples.json), the message's similarity to the nearest
  of them is set against its similarity to the best passage: both come from the same embedder, on one scale,
  which the two models' probabilities are not.
- Calibrated on labelled messages (`calibrate`), the choice is a learned one: a multinomial logistic regression
  (`RouteModel`) from those scores to the route (intent, retrieval or hand-off) whose reply is right. On the example
  bank's dev half, 4-fold cross-validated, it chose right 0.905 of the time where the best thresholds on the same
  scores (least confidence, margin, ambiguity, similarity weight, grid-searched) chose right 0.861.
- Uncalibrated (a knowledge base nobody has labelled yet), thresholds with neutral defaults decide instead.
- A hand-off whose best passage similarity is below a fitted floor is "out_of_scope"; one where answering is likelier
  than not but neither way wins is "ambiguous". Everything fitted is kept with the models (`Routing.save`).
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator

from nlpsuite.services.chat.retrieval import Hit

Route = Literal["intent", "retrieval", "handoff"]
# An intent model may learn this label for "a question for the knowledge collection" (the default one does, from
# the FAQ questions and section titles): chosen, it leaves the answer to retrieval.
KNOWLEDGE_LABEL = "knowledge"
Kind = Literal["intent", "faq", "document", "handoff"]


ROUTES: tuple[Route, ...] = ("intent", "retrieval", "handoff")
ROUTE_L2 = 0.3  # the route model's ridge: the best of 0.01-1 in 4-fold CV on the example dev half (all within 1
# point)
ROUTE_FEATURES = 9  # len(route_features(...))


class RouteModel(BaseModel):
    """P(route | scores): standardised `route_features`, then a linear layer and a softmax over ROUTES."""

    mean: list[float]
    scale: list[float]
    weights: list[list[float]]  # (1 + features) rows x len(ROUTES) columns; row 0 is the bias

    @model_validator(mode="after")
    def _shapes(self) -> RouteModel:
        if not (len(self.mean) == len(self.scale) == ROUTE_FEATURES == len(self.weights) - 1
                and all(len(row) == len(ROUTES) for row in self.weights)):
            raise ValueError(f"route_model: expected {ROUTE_FEATURES} features (mean, scale) and "
                             f"{ROUTE_FEATURES + 1} x {len(ROUTES)} weights: recalibrate with this version")
        return self

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        x = np.concatenate([[1.0], (features - np.array(self.mean)) / np.array(self.scale)])
        z = x @ np.array(self.weights)
        e = np.exp(z - z.max())
        return e / e.sum()


class Routing(BaseModel):
    """Calibrated routing parameters (defaults: uncalibrated, for a knowledge base nobody has labelled yet: the
    thresholds below decide; once calibrated, `route_model` does)."""

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
    route_model: RouteModel | None = None
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


def route_features(scores: Scores, temperature: float, labels: Sequence[str] = ()) -> np.ndarray:
    """What the route model reads: the intent's calibrated confidence (and its log), the raw probability of the
    knowledge label and whether it is the best, the best passage's cosine and hybrid score, its cosine lead over the
    next passage, the cosine to the nearest intent example, and the passage's lead over that example."""
    best, p = intent_confidence(scores.probs, temperature)
    knowledge = labels.index(KNOWLEDGE_LABEL) if KNOWLEDGE_LABEL in labels else None
    hits = scores.hits
    cosine, score = (hits[0].cosine, hits[0].score) if hits else (0.0, 0.0)
    lead = cosine - hits[1].cosine if len(hits) > 1 else 0.0
    nearest = scores.intent_similarity if scores.intent_similarity is not None else 0.0
    return np.array([p, math.log(p + 1e-6), float(scores.probs[knowledge]) if knowledge is not None else 0.0,
                     float(knowledge == best), cosine, score, lead, nearest, cosine - nearest])


def _unlike_anything(hit: Hit | None, routing: Routing) -> bool:
    """A hand-off is out_of_scope when its best passage (if any) is less similar than the fitted floor."""
    return (hit.cosine if hit is not None else -1.0) < routing.out_of_scope_below


def routed(route: Route, scores: Scores, routing: Routing, labels: Sequence[str] = (),
           answering: float = 0.0, handing_off: float = 1.0) -> Decision:
    """The decision for a chosen route: the knowledge label's intent is retrieval's to answer, retrieval with
    nothing found hands off, and a hand-off gets its reason (out_of_scope below the similarity floor; ambiguous
    when answering was likelier than handing off but neither way of answering won)."""
    best, p = intent_confidence(scores.probs, routing.temperature)
    hit = scores.hits[0] if scores.hits else None
    q = retrieval_confidence(hit, routing)
    if route == "intent" and labels and labels[best] == KNOWLEDGE_LABEL:
        route = "retrieval"
    if route == "retrieval" and hit is None:
        route = "handoff"
    reason = ""
    if route == "handoff":
        reason = ("out_of_scope" if _unlike_anything(hit, routing)
                  else "ambiguous" if answering > handing_off else "low_confidence")
    return Decision(route, reason, best, p, hit, q)


def decide(scores: Scores, routing: Routing, labels: Sequence[str] = ()) -> Decision:
    if routing.route_model is not None:
        chances = routing.route_model.probabilities(route_features(scores, routing.temperature, labels))
        route = ROUTES[int(np.argmax(chances))]
        return routed(route, scores, routing, labels, answering=float(chances[0] + chances[1]),
                      handing_off=float(chances[2]))
    best, p = intent_confidence(scores.probs, routing.temperature)
    hit = scores.hits[0] if scores.hits else None
    q = retrieval_confidence(hit, routing)
    deferring = bool(labels) and labels[best] == KNOWLEDGE_LABEL  # the intent model leaves it to retrieval
    if deferring and hit is not None and q >= routing.min_confidence:
        return Decision("retrieval", "", best, p, hit, q)

    def handoff(reason: str) -> Decision:
        return Decision("handoff", reason, best, p, hit, q)

    if deferring or max(p, q) < routing.min_confidence:
        return handoff("out_of_scope" if _unlike_anything(hit, routing) else "low_confidence")
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


def fit_route_model(turns: Sequence[LabelledTurn], turn_scores: Sequence[tuple[Scores, Scores | None]],
                    routing: Routing, labels: Sequence[str], judge: Judge, l2: float = ROUTE_L2) -> RouteModel | None:
    """The route model that gives the labelled messages the most likely right reply: each message counts every
    route whose reply the judge accepts (a hand-off request is right by the intent route or by a hand-off), and the
    loss is -log of their summed probability, ridge-penalised (bias excepted); gradient descent on a convex loss.
    None when no message has a right route."""
    rows, accepted = [], []
    for turn, (message, _) in zip(turns, turn_scores):
        ok = [judge(turn, routed(route, message, routing, labels)) for route in ROUTES]
        if any(ok):
            rows.append(route_features(message, routing.temperature, labels))
            accepted.append(ok)
    if not rows:
        return None
    x, a = np.array(rows), np.array(accepted, np.float64)
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    xs = np.hstack([np.ones((len(x), 1)), (x - mean) / scale])
    ridge = np.r_[0.0, np.ones(xs.shape[1] - 1)][:, None] * l2 / len(x)
    w = np.zeros((xs.shape[1], len(ROUTES)))
    for _ in range(5000):
        z = xs @ w
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        right = p * a
        step = xs.T @ (p - right / right.sum(axis=1, keepdims=True)) / len(x) + ridge * w
        w -= 0.5 * step
        if np.abs(step).max() < 1e-7:
            break
    return RouteModel(mean=mean.tolist(), scale=scale.tolist(), weights=w.tolist())


def calibrate(turns: Sequence[LabelledTurn], labels: list[str], judge: Judge,
              search: Search, unclear: Unclear = _handed_off) -> tuple[Routing, dict[str, float]]:
    """Routing fitted on labelled dev turns: the temperature, the BM25 share, retrieval's Platt curve, the route
    model and the out-of-scope floor. Returns it with its accuracy on those turns (overall, and balanced: each kind
    counts equally).

    `search` ranks passages for a text under a BM25 share; `judge(turn, decision)` says whether the reply a
    decision leads to is the expected one (the service's answer rules applied)."""
    temperature = fit_temperature(turns, labels)
    lexical_weight = fit_lexical_weight(turns, search)
    turn_scores = [scored(t, search, lexical_weight) for t in turns]
    tops = np.array([m.hits[0].score if m.hits else 0.0 for m, _ in turn_scores])
    correct = np.array([bool(m.hits) and t.kind in ("faq", "document") and m.hits[0].passage.id == t.expected
                        for t, (m, _) in zip(turns, turn_scores)])
    scale, bias = fit_platt(tops, correct) if correct.any() and not correct.all() else (12.0, -7.0)
    routing = Routing(temperature=temperature, lexical_weight=lexical_weight, retrieval_scale=scale,
                      retrieval_bias=bias, out_of_scope_below=-1.0)
    routing.route_model = fit_route_model(turns, turn_scores, routing, labels, judge)
    routing.out_of_scope_below = _fit_out_of_scope(turns, turn_scores, routing, labels, unclear)
    right = [judge(t, decide_turn(m, c, routing, labels, unclear)) for t, (m, c) in zip(turns, turn_scores)]
    kinds = sorted({t.kind for t in turns})
    balanced = np.mean([np.mean([r for r, t in zip(right, turns) if t.kind == k]) for k in kinds])
    return routing, {"balanced_accuracy": round(float(balanced), 4), "accuracy": round(float(np.mean(right)), 4),
                     "turns": len(turns)}


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
    fields = {k: round(v, 4) if isinstance(v, float) else v
              for k, v in routing.model_dump(exclude={"calibration", "route_model"}).items()}
    fields["route_model"] = "learned" if routing.route_model is not None else None
    return json.dumps(fields)
