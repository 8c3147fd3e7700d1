"""`nlpsuite build --task recommend` and `nlpsuite evaluate --task recommend` on MovieLens-layout data.

A data dir holds movies.csv (movieId,title,genres), ratings_<split>.csv (userId,movieId,rating,timestamp,
label,role with role history|target and label positive|neutral|negative) and tags_<split>.csv
(userId,movieId,tag,timestamp). Item text is title, genres and tags. Each user's history becomes an interest
vector; their positive and negative targets are the examples the combiner learns from.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import re
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nlpsuite.pipeline.data import DataError
from nlpsuite.pipeline.ranking import auc, fit_logistic
from nlpsuite.services.recommend.scoring import Ranker, user_vectors
from nlpsuite.shared.model import LoadedModel, open_model_dir
from nlpsuite.shared.model_repo import Manifest, ModelRepository, ModelVersion, write_manifest

log = logging.getLogger(__name__)

ITEM_STATS_FILE = "item_stats.json"
PRIOR_MEAN, PRIOR_WEIGHT = 3.5, 5.0
REFERENCE_YEAR = 2018
_YEAR = re.compile(r"\((\d{4})\)\s*$")


@dataclass
class Rating:
    item: str
    rating: float
    label: str
    role: str


@dataclass
class MovieLens:
    titles: dict[str, str]
    texts: dict[str, str]
    years: dict[str, int]
    users: dict[str, list[Rating]] = field(default_factory=dict)


def _read(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"{path} not found")
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def load_movielens(data_dir: Path, split: str) -> MovieLens:
    movies = _read(data_dir / "movies.csv")
    ratings = _read(data_dir / f"ratings_{split}.csv")
    tags_path = data_dir / f"tags_{split}.csv"
    tags: dict[str, list[str]] = defaultdict(list)
    if tags_path.is_file():
        for row in _read(tags_path):
            tag = row["tag"].strip()
            if tag and tag.lower() not in (t.lower() for t in tags[row["movieId"]]):
                tags[row["movieId"]].append(tag)
    titles, texts, years = {}, {}, {}
    for row in movies:
        mid, title = row["movieId"], row["title"].strip()
        genres = [] if row["genres"] == "(no genres listed)" else row["genres"].split("|")
        text = f"{title}. {', '.join(genres)}"
        if tags.get(mid):
            text += f". {', '.join(tags[mid][:10])}"
        titles[mid], texts[mid] = title, text
        match = _YEAR.search(title)
        if match:
            years[mid] = int(match.group(1))
    data = MovieLens(titles, texts, years)
    for row in ratings:
        if row["movieId"] not in texts:
            continue
        data.users.setdefault(row["userId"], []).append(
            Rating(row["movieId"], float(row["rating"]), row["label"], row["role"]))
    if not data.users:
        raise DataError(f"{data_dir / f'ratings_{split}.csv'} has no ratings")
    return data


def embed_items(model: LoadedModel, texts: dict[str, str], batch_size: int = 64) -> dict[str, np.ndarray]:
    ids = sorted(texts, key=lambda i: len(texts[i]))
    out: dict[str, np.ndarray] = {}
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        vectors = model.predict([texts[i] for i in chunk])
        out.update(zip(chunk, vectors))
    return out


class ItemStats:
    """Rating count and sum per item, with leave-one-user-out views for training."""

    def __init__(self) -> None:
        self.count: dict[str, int] = defaultdict(int)
        self.total: dict[str, float] = defaultdict(float)

    def add(self, item: str, rating: float, sign: int = 1) -> None:
        self.count[item] += sign
        self.total[item] += sign * rating

    def features(self, item: str, year: int | None) -> dict[str, float]:
        n, s = self.count.get(item, 0), self.total.get(item, 0.0)
        feats = {"popularity": math.log1p(max(n, 0)),
                 "mean_rating": (s + PRIOR_MEAN * PRIOR_WEIGHT) / (max(n, 0) + PRIOR_WEIGHT)}
        if year is not None:
            feats["age"] = float(max(0, REFERENCE_YEAR - year))
        return feats

    def to_json(self) -> dict:
        return {item: [self.count[item], round(self.total[item], 2)] for item in self.count if self.count[item]}

    @classmethod
    def from_json(cls, raw: dict) -> ItemStats:
        stats = cls()
        for item, (n, s) in raw.items():
            stats.count[item], stats.total[item] = int(n), float(s)
        return stats


NUMERIC_FEATURES = ["popularity", "mean_rating", "age"]


def user_examples(data: MovieLens, vectors: dict[str, np.ndarray], ranker: Ranker, stats: ItemStats, user: str,
                  leave_out: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """Feature rows and 1/0 labels for one user's positive/negative targets (None without history)."""
    rows = data.users[user]
    history = [r for r in rows if r.role == "history"]
    targets = [r for r in rows if r.role == "target" and r.label in ("positive", "negative")]
    if not history or not targets:
        return None
    if leave_out:
        for r in rows:
            stats.add(r.item, r.rating, -1)
    try:
        interest, liked = user_vectors(np.stack([vectors[r.item] for r in history]), [r.rating for r in history],
                                       None)
        cand = np.stack([vectors[r.item] for r in targets])
        numeric = [stats.features(r.item, data.years.get(r.item)) for r in targets]
    finally:
        if leave_out:
            for r in rows:
                stats.add(r.item, r.rating, +1)
    x = ranker.matrix(cand @ interest, cand @ liked, numeric)
    y = np.array([1.0 if r.label == "positive" else 0.0 for r in targets])
    return x, y


