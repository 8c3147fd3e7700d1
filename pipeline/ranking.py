"""Training math for the recommender's combiner: logistic regression over standardized features, and AUC and NDCG
to judge it. Serving only reads the fitted `Ranker` (services/recommend/scoring.py); fitting and judging belong here."""
from __future__ import annotations

import math

import numpy as np

from nlpsuite.services.recommend.scoring import Ranker


def fit_logistic(x: np.ndarray, y: np.ndarray, features: list[str], l2: float = 1e-3, steps: int = 500) -> Ranker:
    """Standardize, then full-batch gradient descent (Newton would do; this is small and dependency-free)."""
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[std < 1e-9] = 1.0
    z = (x - mean) / std
    w = np.zeros(z.shape[1])
    b = 0.0
    lr = 0.5
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(z @ w + b)))
        grad_w = z.T @ (p - y) / len(y) + l2 * w
        grad_b = float(np.mean(p - y))
        w -= lr * grad_w
        b -= lr * grad_b
    return Ranker(features=features, mean=mean.tolist(), std=std.tolist(), weights=w.tolist(), bias=b)


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties count half."""
    if len(pos) == 0 or len(neg) == 0:
        return math.nan
    scores = np.concatenate([pos, neg])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def ndcg_at_k(scores: np.ndarray, gains: np.ndarray, k: int) -> float:
    """DCG of the top `k` by score over the best possible DCG (log2 discounts); nan when nothing has gain."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    top = np.argsort(-np.asarray(scores), kind="stable")[:k]
    ideal = np.sort(np.asarray(gains, np.float64))[::-1][:k]
    best = float((ideal * discounts[: len(ideal)]).sum())
    if best <= 0:
        return math.nan
    return float((np.asarray(gains, np.float64)[top] * discounts[: len(top)]).sum()) / best
