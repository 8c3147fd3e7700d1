"""The response cache: repeated texts answered without inference, never across a model version change."""
from __future__ import annotations

import grpc
import pytest

from nlpsuite.services.sentiment.service import SentimentService
from nlpsuite.shared.config import ModelSettings, SentimentSettings
from nlpsuite.shared.lru import LruCache
from nlpsuite.shared.model_repo import ModelRepository
from nlpsuite.v1 import sentiment_pb2, sentiment_pb2_grpc
from nlpsuite.shared.local_run import ServerThread
from tests.support import wait_for
from tests.support import metric

HEADLINE = "Norvale Mining shares jump after record quarter"


def analyze(stub, *texts: str) -> sentiment_pb2.AnalyzeResponse:
    return stub.Analyze(sentiment_pb2.AnalyzeRequest(texts=list(texts)), timeout=30)


def counts(service: SentimentService) -> tuple[float, float, float]:
    """(hits, misses, texts the model ran)"""
    return (metric(service, "nlpsuite_response_cache_total", result="hit"),
            metric(service, "nlpsuite_response_cache_total", result="miss"),
            metric(service, "nlpsuite_texts_run_total"))


def test_repeated_texts_are_answered_from_the_cache_and_a_new_version_starts_cold(tmp_path, built_classifier):
    repo = ModelRepository(tmp_path / "models")
    repo.publish(built_classifier.path, "sentiment")
    service = SentimentService(SentimentSettings(host="127.0.0.1", port=0, model=ModelSettings(
        name="sentiment", repository=repo.root, reload_interval_s=0.2, response_cache=100)))
    with ServerThread(service).start() as server, grpc.insecure_channel(server.target) as channel:
        stub = sentiment_pb2_grpc.SentimentServiceStub(channel)
        first = analyze(stub, HEADLINE, "Sales fell.")
        assert counts(service) == (0, 2, 2)
        # The same headline again, spaced differently (the tokenizer splits on whitespace), beside a new text.
        again = analyze(stub, "  Norvale Mining shares   jump after record\tquarter ", "Output was flat.")
        assert counts(service) == (1, 3, 3)
        assert again.results[0].scores == first.results[0].scores and again.results[0].label == first.results[0].label
        assert list(again.results[0].entities) == list(first.results[0].entities)  # the rest is per text, not cached
        cached = analyze(stub, HEADLINE)
        assert counts(service) == (2, 3, 3) and cached.timing.inference_us == 0
        assert cached.model.version == "1"

        repo.publish(built_classifier.path, "sentiment")  # v2: same weights, but a version's results are its own
        assert wait_for(lambda: analyze(stub, "poll").model.version == "2")
        hits, misses, ran = counts(service)
        after = analyze(stub, HEADLINE)
        assert after.model.version == "2" and counts(service) == (hits, misses + 1, ran + 1)
        assert after.results[0].scores == first.results[0].scores  # the same weights give the same scores


def test_the_cache_is_off_by_default(built_classifier):
    from tests.support import settings_for

    service = SentimentService(settings_for(built_classifier))
    with ServerThread(service).start() as server, grpc.insecure_channel(server.target) as channel:
        stub = sentiment_pb2_grpc.SentimentServiceStub(channel)
        analyze(stub, HEADLINE)
        analyze(stub, HEADLINE)
    assert service.model.cache is None and counts(service) == (0, 0, 2)


def test_the_lru_keeps_the_most_recently_used_entries():
    cache: LruCache[str, int] = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    assert (cache.hits, cache.misses, len(cache)) == (3, 1, 2)
    with pytest.raises(ValueError):
        LruCache(0)
