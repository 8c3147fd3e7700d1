"""Property-based fuzzing of RecommendService (Score, Rank) on a real server with a tiny real embedder and a
combiner over numeric features (so absurd feature values reach the arithmetic).

Examples per RPC and mode: NLPSUITE_FUZZ_EXAMPLES (default 150).
"""
from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import example, given, strategies as st

from nlpsuite.services.recommend.scoring import Ranker
from nlpsuite.services.recommend.service import RecommendService
from nlpsuite.shared.config import ModelSettings, RecommendSettings
from nlpsuite.shared.model_repo import Manifest, ModelRepository, write_manifest
from nlpsuite.v1 import recommend_pb2, recommend_pb2_grpc
from tests import fuzz_support as fz
from tests.fuzz_support import channel  # noqa: F401 - the fixture

SERVICE = "nlpsuite.v1.RecommendService"
FEATURES = ["popularity", "price"]


@pytest.fixture(scope="module")
def embedder_version(request):
    return fz.model_version(request, "built_embedder", "tiny-embed")


@pytest.fixture(scope="module")
def ranker_repo(tmp_path_factory, embedder_version):
    """A published combiner that weighs text match and two numeric features."""
    staged = tmp_path_factory.mktemp("ranker-staged")
    write_manifest(staged, Manifest(name="recommender", task="recommend", base_checkpoint="(combiner only)",
                                    base_checkpoint_sha256=""))
    Ranker(features=["text_match", "liked_match", *FEATURES], mean=[0.1, 0.1, 50.0, 10.0], std=[0.2, 0.2, 30.0, 5.0],
           weights=[1.5, 0.5, 0.8, -0.3], bias=0.1,
           embedder={"name": embedder_version.manifest.name}).save(staged)
    repo = tmp_path_factory.mktemp("ranker-repo")
    ModelRepository(repo).publish(staged, "recommender")
    return repo


@pytest.fixture(scope="module")
def server(embedder_version, ranker_repo):
    settings = RecommendSettings(
        host="127.0.0.1", port=0, max_items=fz.MAX_ITEMS, max_history=32, max_text_chars=fz.MAX_TEXT_CHARS,
        max_message_bytes=fz.MAX_MESSAGE_BYTES, cache_size=2000,
        embedder=ModelSettings(name=embedder_version.manifest.name, repository=embedder_version.path.parent.parent),
        ranker=ModelSettings(name="recommender", repository=ranker_repo))
    yield from fz.serve(RecommendService(settings))


feature_maps = st.dictionaries(st.one_of(st.sampled_from(FEATURES), fz.short_texts()), fz.FLOATS, max_size=4)
candidates = st.builds(lambda i, t, f: recommend_pb2.Candidate(id=i, text=t, features=f),
                       st.one_of(st.sampled_from(["a", "b", "c"]), fz.short_texts()), fz.texts(), feature_maps)
history = st.builds(lambda t, r: recommend_pb2.HistoryItem(text=t, rating=r) if r is not None
                    else recommend_pb2.HistoryItem(text=t), fz.texts(), st.one_of(st.none(), fz.FLOATS))
users = st.one_of(
    st.none(),
    st.builds(lambda i, h, p: recommend_pb2.User(id=i, history=h, profile=p), fz.short_texts(),
              st.one_of(st.lists(history, max_size=5), st.builds(lambda h, n: [h] * n, history, st.sampled_from([32, 33, 400]))),
              st.one_of(st.just(""), fz.texts())),
)
candidate_lists = st.one_of(st.lists(candidates, max_size=6),
                            st.builds(lambda c, n: [c] * n, candidates, st.sampled_from([fz.MAX_ITEMS, fz.MAX_ITEMS + 1, 3000])))
K = st.one_of(st.integers(0, 10), st.sampled_from([2**31 - 1, 2**32 - 1]))
# Found by this fuzzing: ratings of +-3.4e38 made the user vector NaN, features of 1e308 made scores inf.
EXTREME_USER = recommend_pb2.User(id="u", history=[recommend_pb2.HistoryItem(text=t, rating=r) for t, r in
                                                   (("a", 3.4e38), ("b", -3.4e38), ("c", 3.4e38))])
EXTREME_CANDIDATES = [recommend_pb2.Candidate(id="a", text="x", features={"popularity": 1e308, "price": -1e308}),
                      recommend_pb2.Candidate(id="b", text="y", features={"price": 1e308})]


def request_of(cls, user, cands, **extra):
    request = cls(candidates=cands, **extra)
    if user is not None:
        request.user.CopyFrom(user)
    return request


def check_items(items, candidate_ids: list[str]) -> None:
    for item in items:
        assert math.isfinite(item.score), item
        assert -1.0 - 1e-3 <= item.text_match <= 1.0 + 1e-3, item


def check_score(response: recommend_pb2.ScoreResponse, candidate_ids: list[str]) -> None:
    assert [i.id for i in response.items] == candidate_ids  # one per candidate, in request order
    check_items(response.items, candidate_ids)
    assert fz.model_info_ok(response.model)


def check_rank(response: recommend_pb2.RankResponse, candidate_ids: list[str], k: int) -> None:
    assert len(response.items) == min(k, len(candidate_ids))
    assert not Counter(i.id for i in response.items) - Counter(candidate_ids)
    scores = [i.score for i in response.items]
    assert scores == sorted(scores, reverse=True)
    check_items(response.items, candidate_ids)
    assert fz.model_info_ok(response.model)


@fz.FUZZ
@example(user=EXTREME_USER, cands=EXTREME_CANDIDATES, timeout=fz.TIMEOUT_S)
@given(user=users, cands=candidate_lists, timeout=st.sampled_from([fz.TIMEOUT_S] * 9 + [0.001]))
def test_score_typed(channel, user, cands, timeout):
    stub = recommend_pb2_grpc.RecommendServiceStub(channel)
    fz.typed_case(channel, SERVICE, "Score",
                  [lambda: stub.Score(request_of(recommend_pb2.ScoreRequest, user, cands), timeout=timeout)],
                  lambda response: check_score(response, [c.id for c in cands]))


@fz.FUZZ
@example(user=EXTREME_USER, cands=EXTREME_CANDIDATES, k=2)
@given(user=users, cands=candidate_lists, k=K)
def test_rank_typed(channel, user, cands, k):
    stub = recommend_pb2_grpc.RecommendServiceStub(channel)
    fz.typed_case(channel, SERVICE, "Rank",
                  [lambda: stub.Rank(request_of(recommend_pb2.RankRequest, user, cands, k=k), timeout=fz.TIMEOUT_S)],
                  lambda response: check_rank(response, [c.id for c in cands], k))


@fz.FUZZ
@given(payload=fz.wire_messages("score"))
def test_score_raw_wire(channel, payload):
    def check(raw: bytes) -> None:
        request = recommend_pb2.ScoreRequest.FromString(payload)
        check_score(recommend_pb2.ScoreResponse.FromString(raw), [c.id for c in request.candidates])

    fz.raw_case(channel, SERVICE, "Score", payload, check)


@fz.FUZZ
@given(payload=fz.wire_messages("rank"))
def test_rank_raw_wire(channel, payload):
    def check(raw: bytes) -> None:
        request = recommend_pb2.RankRequest.FromString(payload)
        check_rank(recommend_pb2.RankResponse.FromString(raw), [c.id for c in request.candidates], request.k)

    fz.raw_case(channel, SERVICE, "Rank", payload, check)
