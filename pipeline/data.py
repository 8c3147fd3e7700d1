"""Labelled data for the pipeline: CSV or JSONL, configurable columns, validated, split, hashed."""
from __future__ import annotations

import csv
import hashlib
import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path


class DataError(ValueError):
    """Input data that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Dataset:
    texts: list[str]
    labels: list[str]
    source: str
    sha256: str

    def __len__(self) -> int:
        return len(self.texts)


def _read_rows(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a CSV or JSONL file")
    try:
        raw = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from exc
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        rows = []
        for number, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: each line must be a JSON object")
            rows.append(row)
        return rows
    try:
        return list(csv.DictReader(raw.splitlines(keepends=True)))
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from exc


def load_dataset(path: Path | str, text_col: str = "text", label_col: str = "label") -> Dataset:
    """Read (text, label) pairs; rows with an empty text or label are an error, not silently dropped."""
    path = Path(path)
    rows = _read_rows(path)
    if not rows:
        raise DataError(f"{path}: no rows")
    columns = set(rows[0])
    missing = [c for c in (text_col, label_col) if c not in columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))}; found {', '.join(sorted(map(repr, columns)))} "
            "(choose columns with --text-col/--label-col)"
        )
    texts, labels = [], []
    for number, row in enumerate(rows, start=2):
        text, label = row.get(text_col), row.get(label_col)
        if text is None or not str(text).strip():
            raise DataError(f"{path}: row {number}: empty {text_col!r}")
        if label is None or not str(label).strip():
            raise DataError(f"{path}: row {number}: empty {label_col!r}")
        texts.append(str(text))
        labels.append(str(label).strip())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Dataset(texts=texts, labels=labels, source=str(path), sha256=digest)


def label_set(train: Dataset, dev: Dataset | None = None) -> list[str]:
    labels = sorted(set(train.labels))
    if len(labels) < 2:
        raise DataError(f"{train.source}: needs at least 2 distinct labels, found {labels}")
    if dev is not None:
        unknown = sorted(set(dev.labels) - set(labels))
        if unknown:
            raise DataError(f"{dev.source}: labels not in the training data: {', '.join(unknown[:10])}")
    return labels


def stratified_split(data: Dataset, dev_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split per label so the dev set keeps the label mix; every label keeps at least one training row."""
    by_label: dict[str, list[int]] = defaultdict(list)
    for index, label in enumerate(data.labels):
        by_label[label].append(index)
    rng = random.Random(seed)
    train_idx, dev_idx = [], []
    for label in sorted(by_label):
        indices = by_label[label][:]
        rng.shuffle(indices)
        n_dev = min(len(indices) - 1, round(len(indices) * dev_fraction))
        dev_idx += indices[:n_dev]
        train_idx += indices[n_dev:]
    if not dev_idx:
        raise DataError(f"{data.source}: too few rows to hold out a dev set; pass --dev")

    def subset(indices: list[int], part: str) -> Dataset:
        indices = sorted(indices)
        return Dataset([data.texts[i] for i in indices], [data.labels[i] for i in indices],
                       f"{data.source}#{part}", data.sha256)

    return subset(train_idx, "train"), subset(dev_idx, "dev")


def label_counts(data: Dataset) -> dict[str, int]:
    return dict(sorted(Counter(data.labels).items()))
