"""10x the measured capacity, open loop, against a real `nlpsuite serve sentiment` subprocess.

The server must stay up, shed the excess with RESOURCE_EXHAUSTED (fast, not after waiting), keep the latency of
what it admits bounded by its queue, keep its memory flat, and answer normally as soon as the load stops.
CI runs a short burst; NLPSUITE_LONG=1 runs 30 s of overload and then 100,000 requests in all.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections import Counter

import grpc
import numpy as np

from nlpsuite.v1 import sentiment_pb2, sentiment_pb2_grpc
from nlpsuite.shared.local_run import ServeProcess

SERVICE = "nlpsuite.v1.SentimentService"
LONG = os.environ.get("NLPSUITE_LONG") == "1"
OVERLOAD_S = 30.0 if LONG else 6.0
TOTAL_REQUESTS = 100_000 if LONG else 0  # after the overload, closed-loop calls until this many in all
TEXTS = 32  # per request: the model, not per-call overhead, sets the capacity (shedding a call costs little)
QUEUE_CAPACITY = 4 * TEXTS  # texts: four requests wait at most
MAX_BATCH = 32
DEADLINE_S = 5.0
RSS_MARGIN_KB = 64 * 1024  # stated margin: RSS may grow by at most 64 MiB over the post-warm-up figure
CHANNELS = 4
TEXT = "Norvale Mining shares jump after a record quarter, beating forecasts on copper and nickel output " * 3


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99)) if values else float("nan")


def p50(values: list[float]) -> float:
    return float(np.percentile(values, 50)) if values else float("nan")


class Driver:
    def __init__(self, target: str) -> None:
        self.channels = [grpc.aio.insecure_channel(target) for _ in range(CHANNELS)]
        self.stubs = [sentiment_pb2_grpc.SentimentServiceStub(c) for c in self.channels]
        self.request = sentiment_pb2.AnalyzeRequest(texts=[TEXT] * TEXTS)
        self.sent = 0
        self.server_total_s: list[float] = []  # receipt to reply, measured by the server, for admitted calls

    async def call(self, request: sentiment_pb2.AnalyzeRequest | None = None) -> tuple[grpc.StatusCode, float]:
        stub = self.stubs[self.sent % CHANNELS]
        self.sent += 1
        started = time.perf_counter()
        try:
            reply = await stub.Analyze(request or self.request, timeout=DEADLINE_S)
            code = grpc.StatusCode.OK
            self.server_total_s.append(reply.timing.total_us / 1e6)
        except grpc.aio.AioRpcError as err:
            code = err.code()
        return code, time.perf_counter() - started

    async def closed_loop(self, seconds: float | None, concurrency: int = 16, until: int | None = None,
                          request: sentiment_pb2.AnalyzeRequest | None = None) -> int:
        """Back-to-back calls from `concurrency` workers; returns how many succeeded."""
        end = time.monotonic() + seconds if seconds else None
        ok = 0

        async def worker():
            nonlocal ok
            while (end is None or time.monotonic() < end) and (until is None or self.sent < until):
                code, _ = await self.call(request)
                ok += code == grpc.StatusCode.OK

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return ok

    async def open_loop(self, rate: float, seconds: float) -> tuple[list[tuple[grpc.StatusCode, float]], float]:
        """Calls started on a fixed schedule whatever the replies; returns the outcomes and the rate achieved."""
        tasks = []
        started = time.monotonic()
        n = int(rate * seconds)
        for i in range(n):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(self.call()))
        achieved = n / (time.monotonic() - started)
        return list(await asyncio.gather(*tasks)), achieved

    async def close(self) -> None:
        for c in self.channels:
            await c.close()


async def scenario(server: ServeProcess) -> dict:
    driver = Driver(server.target)
    try:
        await driver.closed_loop(2.0)  # warm-up
        rss_warm = server.rss_kb()
        measured_s = 3.0
        capacity = await driver.closed_loop(measured_s, concurrency=2) / measured_s  # the queue holds them all
        driver.server_total_s.clear()
        outcomes, achieved = await driver.open_loop(10 * capacity, OVERLOAD_S)
        server_total = list(driver.server_total_s)
        alive = server.proc.poll() is None
        after_code, after_latency = await driver.call()  # right after the load drops
        if TOTAL_REQUESTS:
            # one text per call: many requests (per-call memory) without hours of model time
            await driver.closed_loop(None, concurrency=32, until=TOTAL_REQUESTS,
                                     request=sentiment_pb2.AnalyzeRequest(texts=[TEXT]))
        rss_end = server.rss_kb()
        return dict(capacity=capacity, achieved=achieved, outcomes=outcomes, alive=alive, after_code=after_code,
                    after_latency=after_latency, rss_warm=rss_warm, rss_end=rss_end, sent=driver.sent,
                    server_total=server_total)
    finally:
        await driver.close()


def test_ten_times_capacity_is_shed_fast_with_bounded_latency_and_memory(tmp_path, built_classifier):
    section = {"model": {"name": built_classifier.manifest.name,
                         "repository": str(built_classifier.path.parent.parent)},
               "max_items": TEXTS,  # the start-up check: one request's most texts must fit the queue
               "batch": {"workers": 1, "max_batch_size": MAX_BATCH, "queue_capacity": QUEUE_CAPACITY}}
    with ServeProcess("sentiment", section, tmp_path, service_name=SERVICE) as server:
        r = asyncio.run(scenario(server))
        served_codes = Counter(code for code, _ in r["outcomes"])
        assert server.proc.poll() is None
    admitted = [t for code, t in r["outcomes"] if code == grpc.StatusCode.OK]
    shed = [t for code, t in r["outcomes"] if code == grpc.StatusCode.RESOURCE_EXHAUSTED]
    total = len(r["outcomes"])
    summary = (f"capacity {r['capacity']:.0f} req/s; offered {10 * r['capacity']:.0f} req/s, achieved "
               f"{r['achieved']:.0f} req/s for {OVERLOAD_S:.0f} s ({total} calls): {dict((c.name, n) for c, n in served_codes.items())}; "
               f"shed rate {len(shed) / total:.1%}; admitted p50/p99 {p50(admitted) * 1000:.0f}/{p99(admitted) * 1000:.0f} ms, "
               f"shed p50/p99 {p50(shed) * 1000:.0f}/{p99(shed) * 1000:.0f} ms (client side); admitted p50/p99 on the server "
               f"{p50(r['server_total']) * 1000:.0f}/{p99(r['server_total']) * 1000:.0f} ms; call right after: {r['after_code'].name} in {r['after_latency'] * 1000:.0f} ms; "
               f"RSS after warm-up {r['rss_warm'] / 1024:.1f} MiB, after {r['sent']} requests {r['rss_end'] / 1024:.1f} MiB")
    print("\noverload: " + summary)
    assert r["alive"] and r["after_code"] == grpc.StatusCode.OK, summary
    assert set(served_codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                 grpc.StatusCode.DEADLINE_EXCEEDED}, summary
    assert shed, summary  # the excess was shed...
    assert served_codes[grpc.StatusCode.DEADLINE_EXCEEDED] <= 0.05 * total, summary  # ...up front, not by timing out
    # Admitted calls wait at most a full queue: QUEUE_CAPACITY texts at the measured rate (x4 for noise, +1 s),
    # as the server measures it (the client's own figure also holds its event loop's lag under this load).
    assert p99(r["server_total"]) <= 4 * QUEUE_CAPACITY / (TEXTS * r["capacity"]) + 1.0, summary
    assert p99(shed) < DEADLINE_S, summary
    assert r["rss_end"] - r["rss_warm"] <= RSS_MARGIN_KB, summary
