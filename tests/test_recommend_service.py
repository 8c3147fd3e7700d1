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


def test_evaluate_reports_ndcg_cold_start_and_what_the_text_adds(built_recommender, movielens_dir):
    from nlpsuite.pipeline.recommend import evaluate_recommender

    result = evaluate_recommender(built_recommender.path, movielens_dir, "dev")
    assert 0 < result["ndcg@10"] <= 1 and result["ndcg_users"] > 5
    assert result["without_text_mean_user_auc"] > 0.5
    assert result["n_users"] + result["one_class_users"] == 15  # every dev user has targets; some only one class
    assert result["text_gain_points"] == pytest.approx(
        (result["mean_user_auc"] - result["without_text_mean_user_auc"]) * 100, abs=0.02)
    # every dev movie is also rated in train here, so no cold-start targets: reported as such, not as a number
    assert result["cold_start_targets"] == 0 and result["cold_start_users"] == 0
    assert "cold_start_text_only_mean_user_auc" not in result
    assert built_recommender.manifest.reference_metrics["dev_mean_user_auc"] == result["mean_user_auc"]


def test_ratings_of_unknown_movies_are_skipped_and_counted(movielens_dir, tmp_path, caplog):
    import shutil

    from nlpsuite.pipeline.recommend import load_movielens

    for f in movielens_dir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    with open(tmp_path / "ratings_train.csv", "a", newline="") as f:
        csv.writer(f).writerows([[1, 9999, 4.0, 1, "positive", "history"], [2, 9998, 1.0, 1, "negative", "target"]])
    data = load_movielens(tmp_path, "train")
    assert data.unknown_items == 2
    assert "2 ratings name movies that" in caplog.text and "9998, 9999" in caplog.text


def test_a_movie_without_text_still_gets_examples_from_its_statistics(movielens_dir, built_embedder):
    from nlpsuite.pipeline.recommend import (
        ItemStats, Rating, embed_items, load_movielens, user_examples,
    )
    from nlpsuite.shared.model import open_model_dir

    data = load_movielens(movielens_dir, "train")
    data.texts["1"] = ""
    vectors = embed_items(open_model_dir(built_embedder.path), data.texts)
    assert "1" not in vectors and "2" in vectors
    data.users["u"] = [Rating("2", 5.0, "positive", "history"), Rating("3", 1.0, "negative", "history"),
                       Rating("1", 5.0, "positive", "target"), Rating("4", 1.0, "negative", "target")]
    stats = ItemStats()
    stats.add("1", 4.5)
    ranker = Ranker(features=["text_match", "mean_rating"], mean=[0.0, 3.5], std=[1.0, 1.0], weights=[1.0, 1.0])
    x, y = user_examples(data, vectors, ranker, stats, "u", leave_out=False)
    assert np.isnan(x[0, 0]) and np.isfinite(x[1, 0]) and list(y) == [1.0, 0.0]
    assert np.isfinite(ranker.score(x)).all()


@pytest.fixture(scope="module")
def fine_tuned(movielens_dir, tiny_checkpoint, tmp_path_factory):
    """The recommender with its encoder fine-tuned on the train split's behaviour (from the tiny random BERT)."""
    from nlpsuite.pipeline.behaviour import BehaviourHyperparameters
    from nlpsuite.pipeline.recommend import build_recommender

    hp = BehaviourHyperparameters(steps=80, learning_rate=1e-3, users_per_step=6, eval_every=20, max_length=32)
    repo = tmp_path_factory.mktemp("behaviour")
    return repo, build_recommender(movielens_dir, None, repo, base=tiny_checkpoint, behaviour=hp)


def test_fine_tuning_on_behaviour_publishes_an_encoder_that_ranks_held_out_users_better(fine_tuned):
    from nlpsuite.shared.model_repo import ModelRepository

    repo, recommender = fine_tuned
    encoder = ModelRepository(repo).resolve("recommender-encoder")
    m = encoder.manifest
    assert m.task == "embed" and m.extra["objective"] == "behaviour"
    assert {"fp32", "int8"} <= set(m.variants) and m.dataset["held_out_users"] == 8
    history = m.extra["training"]["history"]
    # genre taste is learnable from the titles' genres: held-out users (never trained on) are ranked better
    assert max(h["held_out"] for h in history[1:]) > history[0]["held_out"] + 0.02
    assert m.reference_metrics["score"] == pytest.approx(max(h["held_out"] for h in history), abs=0.02)
    ranker = Ranker.load(recommender.path)
    assert ranker.embedder == {"name": "recommender-encoder", "version": encoder.manifest.version}
    assert ranker.metrics["ranker_users"] == 8 and ranker.metrics["train_users"] <= 8


def test_fine_tune_and_a_given_embedder_are_refused_together(movielens_dir, tmp_path):
    with pytest.raises(SystemExit, match="--fine-tune trains its own encoder"):
        cli_main(["build", "--task", "recommend", "--name", "r", "--data-dir", str(movielens_dir), "--fine-tune",
                  "--embedder", str(tmp_path), "--repository", str(tmp_path)])


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


def test_a_candidate_without_text_ranks_by_its_features(client, built_recommender):
    ranker = Ranker.load(built_recommender.path)
    assert ranker.weights[ranker.features.index("mean_rating")] > 0
    user = client.user(history=HISTORY)
    plain = {"popularity": 1.0, "age": 10.0}
    reply = client.score(user, [("good", "", {**plain, "mean_rating": 4.8}), ("poor", " ", {**plain, "mean_rating": 1.2}),
                                CANDIDATES[0]])
    good, poor, texted = reply.items
    assert good.score > poor.score and good.text_match == poor.text_match == 0.0 and not good.cached
    # its text features count as their mean: only the numeric features move it away from the bias
    z = [(v - m) / sd for v, m, sd in zip([ranker.mean[0], ranker.mean[1], 1.0, 4.8, 10.0], ranker.mean, ranker.std)]
    assert good.score == pytest.approx(float(np.dot(z, ranker.weights) + ranker.bias), abs=1e-5)
    assert texted.text_match != 0.0


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
