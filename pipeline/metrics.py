"""Evaluation metrics, small enough to keep free of scikit-learn."""
from __future__ import annotations

import numpy as np


def accuracy(gold: np.ndarray, predicted: np.ndarray) -> float:
    return float((gold == predicted).mean()) if len(gold) else 0.0


def macro_f1(gold: np.ndarray, predicted: np.ndarray, n_labels: int) -> float:
    """Mean F1 over the labels that occur in gold or predictions."""
    scores = []
    for label in range(n_labels):
        tp = int(((predicted == label) & (gold == label)).sum())
        fp = int(((predicted == label) & (gold != label)).sum())
        fn = int(((predicted != label) & (gold == label)).sum())
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def classification_metrics(gold: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    predicted = logits.argmax(axis=1)
    return {"accuracy": accuracy(gold, predicted), "macro_f1": macro_f1(gold, predicted, logits.shape[1])}


def embedding_metrics(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Agreement of an embedder variant with the reference: cosine per text and nearest-neighbour agreement."""
    ref = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    cand = candidate / np.linalg.norm(candidate, axis=1, keepdims=True)
    cosine = (ref * cand).sum(axis=1)
    ref_sim, cand_sim = ref @ ref.T, cand @ cand.T
    np.fill_diagonal(ref_sim, -np.inf)
    np.fill_diagonal(cand_sim, -np.inf)
    nn_agreement = float((ref_sim.argmax(axis=1) == cand_sim.argmax(axis=1)).mean()) if len(ref) > 1 else 1.0
    return {"cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min()), "nn_agreement": nn_agreement}
