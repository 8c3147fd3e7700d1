"""`nlpsuite build --task recommend` and `nlpsuite evaluate --task recommend` on MovieLens-layout data.

A data dir holds movies.csv (movieId,title,genres), ratings_<split>.csv (userId,movieId,rating,timestamp,
label,role with role history|target and label positive|neutral|negative) and tags_<split>.csv
(userId,movieId,tag,timestamp). Item text is title, genres and tags. Each user's history becomes an interest
vector; their positive and negative targets are the examples the combiner learns from.

Without `embedder_dir` (`nlpsuite build --task recommend --fine-tune`) the build first fine-tunes a text encoder
on the train split's behaviour (pipeline/behaviour.py) and publishes it as `<name>-encoder` (int8 and all, gated on
held-out users); the fifth of the train users who rated last are held out of that fine-tuning, and the combiner is
fitted on them, so its weight on the text features is learnt from users the encoder never saw.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import re
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nlpsuite.pipeline.behaviour import BehaviourHyperparameters, Interactions, RatedItem, fine_tune_on_behaviour
from nlpsuite.pipeline.data import DataError
from nlpsuite.pipeline.metrics import embedding_metrics
from nlpsuite.pipeline.ranking import auc, fit_logistic, ndcg_at_k
from nlpsuite.services.recommend.scoring import TEXT_FEATURES, Ranker, user_vectors
from nlpsuite.shared.model import LoadedModel, open_model_dir
from nlpsuite.shared.model_repo import Manifest, ModelRepository, ModelVersion, read_manifest, write_manifest

log = logging.getLogger(__name__)

ITEM_STATS_FILE = "item_stats.json"
PRIOR_MEAN, PRIOR_WEIGHT = 3.5, 5.0
REFERENCE_YEAR = 2018
_YEAR = re.compile(r"\((\d{4})\)\s*$")
RANKER_USERS = 0.2  # share of the train users held out of encoder fine-tuning; the combiner is fitted on them
NDCG_AT = 10
TEXT_ONLY = Ranker(features=["text_match"], mean=[0.0], std=[1.0], weights=[1.0])


@dataclass
class Rating:
    item: str
    rating: float
    label: str
    role: str
    time: int = 0


@dataclass
class MovieLens:
    titles: dict[str, str]
    texts: dict[str, str]
    years: dict[str, int]
    users: dict[str, list[Rating]] = field(default_factory=dict)
    unknown_items: int = 0  # ratings naming a movie that movies.csv lacks (skipped)


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
        genres = [g for g in row["genres"].split("|") if g.strip() and g != "(no genres listed)"]
        # An item without title, genres or tags has no text: it ranks by its other features alone.
        text = ". ".join(part for part in (title, ", ".join(genres), ", ".join(tags.get(mid, [])[:10])) if part)
        titles[mid], texts[mid] = title, text
        match = _YEAR.search(title)
        if match:
            years[mid] = int(match.group(1))
    data = MovieLens(titles, texts, years)
    unknown: list[str] = []
    for row in ratings:
        if row["movieId"] not in texts:
            unknown.append(row["movieId"])
            continue
        data.users.setdefault(row["userId"], []).append(
            Rating(row["movieId"], float(row["rating"]), row["label"], row["role"], int(row.get("timestamp") or 0)))
    path = data_dir / f"ratings_{split}.csv"
    if unknown:
        data.unknown_items = len(unknown)
        log.warning("%s: %d ratings name movies that %s lacks (e.g. %s); they are skipped", path, len(unknown),
                    data_dir / "movies.csv", ", ".join(sorted(set(unknown))[:5]))
    if not data.users:
        raise DataError(f"{path} has no ratings of movies in {data_dir / 'movies.csv'}")
    return data


def embed_items(model: LoadedModel, texts: dict[str, str], batch_size: int = 64) -> dict[str, np.ndarray]:
    """Unit vectors of the items that have text (the others get none)."""
    ids = sorted((i for i in texts if texts[i].strip()), key=lambda i: len(texts[i]))
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


NUMERIC_FEATURES = ("popularity", "mean_rating", "age")


def user_examples(data: MovieLens, vectors: dict[str, np.ndarray], ranker: Ranker, stats: ItemStats, user: str,
                  leave_out: bool, keep: Callable[[str], bool] | None = None, neutral: bool = False
                  ) -> tuple[np.ndarray, np.ndarray] | None:
    """Feature rows and 1/0 labels (1: positive) for one user's positive and negative targets (and neutral ones,
    labelled 0, with `neutral`), only those whose item `keep` accepts; None without history or targets. Items
    without text have no vector: their text features are missing (the ranker counts them as their mean)."""
    rows = data.users[user]
    history = [r for r in rows if r.role == "history" and r.item in vectors]
    labels = ("positive", "negative", "neutral") if neutral else ("positive", "negative")
    targets = [r for r in rows if r.role == "target" and r.label in labels and (keep is None or keep(r.item))]
    if not history or not targets:
        return None
    if leave_out:
        for r in rows:
            stats.add(r.item, r.rating, -1)
    try:
        interest, liked = user_vectors(np.stack([vectors[r.item] for r in history]), [r.rating for r in history],
                                       None)
        missing = np.full(len(interest), np.nan, np.float32)
        cand = np.stack([vectors.get(r.item, missing) for r in targets])
        numeric = [stats.features(r.item, data.years.get(r.item)) for r in targets]
    finally:
        if leave_out:
            for r in rows:
                stats.add(r.item, r.rating, +1)
    x = ranker.matrix(cand @ interest, cand @ liked, numeric)
    y = np.array([1.0 if r.label == "positive" else 0.0 for r in targets])
    return x, y


def mean_user_auc(data: MovieLens, vectors, ranker: Ranker, stats: ItemStats, leave_out: bool,
                  users: Iterable[str] | None = None, keep: Callable[[str], bool] | None = None
                  ) -> tuple[float, int]:
    """Mean over users of P(a positive target outscores a negative one); users with one class only are skipped."""
    aucs = []
    for user in sorted(data.users if users is None else users):
        ex = user_examples(data, vectors, ranker, stats, user, leave_out, keep)
        if ex is None:
            continue
        x, y = ex
        if y.min() == y.max():
            continue
        s = ranker.score(x)
        aucs.append(auc(s[y == 1], s[y == 0]))
    return (float(np.mean(aucs)) if aucs else math.nan), len(aucs)


def mean_ndcg(data: MovieLens, vectors, ranker: Ranker, stats: ItemStats, k: int = NDCG_AT) -> tuple[float, int]:
    """Mean over users with a positive target of NDCG@k over all their targets (gain 1 for positive)."""
    values = []
    for user in sorted(data.users):
        ex = user_examples(data, vectors, ranker, stats, user, leave_out=False, neutral=True)
        if ex is None or ex[1].max() == 0:
            continue
        values.append(ndcg_at_k(ranker.score(ex[0]), ex[1], k))
    return (float(np.mean(values)) if values else math.nan), len(values)


def fit_ranker(data: MovieLens, vectors: dict[str, np.ndarray], stats: ItemStats, users: Iterable[str],
               features: list[str]) -> Ranker:
    """The logistic combiner over `features`, from `users`' targets (each user's own ratings left out of the item
    statistics, as they would be unknown when serving them)."""
    probe = Ranker(features=features, mean=[0.0] * len(features), std=[1.0] * len(features),
                   weights=[0.0] * len(features))
    xs, ys = [], []
    for user in sorted(users):
        ex = user_examples(data, vectors, probe, stats, user, leave_out=True)
        if ex is not None:
            xs.append(ex[0])
            ys.append(ex[1])
    if not xs:
        raise DataError("no user has both history and positive/negative targets")
    x = np.concatenate(xs)
    for j, name in enumerate(features):  # items without text: fitted as if at the feature's mean
        if name in TEXT_FEATURES:
            column = x[:, j]
            column[np.isnan(column)] = np.nanmean(column) if np.isfinite(column).any() else 0.0
    return fit_logistic(x, np.concatenate(ys), features)


def report(data: MovieLens, vectors: dict[str, np.ndarray], ranker: Ranker, without_text: Ranker | None,
           stats: ItemStats, known_items: set[str]) -> dict[str, float]:
    """The figures of one split: mean per-user AUC and NDCG@10 of the ranker; the same ranker refitted without the
    text features (what the text adds); text alone on every target, and on cold-start targets (items nobody
    rated in the train split, where text is all there is)."""
    value, users = mean_user_auc(data, vectors, ranker, stats, leave_out=False)
    ndcg, ndcg_users = mean_ndcg(data, vectors, ranker, stats)
    text_only, _ = mean_user_auc(data, vectors, TEXT_ONLY, stats, leave_out=False)
    cold, cold_users = mean_user_auc(data, vectors, TEXT_ONLY, stats, leave_out=False,
                                     keep=lambda item: item not in known_items)
    out = {"mean_user_auc": value, "users": users, f"ndcg@{NDCG_AT}": ndcg, "ndcg_users": ndcg_users,
           "text_only_mean_user_auc": text_only, "cold_start_text_only_mean_user_auc": cold,
           "cold_start_users": cold_users,
           "cold_start_targets": sum(1 for rows in data.users.values() for r in rows
                                     if r.role == "target" and r.item not in known_items),
           "one_class_users": sum(1 for rows in data.users.values()
                                  if len({r.label for r in rows if r.role == "target"} & {"positive", "negative"}) == 1)}
    if out["one_class_users"]:
        log.info("%d users have only liked or only disliked targets: they count in no AUC", out["one_class_users"])
    if without_text is not None:
        out["without_text_mean_user_auc"], _ = mean_user_auc(data, vectors, without_text, stats, leave_out=False)
        out["text_gain_points"] = (value - out["without_text_mean_user_auc"]) * 100
    # A figure with no users behind it (e.g. no cold-start targets) is left out rather than reported as nan.
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()
            if not (isinstance(v, float) and math.isnan(v))}


def split_users(data: MovieLens, share: float) -> tuple[list[str], list[str]]:
    """(users the encoder learns from, users the combiner is fitted and the encoder judged on): the `share` who
    rated last are held out, as the users it will serve come after the ones it learnt from (MovieLens's dev users
    rated years after the train users: a taste learnt from one era can mislead in the next, and only later users
    show it)."""
    users = sorted(data.users, key=lambda u: (max(r.time for r in data.users[u]), u))
    held = max(1, round(len(users) * share))
    return sorted(users[:-held]), sorted(users[-held:])


def interactions(data: MovieLens, users: Iterable[str]) -> Interactions:
    liked = {"positive": True, "negative": False}
    return Interactions(texts=data.texts, users={
        u: [RatedItem(r.item, r.rating, liked.get(r.label), target=r.role == "target") for r in data.users[u]
            if data.texts[r.item].strip()]
        for u in users})


@dataclass
class HeldOutGate:
    """The encoder's gate: text alone (the interest vector's cosine) ranking held-out users' positive targets
    above their negative ones, as mean per-user AUC; every variant is run on those users' items."""

    data: MovieLens
    users: list[str]
    stats: ItemStats
    gated: tuple[str, ...] = ("score",)
    texts: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.items = sorted({r.item for u in self.users for r in self.data.users[u]
                             if self.data.texts[r.item].strip()})
        self.texts = [self.data.texts[i] for i in self.items]

    def auc(self, outputs: np.ndarray) -> tuple[float, int]:
        """Mean per-user AUC of text alone with `outputs` as the items' vectors, and the users it averages."""
        return mean_user_auc(self.data, dict(zip(self.items, outputs)), TEXT_ONLY, self.stats, leave_out=True,
                             users=self.users)

    def metrics(self, outputs: np.ndarray, reference: np.ndarray) -> dict[str, float]:
        metrics = embedding_metrics(reference, outputs)
        metrics["score"], metrics["users"] = self.auc(outputs)
        return metrics


