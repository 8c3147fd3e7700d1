"""Closed-loop gRPC load generator, run as its own process: `python -m nlpsuite.bench.load SPEC OUT`.

At each concurrency level, N grpc.aio clients each send one text per Analyze request and send the next as
soon as the answer arrives. After a warm-up, a measuring window counts completed requests and their latencies,
and samples the server around it: its CPU time (/proc/<pid>/stat) and its Prometheus batch histograms (mean
batch size, padded tokens). Then a concurrency-1 probe measures latency on ~32-token texts.
"""
from __future__ import annotations

import asyncio
import os
import sys
import time
import urllib.request
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from nlpsuite.bench.procs import cpu_seconds
from nlpsuite.bench.stats import Latency
from nlpsuite.v1 import sentiment_pb2, sentiment_pb2_grpc

MAX_CHANNELS = 8
REQUEST_TIMEOUT_S = 120.0


class LoadSpec(BaseModel):
    target: str
    server_pid: int
    metrics_url: str
    texts: list[str]
    mean_tokens: float  # of the texts: real tokens per text, for the padding estimate
    levels: list[int]
    warmup_s: float
    seconds: float
    probe: list[str] = []
    probe_requests: int = 0


class Level(BaseModel):
    concurrency: int
    texts_per_s: float
    latency: Latency
    errors: int
    mean_batch_size: float | None  # None: no batch completed in the window
    padding_waste: float | None  # 1 - real tokens / padded tokens (real tokens estimated from the texts' mean)
    server_cpu_cores: float
    client_cpu_cores: float


class LoadResult(BaseModel):
    levels: list[Level]
    probe: Latency | None = None


def scrape(url: str) -> dict[str, float]:
    """Sums of the batch histograms: batches, texts and padded tokens so far."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    totals = {"batches": 0.0, "texts": 0.0, "padded_tokens": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "nlpsuite_batch_size_count":
                totals["batches"] += sample.value
            elif sample.name == "nlpsuite_batch_size_sum":
                totals["texts"] += sample.value
            elif sample.name == "nlpsuite_batch_tokens_sum":
                totals["padded_tokens"] += sample.value
    return totals


async def run_level(spec: LoadSpec, clients: int) -> Level:
    channels = [grpc.aio.insecure_channel(spec.target) for _ in range(min(clients, MAX_CHANNELS))]
    stubs = [sentiment_pb2_grpc.SentimentServiceStub(c) for c in channels]
    latencies: list[float] = []
    errors = 0
    measuring = False
    stop_at = time.monotonic() + spec.warmup_s + spec.seconds

    async def client(k: int) -> None:
        nonlocal errors
        stub = stubs[k % len(stubs)]
        i = k
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            try:
                await stub.Analyze(sentiment_pb2.AnalyzeRequest(texts=[spec.texts[i % len(spec.texts)]]),
                                   timeout=REQUEST_TIMEOUT_S)
                ok = True
            except grpc.aio.AioRpcError:
                ok = False
            if measuring:
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1
            i += clients

    async def clock() -> tuple[float, dict[str, float], dict[str, float], float, float]:
        nonlocal measuring
        await asyncio.sleep(spec.warmup_s)
        before = scrape(spec.metrics_url)
        server0, client0, t0 = cpu_seconds(spec.server_pid), cpu_seconds(os.getpid()), time.perf_counter()
        measuring = True
        await asyncio.sleep(spec.seconds)
        measuring = False
        wall = time.perf_counter() - t0
        server_cpu = (cpu_seconds(spec.server_pid) - server0) / wall
        client_cpu = (cpu_seconds(os.getpid()) - client0) / wall
        return wall, before, scrape(spec.metrics_url), server_cpu, client_cpu

    clock_task = asyncio.create_task(clock())
    await asyncio.gather(*(client(k) for k in range(clients)))
    wall, before, after, server_cpu, client_cpu = await clock_task
    for channel in channels:
        await channel.close()
    batches = after["batches"] - before["batches"]
    texts = after["texts"] - before["texts"]
    padded = after["padded_tokens"] - before["padded_tokens"]
    return Level(
        concurrency=clients, texts_per_s=round(len(latencies) / wall, 2), latency=Latency.of(latencies),
        errors=errors, mean_batch_size=round(texts / batches, 2) if batches else None,
        padding_waste=round(1 - texts * spec.mean_tokens / padded, 4) if padded else None,
        server_cpu_cores=round(server_cpu, 3), client_cpu_cores=round(client_cpu, 3))


async def probe(spec: LoadSpec) -> Latency:
    async with grpc.aio.insecure_channel(spec.target) as channel:
        stub = sentiment_pb2_grpc.SentimentServiceStub(channel)
        for text in spec.probe[:20]:
            await stub.Analyze(sentiment_pb2.AnalyzeRequest(texts=[text]), timeout=REQUEST_TIMEOUT_S)
        samples = []
        for i in range(spec.probe_requests):
            t0 = time.perf_counter()
            await stub.Analyze(sentiment_pb2.AnalyzeRequest(texts=[spec.probe[i % len(spec.probe)]]),
                               timeout=REQUEST_TIMEOUT_S)
            samples.append(time.perf_counter() - t0)
    return Latency.of(samples)


async def run(spec: LoadSpec) -> LoadResult:
    levels = []
    for clients in spec.levels:
        level = await run_level(spec, clients)
        levels.append(level)
        print(f"{spec.target} c={clients:3d}: {level.texts_per_s:8.1f} texts/s, p50 {level.latency.p50_ms} ms, "
              f"p99 {level.latency.p99_ms} ms, batch {level.mean_batch_size}, errors {level.errors}", flush=True)
    latency = await probe(spec) if spec.probe and spec.probe_requests else None
    return LoadResult(levels=levels, probe=latency)


def main(argv: list[str]) -> int:
    spec = LoadSpec.model_validate_json(Path(argv[0]).read_text())
    Path(argv[1]).write_text(asyncio.run(run(spec)).model_dump_json(indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
