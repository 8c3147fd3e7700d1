"""RecommendService over a real channel; build and evaluate of the combiner on MovieLens-layout data."""
from __future__ import annotations

import csv
import json
import random

import grpc
import numpy as np
import pytest

from nlpsuite.cli import main as cli_main
from nlpsuite.services.recommend.client import RecommendClient
from nlpsuite.pipeline.ranking import auc
from nlpsuite.services.recommend.scoring import Ranker, user_vectors
from nlpsuite.services.recommend.service import RecommendService
from nlpsuite.shared.config import ModelSettings, RecommendSettings
from nlpsuite.shared.model import open_model
from nlpsuite.shared.local_run import ServerThread
from tests.support import reflected_services

GENRES = ["Comedy", "Drama", "Horror", "Sci-Fi", "Romance", "Western"]

CLIENT = RecommendClient  # the `client` fixture (conftest.py) connects one to the module's `server`


@pytest.fixture(scope="module")
def movielens_dir(tmp_path_factory):
    """A small synthetic data set in the MovieLens layout: item quality plus per-user genre taste."""
    rng = random.Random(0)
    out = tmp_path_factory.mktemp("movielens")
    movies = []
    for k in range(60):
        genre = GENRES[k % len(GENRES)]
        movies.append((str(k + 1), f"Film number {k} ({1960 + k % 50})", f"{genre}|{GENRES[(k * 7) % len(GENRES)]}"))
    quality = {m[0]: rng.gauss(0, 1.0) for m in movies}
    with open(out / "movies.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["movieId", "title", "genres"])
        w.writerows(movies)
    for split, users in (("train", range(1, 41)), ("dev", range(41, 56))):
        rows, tags = [], []
        for u in users:
            taste = {g: rng.gauss(0, 1.0) for g in GENRES}
            seen = rng.sample(movies, 25)
            for t, (mid, _, genres) in enumerate(seen):
                raw = 3.2 + quality[mid] + 0.8 * taste[genres.split("|")[0]] + rng.gauss(0, 0.5)
                rating = min(5.0, max(0.5, round(raw * 2) / 2))
                label = "positive" if rating >= 4 else "negative" if rating <= 2.5 else "neutral"
                role = "target" if t >= 20 else "history"
                rows.append([u, mid, rating, 1_000_000 + t, label, role])
            tags.append([u, seen[0][0], "classic", 1_000_000])
        with open(out / f"ratings_{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["userId", "movieId", "rating", "timestamp", "label", "role"])
            w.writerows(rows)
        with open(out / f"tags_{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["userId", "movieId", "tag", "timestamp"])
            w.writerows(tags)
    return out


@pytest.fixture(scope="module")
def built_recommender(movielens_dir, built_embedder):
    from nlpsuite.pipeline.recommend import build_recommender

    return build_recommender(movielens_dir, built_embedder.path, built_embedder.path.parent.parent)


def test_build_publishes_a_recommender_with_learned_weights(built_recommender):
    m = built_recommender.manifest
    assert m.task == "recommend" and m.name == "recommender"
    ranker = Ranker.load(built_recommender.path)
    assert ranker.features == ["text_match", "liked_match", "popularity", "mean_rating", "age"]
    assert ranker.weights[ranker.features.index("mean_rating")] > 0  # item quality carries signal here
    assert m.reference_metrics["dev_users"] > 0


def test_evaluate_prints_mean_user_auc_json_last(built_recommender, movielens_dir, capsys):
    model_dir = built_recommender.path.parent
    assert cli_main(["evaluate", "--task", "recommend", "--model", str(model_dir), "--data-dir",
                     str(movielens_dir), "--split", "dev"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n_users"] > 5
    assert result["mean_user_auc"] > 0.6  # a learnt combiner beats chance on this data


def test_auc():
    assert auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auc(np.array([1.0]), np.array([1.0])) == 0.5
    assert auc(np.array([1.0, 3.0]), np.array([2.0])) == 0.5


@pytest.fixture(scope="module")
def server(built_recommender, built_embedder):
    repo = built_embedder.path.parent.parent
    settings = RecommendSettings(
        host="127.0.0.1", port=0, max_items=50, cache_size=1000,
        embedder=ModelSettings(name=built_embedder.manifest.name, repository=repo),
        ranker=ModelSettings(name="recommender", repository=repo),
    )
    with ServerThread(RecommendService(settings)).start() as srv:
        yield srv


HISTORY = [("Film number 1 (1961). Drama, Comedy", 5.0), ("Film number 2 (1962). Horror, Drama", 1.0),
           ("Film number 3 (1963). Sci-Fi", None)]
CANDIDATES = [(f"m{k}", f"Film number {k} ({1960 + k}). {GENRES[k % 6]}", {"popularity": float(k % 4),
               "mean_rating": 2.5 + (k % 5) / 2, "age": float(k)}) for k in range(10, 22)]


def test_score_matches_the_in_process_computation(client, built_embedder, built_recommender):
    user = client.user(history=HISTORY, profile="likes comedies")
    reply = client.score(user, CANDIDATES)
    assert [i.id for i in reply.items] == [c[0] for c in CANDIDATES]
    model = open_model(built_embedder)
    ranker = Ranker.load(built_recommender.path)
    hist = model.predict([h[0] for h in HISTORY])
    profile = model.predict(["likes comedies"])[0]
    interest, liked = user_vectors(hist, [h[1] for h in HISTORY], profile)
    cand = model.predict([c[1] for c in CANDIDATES])
    expected = ranker.score(ranker.matrix(cand @ interest, cand @ liked, [c[2] for c in CANDIDATES]))
    assert np.allclose([i.score for i in reply.items], expected, atol=1e-4)
    assert np.allclose([i.text_match for i in reply.items], cand @ interest, atol=1e-4)
    assert reply.model.name == built_embedder.manifest.name and reply.timing.total_us > 0


def test_rank_returns_the_k_best_in_order(client):
    user = client.user(history=HISTORY)
    scored = {i.id: i.score for i in client.score(user, CANDIDATES).items}
    ranked = client.rank(user, CANDIDATES, k=4).items
    assert [i.id for i in ranked] == sorted(scored, key=lambda k: -scored[k])[:4]
    assert client.rank(client.user(profile="horror films"), CANDIDATES, k=100).items  # k beyond the list: all


def test_a_catalogue_scored_again_costs_no_model_time(client, server):
    user = client.user(profile="westerns and dramas")
    catalogue = [(f"cat{k}", f"Catalogue item {k}. {GENRES[k % 6]}") for k in range(20)]
    submitted = server.service.embedder.batcher.submitted
    first = client.score(user, catalogue)
    assert server.service.embedder.batcher.submitted == submitted + 21  # the profile and 20 items
    assert not any(i.cached for i in first.items)
    submitted_before = server.service.embedder.batcher.submitted
    second = client.score(user, catalogue)
    assert all(i.cached for i in second.items)
    assert second.timing.inference_us == 0
    assert server.service.embedder.batcher.submitted == submitted_before  # nothing was queued for the model
    assert [i.score for i in first.items] == pytest.approx([i.score for i in second.items], abs=1e-6)
    changed = client.score(user, [("cat0", "Catalogue item 0, now with a new description")])
    assert not changed.items[0].cached  # same id, new text: a new entry


@pytest.mark.parametrize("build, needle", [
    (lambda c: ("score", dict(candidates=CANDIDATES[:1])), "user is required"),
    (lambda c: ("score", dict(user=c.user(), candidates=CANDIDATES[:1])), "user needs a history or a profile"),
    (lambda c: ("score", dict(user=c.user(profile="x"), candidates=[])), "candidates is empty"),
    (lambda c: ("score", dict(user=c.user(profile="x"), candidates=[("", "text")])), "candidates[0].id is required"),
    (lambda c: ("score", dict(user=c.user(profile="x"), candidates=[("a", " ")])), "candidates[0].text is empty"),
    (lambda c: ("score", dict(user=c.user(history=[""]), candidates=CANDIDATES[:1])), "user.history[0].text"),
    (lambda c: ("score", dict(user=c.user(profile="x"), candidates=CANDIDATES * 5)), "candidates has 60 items"),
    (lambda c: ("rank", dict(user=c.user(profile="x"), candidates=CANDIDATES, k=0)), "k is required"),
])
def test_bad_input_is_invalid_argument_naming_the_field(client, build, needle):
    from nlpsuite.services.recommend.client import _candidate
    from nlpsuite.v1 import recommend_pb2

    method, kwargs = build(client)
    kwargs["candidates"] = [_candidate(c) for c in kwargs.get("candidates", [])]
    request = (recommend_pb2.ScoreRequest if method == "score" else recommend_pb2.RankRequest)(**kwargs)
    with pytest.raises(grpc.RpcError) as err:
        getattr(client.stub, method.capitalize())(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.value.details()
    assert client.rank(client.user(profile="still up"), CANDIDATES, k=1).items


def test_health_and_reflection(server):
    from grpc_health.v1 import health_pb2

    assert server.health("nlpsuite.v1.RecommendService") == health_pb2.HealthCheckResponse.SERVING
    assert {"nlpsuite.v1.RecommendService", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= reflected_services(server.target)