def train_encoder(data: MovieLens, encoder_users: list[str], ranker_users: list[str], stats: ItemStats,
                  repository: Path, name: str, base: Path | None, hp: BehaviourHyperparameters,
                  source: dict, max_drop_points: float = 1.0) -> ModelVersion:
    """Fine-tune on `encoder_users`' behaviour, keep the state that ranks `ranker_users`' targets best, publish."""
    from nlpsuite.pipeline.build import default_base_checkpoint
    from nlpsuite.pipeline.package import Packaging, package
    from nlpsuite.pipeline.train import check_checkpoint, predict_torch, quiet_libraries, resolve_checkpoint

    started = time.monotonic()
    quiet_libraries()
    base = resolve_checkpoint(base) if base is not None else default_base_checkpoint()
    base_config = check_checkpoint(base)
    gate = HeldOutGate(data, ranker_users, stats)

    def held_out(model, tokenizer) -> float:
        return gate.auc(predict_torch(model, tokenizer, gate.texts, "embed", hp.max_length))[0]

    result = fine_tune_on_behaviour(base, interactions(data, encoder_users), encoder_users, hp, held_out,
                                    report=print)
    spec = Packaging(name=name, task="embed", base=base, base_config=base_config, repository=repository,
                     max_length=hp.max_length, max_drop_points=max_drop_points)
    calibration = [data.texts[r.item] for u in encoder_users for r in data.users[u] if data.texts[r.item].strip()]
    return package(result.model, result.tokenizer, spec, gate, calibration,
                   dataset={**source, "encoder_users": len(encoder_users), "held_out_users": len(ranker_users)},
                   hyperparameters=hp.as_dict(), layers_kept=hp.keep_layers,
                   extra={"objective": "behaviour", "training": {"steps": result.steps,
                                                                 "seconds": round(result.seconds, 1),
                                                                 "history": result.history}},
                   started=started)


