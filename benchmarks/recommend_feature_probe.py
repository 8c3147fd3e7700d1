"""Probe for issue 19: which user-interest features lift mean per-user AUC beside the ranker's current ones.

Items are embedded once with all-MiniLM-L6-v2 as it is (mean-pooled, unit length; cached in --cache), then the
same logistic combiner as `nlpsuite build --task recommend` (pipeline/ranking.py) is fitted over each feature set
and scored twice: fitted on the train users who rated first and judged on the fifth who rated last (as
`split_users` holds them out), and fitted on all train users and judged on the dev split. Nothing is published.

    python benchmarks/recommend_feature_probe.py --data-dir ../shared/data/movielens_latest_small

Candidate features (per target item, from the user's rated history; w = rating_weights, the serving rule):
- attention: sum_i softmax(cos(item, h_i) / tau) * w_i, the ratings of the history items most like it;
- word_match: the mean over the item's words of the user's smoothed mean w over history items with that word
  (sum w / (count + smoothing)), a per-user lexical profile of titles, genres and tags.
"""
from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from nlpsuite.pipeline.ranking import auc, fit_logistic
from nlpsuite.pipeline.recommend import NUMERIC_FEATURES, ItemStats, MovieLens, load_movielens, split_users
from nlpsuite.pipeline.train import predict_torch, quiet_libraries
from nlpsuite.services.recommend.scoring import rating_weights, user_vectors

_WORD = re.compile(r"[a-z0-9]+")


def base_vectors(texts: dict[str, str], cache: Path) -> dict[str, np.ndarray]:
    if cache.is_file():
        saved = np.load(cache)
        return dict(zip(saved["ids"].tolist(), saved["vectors"]))
    from transformers import AutoModel, AutoTokenizer

    from nlpsuite.pipeline.build import default_base_checkpoint

    base = str(default_base_checkpoint())
    tokenizer = AutoTokenizer.from_pretrained(base, use_fast=True, local_files_only=True)
    model = AutoModel.from_pretrained(base, local_files_only=True)
    ids = sorted(i for i, t in texts.items() if t.strip())
    vectors = predict_torch(model, tokenizer, [texts[i] for i in ids], "embed", max_length=64)
    np.savez(cache, ids=np.array(ids), vectors=vectors)
    return dict(zip(ids, vectors))


def user_features(data: MovieLens, user: str, vectors, words: dict[str, set[str]], stats: ItemStats,
                  leave_out: bool, tau: float, smoothing: float) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
    rows = data.users[user]
    history = [r for r in rows if r.role == "history" and r.item in vectors]
    targets = [r for r in rows if r.role == "target" and r.label in ("positive", "negative") and r.item in vectors]
    if not history or not targets:
        return None
    h = np.stack([vectors[r.item] for r in history])
    w = rating_weights([r.rating for r in history])
    c = np.stack([vectors[r.item] for r in targets])
    interest, liked = user_vectors(h, [r.rating for r in history], None)
    sims = c @ h.T
    att = np.exp((sims - sims.max(1, keepdims=True)) / tau)
    total, count = defaultdict(float), defaultdict(float)
    for r, weight in zip(history, w):
        for word in words[r.item]:
            total[word] += float(weight)
            count[word] += 1
    word_match = np.array([np.mean([total[x] / (count[x] + smoothing) for x in words[r.item] if count[x]] or [0.0])
                           for r in targets])
    if leave_out:
        for r in rows:
            stats.add(r.item, r.rating, -1)
    numeric = [stats.features(r.item, data.years.get(r.item)) for r in targets]
    if leave_out:
        for r in rows:
            stats.add(r.item, r.rating, +1)
    features = {"text_match": c @ interest, "liked_match": c @ liked, "attention": (att * w).sum(1) / att.sum(1),
                "word_match": word_match}
    for name in NUMERIC_FEATURES:
        features[name] = np.array([f.get(name, np.nan) for f in numeric])
    return features, np.array([1.0 if r.label == "positive" else 0.0 for r in targets])


def mean_auc(fit: list, judged: list, names: list[str]) -> tuple[float, int]:
    def matrix(f):
        return np.stack([f[n] for n in names], 1)

    x = np.concatenate([matrix(f) for f, _ in fit])
    means = np.nanmean(x, 0)
    x = np.where(np.isnan(x), means, x)
    ranker = fit_logistic(x, np.concatenate([y for _, y in fit]), names)
    aucs = []
    for f, y in judged:
        if y.min() != y.max():
            s = ranker.score(np.where(np.isnan(matrix(f)), means, matrix(f)))
            aucs.append(auc(s[y == 1], s[y == 0]))
    return float(np.mean(aucs)), len(aucs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=Path("movielens_base_vectors.npz"))
    parser.add_argument("--tau", type=float, default=0.05)
    parser.add_argument("--smoothing", type=float, default=2.0)
    args = parser.parse_args()
    quiet_libraries()
    train, dev = load_movielens(args.data_dir, "train"), load_movielens(args.data_dir, "dev")
    texts = {**train.texts, **dev.texts}
    vectors = base_vectors(texts, args.cache)
    words = {i: set(_WORD.findall(t.lower())) for i, t in texts.items()}
    stats = ItemStats()
    for rows in train.users.values():
        for r in rows:
            stats.add(r.item, r.rating)
    dev_stats = ItemStats.from_json(stats.to_json())
    for rows in dev.users.values():
        for r in rows:
            if r.role == "history":
                dev_stats.add(r.item, r.rating)

    def table(data, st, leave_out):
        out = {u: user_features(data, u, vectors, words, st, leave_out, args.tau, args.smoothing) for u in data.users}
        return {u: v for u, v in out.items() if v is not None}

    tr, dv = table(train, stats, True), table(dev, dev_stats, False)
    early, late = split_users(train, 0.2)
    current = ["text_match", "liked_match", *NUMERIC_FEATURES]
    for extra in ([], ["attention"], ["word_match"], ["attention", "word_match"]):
        names = current[:2] + extra + current[2:]
        held = mean_auc([tr[u] for u in early if u in tr], [tr[u] for u in late if u in tr], names)
        dev_auc = mean_auc(list(tr.values()), list(dv.values()), names)
        print(json.dumps({"features": names, "held_out_train_auc": round(held[0], 4), "held_out_users": held[1],
                          "dev_auc": round(dev_auc[0], 4), "dev_users": dev_auc[1]}))


if __name__ == "__main__":
    main()
