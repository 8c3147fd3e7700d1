"""`nlpsuite evaluate`: score a published classifier variant on a labelled CSV/JSONL file."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from nlpsuite.pipeline.data import DataError, Dataset, load_dataset
from nlpsuite.pipeline.metrics import classification_metrics
from nlpsuite.shared.model import open_model
from nlpsuite.shared.model_repo import ModelVersion, version_at


def evaluate_classifier(model_dir: Path, data: Path, variant: str | None, text_col: str, label_col: str,
                        provider: str = "auto", batch_size: int = 32) -> tuple[dict, list[tuple[str, int, float]]]:
    dataset = load_dataset(data, text_col, label_col)
    return score_classifier(version_at(model_dir), dataset, variant, provider, batch_size)


def score_classifier(version: ModelVersion, dataset: Dataset, variant: str | None, provider: str = "auto",
                     batch_size: int = 32) -> tuple[dict, list[tuple[str, int, float]]]:
    """Accuracy, macro-F1 and per-label recall of one variant of a published classifier on a labelled dataset."""
    if version.manifest.task != "classify":
        raise DataError(f"{version.path} is a {version.manifest.task!r} model; evaluate --data scores classifiers")
    model = open_model(version, provider=provider, variant=variant)
    manifest = model.manifest
    labels = manifest.labels
    unknown = sorted(set(dataset.labels) - set(labels))
    if unknown:
        raise DataError(f"{dataset.source}: labels the model does not know: {', '.join(unknown[:10])} "
                        f"(model has {len(labels)})")
    order = sorted(range(len(dataset)), key=lambda i: len(dataset.texts[i]))
    logits = np.zeros((len(dataset), len(labels)), np.float32)
    started = time.perf_counter()
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        logits[chunk] = model.predict([dataset.texts[i] for i in chunk])
    elapsed = time.perf_counter() - started
    gold = np.array([labels.index(label) for label in dataset.labels])
    metrics = classification_metrics(gold, logits)
    predicted = logits.argmax(1)
    per_label = [(label, int((gold == i).sum()), float((predicted[gold == i] == i).mean()) if (gold == i).any() else 0.0)
                 for i, label in enumerate(labels)]
    summary = {
        "accuracy": round(metrics["accuracy"], 6),
        "macro_f1": round(metrics["macro_f1"], 6),
        "n": len(dataset),
        "variant": model.variant,
        "provider": model.provider,
        "model": manifest.name,
        "version": manifest.version,
        "ms_per_example": round(elapsed * 1000 / max(len(dataset), 1), 4),
    }
    return summary, per_label


def print_report(summary: dict, per_label: list[tuple[str, int, float]]) -> None:
    print(f"model {summary['model']} v{summary['version']}  variant {summary['variant']}  on {summary['provider']}")
    print(f"{'label':<40} {'n':>6} {'recall':>8}")
    for label, n, recall in per_label:
        if n:
            print(f"{label[:40]:<40} {n:>6} {recall:>8.3f}")
    print(f"accuracy {summary['accuracy']:.4f}  macro-F1 {summary['macro_f1']:.4f}  n {summary['n']}  "
          f"{summary['ms_per_example']:.3f} ms/example")
    print(json.dumps(summary))
