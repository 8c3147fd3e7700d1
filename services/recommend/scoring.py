"""Recommendation scoring, pure numpy: the user's interest vector, features, and the learned combiner.

The user vector is a rating-weighted sum of the embeddings of the user's history items (weights are the
rating minus the user's mean rating, so disliked items pull away; unrated history counts as +1), plus the
profile text's embedding. A candidate's features are its text match (cosine between the user vector and the
item) and the mean-liked match, plus the request's numeric features; the combiner is a logistic-regression
weight vector over standardized features, learned by `nlpsuite build --task recommend` (pipeline/ranking.py).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

RANKER_FILE = "ranker.json"
TEXT_FEATURES = ("text_match", "liked_match")
Z_LIMIT = 1e6  # standard deviations; see Ranker.score


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 1e-12 else v


def rating_weights(ratings: Sequence[float | None]) -> np.ndarray:
    """Each history item's weight in the user's vector: its rating minus the user's mean rating (unrated: +1), all
    ones when every weight would be 0, scaled to at most 1 in size."""
    rated = [r for r in ratings if r is not None]
    center = float(np.mean(rated)) if rated else 0.0
    weights = np.array([1.0 if r is None else r - center for r in ratings], np.float64)
    if not np.any(weights):  # every rating equal: treat as plain interest
        weights = np.ones(len(ratings), np.float64)
    # Only the direction matters (the vectors are normalized): scale the weights to at most 1 so that
    # absurd ratings (e.g. +-3e38) cannot overflow to inf/NaN.
    return (weights / np.abs(weights).max()).astype(np.float32)


def user_vectors(history: np.ndarray, ratings: Sequence[float | None], profile: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(interest vector, liked vector), each unit length or zero. `history` is [n, dim] unit embeddings."""
    dim = history.shape[1] if history.size else (profile.shape[0] if profile is not None else 0)
    interest = np.zeros(dim, np.float32)
    liked = np.zeros(dim, np.float32)
    if len(history):
        weights = rating_weights(ratings)
        interest = _unit(weights @ history)
        positive = weights > 0
        if positive.any():
            liked = _unit(weights[positive] @ history[positive])
    if profile is not None:
        interest = _unit(interest + profile)
        liked = _unit(liked + profile)
    return interest, liked


class Ranker(BaseModel):
    """Logistic combiner over standardized features; missing numeric features count as their mean."""

    features: list[str] = Field(default_factory=lambda: list(TEXT_FEATURES))
    mean: list[float] = Field(default_factory=lambda: [0.0, 0.0])
    std: list[float] = Field(default_factory=lambda: [1.0, 1.0])
    weights: list[float] = Field(default_factory=lambda: [1.0, 0.0])
    bias: float = 0.0
    embedder: dict[str, str] = Field(default_factory=dict)  # name and version it was trained with
    metrics: dict[str, float] = Field(default_factory=dict)

    @property
    def numeric(self) -> list[str]:
        return [f for f in self.features if f not in TEXT_FEATURES]

    def matrix(self, text_match: np.ndarray, liked_match: np.ndarray,
               numeric: Sequence[Mapping[str, float]]) -> np.ndarray:
        columns = []
        for j, name in enumerate(self.features):
            if name == "text_match":
                columns.append(np.asarray(text_match, np.float64))
            elif name == "liked_match":
                columns.append(np.asarray(liked_match, np.float64))
            else:
                columns.append(np.array([float(f.get(name, self.mean[j])) for f in numeric], np.float64))
        return np.stack(columns, axis=1) if columns else np.zeros((len(text_match), 0))

    def score(self, x: np.ndarray) -> np.ndarray:
        # Standardized features are clipped to +-Z_LIMIT: absurd inputs (1e308) rank at the extremes instead
        # of overflowing to inf and NaN.
        with np.errstate(over="ignore", invalid="ignore"):
            z = (x - np.array(self.mean)) / np.array(self.std)
        z = np.clip(np.nan_to_num(z, nan=0.0, posinf=Z_LIMIT, neginf=-Z_LIMIT), -Z_LIMIT, Z_LIMIT)
        return z @ np.array(self.weights) + self.bias

    def save(self, directory: Path) -> None:
        (directory / RANKER_FILE).write_text(self.model_dump_json(indent=2))

    @classmethod
    def load(cls, directory: Path) -> Ranker:
        return cls.model_validate(json.loads((directory / RANKER_FILE).read_text()))
