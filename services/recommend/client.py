"""A small client for RecommendService.

    with RecommendClient("localhost:50053") as c:
        user = c.user(history=[("Toy Story (1995). Animation, Comedy", 5.0)], profile="space adventures")
        c.rank(user, [("m1", "Alien (1979). Horror, Sci-Fi", {"popularity": 4.2})], k=10)
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from nlpsuite.shared.client import ServiceClient
from nlpsuite.v1 import recommend_pb2, recommend_pb2_grpc

CandidateLike = recommend_pb2.Candidate | tuple[str, str] | tuple[str, str, Mapping[str, float]]


def _candidate(c: CandidateLike) -> recommend_pb2.Candidate:
    if isinstance(c, recommend_pb2.Candidate):
        return c
    features = c[2] if len(c) > 2 else {}
    return recommend_pb2.Candidate(id=c[0], text=c[1], features=dict(features))


class RecommendClient(ServiceClient):
    stub_class = recommend_pb2_grpc.RecommendServiceStub

    @staticmethod
    def user(history: Iterable[str | tuple[str, float | None]] = (), profile: str = "", user_id: str = ""
             ) -> recommend_pb2.User:
        items = []
        for h in history:
            text, rating = (h, None) if isinstance(h, str) else h
            items.append(recommend_pb2.HistoryItem(text=text, rating=rating) if rating is not None
                         else recommend_pb2.HistoryItem(text=text))
        return recommend_pb2.User(id=user_id, history=items, profile=profile)

    def score(self, user: recommend_pb2.User, candidates: Iterable[CandidateLike], timeout: float | None = None
              ) -> recommend_pb2.ScoreResponse:
        request = recommend_pb2.ScoreRequest(user=user, candidates=[_candidate(c) for c in candidates])
        return self.stub.Score(request, timeout=timeout or self.timeout)

    def rank(self, user: recommend_pb2.User, candidates: Iterable[CandidateLike], k: int,
             timeout: float | None = None) -> recommend_pb2.RankResponse:
        request = recommend_pb2.RankRequest(user=user, candidates=[_candidate(c) for c in candidates], k=k)
        return self.stub.Rank(request, timeout=timeout or self.timeout)