def mean_user_auc(data: MovieLens, vectors, ranker: Ranker, stats: ItemStats, leave_out: bool) -> tuple[float, int]:
    aucs = []
    for user in sorted(data.users):
        ex = user_examples(data, vectors, ranker, stats, user, leave_out)
        if ex is None:
            continue
        x, y = ex
        if y.min() == y.max():
            continue
        s = ranker.score(x)
        aucs.append(auc(s[y == 1], s[y == 0]))
    return (float(np.mean(aucs)) if aucs else math.nan), len(aucs)


def build_recommender(data_dir: Path, embedder_dir: Path, repository: Path, name: str = "recommender",
                      split: str = "train", dev_split: str | None = "dev") -> ModelVersion:
    embedder = open_model_dir(embedder_dir)
    if embedder.manifest.task != "embed":
        raise DataError(f"{embedder_dir} is a {embedder.manifest.task!r} model; the recommender needs an embedder")
    data = load_movielens(data_dir, split)
    log.info("embedding items", extra={"items": len(data.texts)})
    vectors = embed_items(embedder, data.texts)
    stats = ItemStats()
    for rows in data.users.values():
        for r in rows:
            stats.add(r.item, r.rating)
    features = ["text_match", "liked_match", *NUMERIC_FEATURES]
    probe = Ranker(features=features, mean=[0.0] * len(features), std=[1.0] * len(features),
                   weights=[0.0] * len(features))
    xs, ys = [], []
    for user in sorted(data.users):
        ex = user_examples(data, vectors, probe, stats, user, leave_out=True)
        if ex is not None:
            xs.append(ex[0])
            ys.append(ex[1])
    if not xs:
        raise DataError(f"{data_dir}: no user has both history and positive/negative targets")
    ranker = fit_logistic(np.concatenate(xs), np.concatenate(ys), features)
    ranker.embedder = {"name": embedder.manifest.name, "version": embedder.manifest.version}
    train_auc, train_users = mean_user_auc(data, vectors, ranker, stats, leave_out=True)
    ranker.metrics = {"train_mean_user_auc": round(train_auc, 4), "train_users": train_users}
    if dev_split and (data_dir / f"ratings_{dev_split}.csv").is_file():
        dev = load_movielens(data_dir, dev_split)
        dev_vectors = embed_items(embedder, {i: t for i, t in dev.texts.items() if t != data.texts.get(i)})
        dev_vectors = {**vectors, **dev_vectors}
        dev_stats = _eval_stats(stats, dev)
        dev_auc, dev_users = mean_user_auc(dev, dev_vectors, ranker, dev_stats, leave_out=False)
        ranker.metrics.update({"dev_mean_user_auc": round(dev_auc, 4), "dev_users": dev_users})
    log.info("recommender trained", extra=ranker.metrics)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        ranker.save(staged)
        (staged / ITEM_STATS_FILE).write_text(json.dumps(stats.to_json()))
        digest = hashlib.sha256((embedder.version.path / "manifest.json").read_bytes()).hexdigest()
        manifest = Manifest(
            name=name, task="recommend", base_checkpoint=f"{embedder.manifest.name}/{embedder.manifest.version}",
            base_checkpoint_sha256=digest, embedding_dim=embedder.manifest.embedding_dim,
            dataset={"data_dir": str(data_dir), "split": split, "users": len(data.users)},
            hyperparameters={"features": features, "l2": 1e-3},
            reference_metrics=ranker.metrics, extra={"ranker": "ranker.json", "item_stats": ITEM_STATS_FILE},
        )
        write_manifest(staged, manifest)
        return ModelRepository(repository).publish(staged, name)


def _eval_stats(train_stats: ItemStats, data: MovieLens) -> ItemStats:
    """The build's item statistics plus the evaluated split's history ratings (targets stay unseen)."""
    stats = ItemStats.from_json(train_stats.to_json())
    for rows in data.users.values():
        for r in rows:
            if r.role == "history":
                stats.add(r.item, r.rating)
    return stats


def evaluate_recommender(model_dir: Path, data_dir: Path, split: str, embedder_dir: Path | None = None) -> dict:
    model_dir = Path(model_dir)
    if not (model_dir / "manifest.json").is_file():
        model_dir = ModelRepository(model_dir.parent).resolve(model_dir.name).path
    ranker = Ranker.load(model_dir)
    stats = ItemStats.from_json(json.loads((model_dir / ITEM_STATS_FILE).read_text()))
    if embedder_dir is None:  # the embedder it was trained with, from the same repository
        embedder_dir = model_dir.parent.parent / ranker.embedder["name"] / ranker.embedder["version"]
    embedder = open_model_dir(embedder_dir)
    data = load_movielens(data_dir, split)
    needed = {r.item for rows in data.users.values() for r in rows}
    vectors = embed_items(embedder, {i: data.texts[i] for i in needed})
    value, users = mean_user_auc(data, vectors, ranker, _eval_stats(stats, data), leave_out=False)
    return {"mean_user_auc": round(value, 4), "n_users": users, "split": split,
            "model": f"{model_dir.parent.name}/{model_dir.name}", "embedder": f"{embedder.manifest.name}/"
            f"{embedder.manifest.version}", "variant": embedder.variant}
