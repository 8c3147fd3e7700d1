"""RecommendService: Score and Rank candidates for a user (history and/or profile) with a learned combiner."""
from __future__ import annotations

import logging
import math

import grpc
import numpy as np

from nlpsuite.services.recommend.cache import EmbeddingCache, item_key
from nlpsuite.services.recommend.scoring import Ranker, user_vectors
from nlpsuite.shared.batcher import Lane
from nlpsuite.shared.config import RecommendSettings
from nlpsuite.shared.errors import InvalidArgument, Unavailable
from nlpsuite.shared.model_repo import ModelRepoError, ModelRepository
from nlpsuite.shared.priority import lane_of
from nlpsuite.shared.server import Service, unary
from nlpsuite.shared.rpc import deadline_of, model_info, timing_proto
from nlpsuite.shared.serving import ModelRef, Timing
from nlpsuite.shared.wire import add_servicer
from nlpsuite.shared.validation import check_items, check_text
from nlpsuite.v1 import recommend_pb2, recommend_pb2_grpc

log = logging.getLogger(__name__)

HISTORY_ID = ""  # history items are cached by text alone
PROFILE_ID = "\x00profile"


class RecommendService(Service, recommend_pb2_grpc.RecommendServiceServicer):
    service_name = recommend_pb2.DESCRIPTOR.services_by_name["RecommendService"].full_name
    short_name = "recommend"

    def __init__(self, settings: RecommendSettings) -> None:
        super().__init__(settings)
        self.settings: RecommendSettings = settings
        self.embedder = self.served_model(settings.embedder, task="embed", field="candidates")
        self.cache = EmbeddingCache(settings.cache_size)
        self.ranker: Ranker | None = None

    def models(self):
        return [self.embedder]

    def add_to_server(self, server: grpc.aio.Server) -> None:
        add_servicer(recommend_pb2_grpc.add_RecommendServiceServicer_to_server, self, server)

    async def load(self) -> None:
        r = self.settings.ranker
        if r is None:
            self.ranker = Ranker()  # text match only
        else:
            version = ModelRepository(r.repository).resolve(r.name, r.version)
            if version.manifest.task != "recommend":
                raise ModelRepoError(f"{version.path}: manifest.json says task {version.manifest.task!r}; "
                                     "the ranker must be a 'recommend' model")
            try:
                self.ranker = Ranker.load(version.path)
            except (OSError, ValueError) as exc:
                raise ModelRepoError(f"{version.path}: cannot read the ranker: {exc}") from None
            self.ranker_version = version
        await super().load()
        assert self.embedder.model is not None
        trained = self.ranker.embedder.get("name")
        if trained and trained != self.embedder.model.manifest.name:
            log.warning("ranker was trained with another embedder", extra={"trained_with": trained,
                                                                           "serving": self.embedder.model.manifest.name})

    # -- validation ------------------------------------------------------------------------------------
    def _check(self, request) -> None:
        s = self.settings
        if not request.HasField("user"):
            raise InvalidArgument("user is required")
        user = request.user
        if not user.history and not user.profile.strip():
            raise InvalidArgument("user needs a history or a profile")
        if len(user.history) > s.max_history:
            raise InvalidArgument(f"user.history has {len(user.history)} items, over the limit of {s.max_history}")
        for i, item in enumerate(user.history):
            check_text(item.text, s, f"user.history[{i}].text")
            if item.HasField("rating") and not math.isfinite(item.rating):
                raise InvalidArgument(f"user.history[{i}].rating is not a finite number")
        if user.profile:
            check_text(user.profile, s, "user.profile")
        check_items(request.candidates, s, "candidates")
        for i, cand in enumerate(request.candidates):
            if not cand.id:
                raise InvalidArgument(f"candidates[{i}].id is required")
            if cand.text.strip():  # a candidate without text ranks by its features alone
                check_text(cand.text, s, f"candidates[{i}].text")
            for name, value in cand.features.items():
                if not math.isfinite(value):
                    raise InvalidArgument(f"candidates[{i}].features[{name!r}] is not a finite number")

    # -- scoring ---------------------------------------------------------------------------------------
    async def _vectors(self, keyed: list[tuple[tuple[str, str], str]], timing: Timing, deadline,
                       lane: Lane = "interactive") -> tuple[list[np.ndarray], list[bool], ModelRef]:
        """Embeddings for (key, text) pairs, all from one embedder version (cache entries are per version).

        A hot reload between the cache lookups and the model call would mix versions: then start over once.
        """
        for _ in range(2):
            info = self.embedder.info()
            vectors, cached, ran = await self._vectors_of(info.version, keyed, timing, deadline, lane)
            if ran is None or ran.version == info.version:
                return vectors, cached, info
        raise Unavailable("the embedder changed version during the request; retry")

    async def _vectors_of(self, version: str, keyed: list[tuple[tuple[str, str], str]], timing: Timing, deadline,
                          lane: Lane) -> tuple[list[np.ndarray], list[bool], ModelRef | None]:
        """Cached ones free, the rest in one batched model call (and the version that ran it, if any)."""
        keyed = [((version, *key), text) for key, text in keyed]
        found: dict[tuple[str, ...], np.ndarray] = {}
        cached = []
        missing: dict[tuple[str, ...], str] = {}
        ran = None
        for key, text in keyed:
            vector = found.get(key)
            if vector is None:
                vector = self.cache.get(key)
                if vector is not None:
                    found[key] = vector
            cached.append(vector is not None and key not in missing)
            if vector is None:
                missing[key] = text
        if missing:
            result = await self.embedder.infer(list(missing.values()), timing, deadline, lane)
            ran = result.model
            if ran.version != version:
                return [], [], ran
            for key, vector in zip(missing, result.outputs):
                found[key] = vector
                self.cache.put(key, vector)
        return [found[key] for key, _ in keyed], cached, ran

    async def _score(self, request, context, timing: Timing
                     ) -> tuple[list[recommend_pb2.ScoredItem], ModelRef]:
        if self.ranker is None or not self.embedder.loaded:
            raise Unavailable("the recommender is not loaded")
        self._check(request)
        user = request.user
        history = [(item_key(HISTORY_ID, h.text), h.text) for h in user.history]
        profile = [(item_key(PROFILE_ID, user.profile), user.profile)] if user.profile.strip() else []
        texted = [i for i, c in enumerate(request.candidates) if c.text.strip()]
        cands = [(item_key(request.candidates[i].id, request.candidates[i].text), request.candidates[i].text)
                 for i in texted]
        vectors, cached, info = await self._vectors(history + profile + cands, timing, deadline_of(context),
                                                    lane_of(context))
        n_hist, n_prof = len(history), len(profile)
        hist = np.stack(vectors[:n_hist]) if n_hist else np.zeros((0, 0), np.float32)
        ratings = [h.rating if h.HasField("rating") else None for h in user.history]
        interest, liked = user_vectors(hist, ratings, vectors[n_hist] if n_prof else None)
        # Without text a candidate's text features are missing, which the ranker counts as their mean.
        cand = np.full((len(request.candidates), len(interest)), np.nan, np.float32)
        flags = [False] * len(request.candidates)
        if texted:
            cand[texted] = np.stack(vectors[n_hist + n_prof:])
            for i, hit in zip(texted, cached[n_hist + n_prof:]):
                flags[i] = hit
        text_match, liked_match = cand @ interest, cand @ liked
        x = self.ranker.matrix(text_match, liked_match, [dict(c.features) for c in request.candidates])
        scores = self.ranker.score(x)
        shown = np.nan_to_num(text_match).tolist()
        return [recommend_pb2.ScoredItem(id=c.id, score=s, text_match=t, cached=f)
                for c, s, t, f in zip(request.candidates, scores.tolist(), shown, flags)], info

    @unary("Score", field="candidates")
    async def Score(self, request: recommend_pb2.ScoreRequest, context, timing: Timing):
        items, info = await self._score(request, context, timing)
        return recommend_pb2.ScoreResponse(items=items, model=model_info(info), timing=timing_proto(timing))

    @unary("Rank", field="candidates")
    async def Rank(self, request: recommend_pb2.RankRequest, context, timing: Timing):
        if request.k == 0:
            raise InvalidArgument("k is required (the number of candidates to return, at least 1)")
        items, info = await self._score(request, context, timing)
        items.sort(key=lambda item: -item.score)
        return recommend_pb2.RankResponse(items=items[: request.k], model=model_info(info), timing=timing_proto(timing))
