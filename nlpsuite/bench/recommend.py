"""Recommend: scoring 100 candidates for one user with a cold item-embedding cache, then with a warm one.

The recommend service runs as its own process (`nlpsuite serve recommend`, text match only: the cache is
what is measured, not the ranker). A MovieLens user's history is sent first so that only candidates differ.
Cold: every request brings 100 movies the server has never seen. Warm: the last cold request's 100 movies,
sent again. The responses' `cached` flags prove which case each request was.
"""
from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel

from nlpsuite.bench.procs import Child, peak_rss_mb, python_module
from nlpsuite.shared.local_run import free_port, wait_serving
from nlpsuite.bench.stats import Latency
from nlpsuite.services.recommend.client import RecommendClient
from nlpsuite.v1 import recommend_pb2

SERVICE_NAME = recommend_pb2.DESCRIPTOR.services_by_name["RecommendService"].full_name
HISTORY_ITEMS = 20


class RecommendResult(BaseModel):
    embedder: str
    variant: str
    provider: str
    candidates: int
    history: int
    cold: Latency
    warm: Latency
    speedup_p50: float  # cold p50 / warm p50
    peak_rss_mb: float


def movielens_user(data_dir: Path) -> tuple[list[tuple[str, float]], list[tuple[str, str]]]:
    """One dev-split user's rated history (text, rating) and every other movie as (id, text)."""
    from nlpsuite.pipeline.recommend import load_movielens

    data = load_movielens(data_dir, "dev")
    user = max(data.users, key=lambda u: (len(data.users[u]), u))
    seen = [r for r in data.users[user] if r.role == "history"][:HISTORY_ITEMS]
    history = [(data.texts[r.item], r.rating) for r in seen]
    taken = {r.item for r in seen}
    others = [(mid, text) for mid, text in sorted(data.texts.items(), key=lambda kv: int(kv[0])) if mid not in taken]
    return history, others


def run_recommend(repository: Path, embedder: str, data_dir: Path, provider: str, run_dir: Path,
                  cold_rounds: int, warm_rounds: int, candidates: int = 100) -> RecommendResult:
    history, movies = movielens_user(data_dir)
    needed = candidates * (cold_rounds + 1)
    if len(movies) < needed:
        raise RuntimeError(f"MovieLens has {len(movies)} movies; the cache check needs {needed}")
    port = free_port()
    config = run_dir / "recommend.yaml"
    config.write_text(
        f"log_level: WARNING\nrecommend:\n  host: 127.0.0.1\n  port: {port}\n  ranker: null\n"
        f"  embedder:\n    name: {embedder}\n    repository: {repository.resolve()}\n    provider: {provider}\n")
    child = Child("recommend-service", python_module("nlpsuite.cli", "serve", "recommend", "--config", str(config)),
                  run_dir)
    try:
        target = f"127.0.0.1:{port}"
        wait_serving(target, SERVICE_NAME, child.check_alive, timeout_s=300)
        with RecommendClient(target, timeout=120) as client:
            user = client.user(history=history)
            rounds = [movies[i * candidates : (i + 1) * candidates] for i in range(cold_rounds + 1)]
            client.score(user, rounds[0])  # warm-up: the history and the runtime, not these candidates' timing

            def timed(batch: list[tuple[str, str]], expect_cached: bool) -> float:
                t0 = time.perf_counter()
                reply = client.score(user, batch)
                elapsed = time.perf_counter() - t0
                flags = {item.cached for item in reply.items}
                if flags != {expect_cached}:
                    raise RuntimeError(f"recommend: expected every candidate cached={expect_cached}, got {flags}")
                return elapsed

            cold = [timed(batch, False) for batch in rounds[1:]]
            warm = [timed(rounds[-1], True) for _ in range(warm_rounds)]
            info = client.score(user, rounds[-1][:1]).model
        cold_lat, warm_lat = Latency.of(cold), Latency.of(warm)
        return RecommendResult(
            embedder=f"{info.name} v{info.version}", variant=info.variant, provider=info.provider,
            candidates=candidates, history=len(history), cold=cold_lat, warm=warm_lat,
            speedup_p50=round(cold_lat.p50_ms / warm_lat.p50_ms, 2), peak_rss_mb=round(peak_rss_mb(child.pid), 1))
    finally:
        child.stop()