def build_recommender(data_dir: Path, embedder_dir: Path | None, repository: Path, name: str = "recommender",
                      split: str = "train", dev_split: str | None = "dev", base: Path | None = None,
                      behaviour: BehaviourHyperparameters | None = None) -> ModelVersion:
    """The combiner over an embedder's text features and the items' statistics. With `embedder_dir` None, the
    encoder is first fine-tuned on the behaviour in the train split (from `base`, or all-MiniLM-L6-v2) and
    published as `<name>-encoder`."""
    data = load_movielens(data_dir, split)
    stats = ItemStats()
    for rows in data.users.values():
        for r in rows:
            stats.add(r.item, r.rating)
    source = {"data_dir": str(data_dir), "split": split, "users": len(data.users)}
    ranker_users = sorted(data.users)
    encoder_report: dict = {}
    if embedder_dir is None:
        hp = behaviour or BehaviourHyperparameters()
        encoder_users, ranker_users = split_users(data, RANKER_USERS)
        encoder = train_encoder(data, encoder_users, ranker_users, stats, repository, f"{name}-encoder", base, hp,
                                source)
        embedder_dir = encoder.path
        encoder_report = {"encoder_users": len(encoder_users), "ranker_users": len(ranker_users)}
    embedder = open_model_dir(embedder_dir)
    if embedder.manifest.task != "embed":
        raise DataError(f"{embedder_dir} is a {embedder.manifest.task!r} model; the recommender needs an embedder")
    log.info("embedding items", extra={"items": len(data.texts)})
    vectors = embed_items(embedder, data.texts)
    features = [*TEXT_FEATURES, *NUMERIC_FEATURES]
    ranker = fit_ranker(data, vectors, stats, ranker_users, features)
    without_text = fit_ranker(data, vectors, stats, ranker_users, list(NUMERIC_FEATURES))
    ranker.embedder = {"name": embedder.manifest.name, "version": embedder.manifest.version}
    train_auc, train_users = mean_user_auc(data, vectors, ranker, stats, leave_out=True, users=ranker_users)
    ranker.metrics = {"train_mean_user_auc": round(train_auc, 4), "train_users": train_users, **encoder_report}
    if dev_split and (data_dir / f"ratings_{dev_split}.csv").is_file():
        dev = load_movielens(data_dir, dev_split)
        dev_vectors = {**vectors, **embed_items(embedder, {i: t for i, t in dev.texts.items()
                                                           if t != data.texts.get(i)})}
        dev_report = report(dev, dev_vectors, ranker, without_text, _eval_stats(stats, dev), known_items(stats))
        ranker.metrics.update({f"dev_{k}": v for k, v in dev_report.items()})
    log.info("recommender trained", extra=ranker.metrics)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        ranker.save(staged)
        (staged / ITEM_STATS_FILE).write_text(json.dumps(stats.to_json()))
        digest = hashlib.sha256((embedder.version.path / "manifest.json").read_bytes()).hexdigest()
        manifest = Manifest(
            name=name, task="recommend", base_checkpoint=f"{embedder.manifest.name}/{embedder.manifest.version}",
            base_checkpoint_sha256=digest, embedding_dim=embedder.manifest.embedding_dim,
            dataset={**source, "unknown_item_ratings": data.unknown_items},
            hyperparameters={"features": features, "l2": 1e-3},
            reference_metrics=ranker.metrics,
            extra={"ranker": "ranker.json", "item_stats": ITEM_STATS_FILE,
                   "without_text": without_text.model_dump(exclude={"embedder", "metrics"})},
        )
        write_manifest(staged, manifest)
        return ModelRepository(repository).publish(staged, name)


def known_items(stats: ItemStats) -> set[str]:
    """Items with ratings in the build's split (the rest are cold-start items)."""
    return {item for item, n in stats.count.items() if n > 0}


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
    raw = read_manifest(model_dir).extra.get("without_text")
    without_text = Ranker.model_validate(raw) if isinstance(raw, dict) else None
    stats = ItemStats.from_json(json.loads((model_dir / ITEM_STATS_FILE).read_text()))
    if embedder_dir is None:  # the embedder it was trained with, from the same repository
        embedder_dir = model_dir.parent.parent / ranker.embedder["name"] / ranker.embedder["version"]
    embedder = open_model_dir(embedder_dir)
    data = load_movielens(data_dir, split)
    needed = {r.item for rows in data.users.values() for r in rows}
    vectors = embed_items(embedder, {i: data.texts[i] for i in needed})
    figures = report(data, vectors, ranker, without_text, _eval_stats(stats, data), known_items(stats))
    return {**figures, "n_users": figures["users"], "split": split,
            "model": f"{model_dir.parent.name}/{model_dir.name}", "embedder": f"{embedder.manifest.name}/"
            f"{embedder.manifest.version}", "variant": embedder.variant}
