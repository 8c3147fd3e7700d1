"""Benchmark (not a test): SentimentService under 32 concurrent clients vs the bare ONNX Runtime limit.

Run in one process tree: this script measures the bare runtime in-process (the same int8 model on the same
texts at the best batch size), then starts `nlpsuite serve sentiment` as a child process and drives it with
N concurrent grpc.aio clients, each sending one ~32-token text per request, and finally measures p50/p99 at
concurrency 1. Prints a JSON summary as the last line.

    python benchmarks/serve_sentiment.py --repository /tmp/serve-models --model sentiment
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from nlpsuite.shared.model import open_model
from nlpsuite.shared.model_repo import ModelRepository
from nlpsuite.v1 import sentiment_pb2, sentiment_pb2_grpc

WORDS = ("shares profit revenue quarter guidance investors market rose fell sharply after the company reported "
         "earnings beat estimates analysts expect growth margins costs outlook dividend bank energy retail sales "
         "demand supply chain pressure rally slump forecast").split()


def make_texts(encoder, n: int, tokens: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = []
    while len(texts) < n:
        words = [rng.choice(WORDS) for _ in range(tokens - 4)]
        text = " ".join(words)
        while len(encoder.token_ids([text])[0]) > tokens:
            words.pop()
            text = " ".join(words)
        while len(encoder.token_ids([text])[0]) < tokens:
            words.append(rng.choice(WORDS))
            text = " ".join(words)
            if len(encoder.token_ids([text])[0]) > tokens:
                words.pop()
                text = " ".join(words)
                break
        texts.append(text)
    return texts


def bare_limit(version, texts: list[str], threads: int, seconds: float) -> tuple[float, int, dict]:
    """Texts/s of the bare runtime at each batch size (tokenize + pad + run, like the server); the best."""
    model = open_model(version, variant="int8", intra_threads=threads)
    results = {}
    for batch in (1, 8, 16, 32, 64):
        chunks = [texts[i : i + batch] for i in range(0, len(texts) - batch + 1, batch)]
        for chunk in chunks[:2]:
            model.predict(chunk)
        done, started, i = 0, time.perf_counter(), 0
        while time.perf_counter() - started < seconds:
            model.predict(chunks[i % len(chunks)])
            done += len(chunks[i % len(chunks)])
            i += 1
        results[batch] = done / (time.perf_counter() - started)
    best = max(results, key=results.get)
    return results[best], best, results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_serving(target: str, timeout: float = 120) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service="nlpsuite.v1.SentimentService"),
                                         timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("server did not become SERVING")


async def load(target: str, texts: list[str], clients: int, seconds: float, warmup: float) -> tuple[float, list]:
    """Closed loop: each client sends one text, waits for the answer, sends the next."""
    channels = [grpc.aio.insecure_channel(target) for _ in range(min(clients, 8))]
    stubs = [sentiment_pb2_grpc.SentimentServiceStub(c) for c in channels]
    counts = [0] * clients
    latencies: list[float] = []
    measuring = False
    stop_at = time.monotonic() + warmup + seconds

    async def client(k: int) -> None:
        nonlocal measuring
        stub = stubs[k % len(stubs)]
        i = k
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            await stub.Analyze(sentiment_pb2.AnalyzeRequest(texts=[texts[i % len(texts)]]), timeout=30)
            if measuring:
                counts[k] += 1
                latencies.append(time.perf_counter() - t0)
            i += clients

    async def clock() -> float:
        nonlocal measuring
        await asyncio.sleep(warmup)
        measuring = True
        started = time.perf_counter()
        await asyncio.sleep(seconds)
        measuring = False
        return time.perf_counter() - started

    clock_task = asyncio.create_task(clock())
    await asyncio.gather(*(client(k) for k in range(clients)))
    elapsed = await clock_task
    for c in channels:
        await c.close()
    return sum(counts) / elapsed, latencies


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, default=Path("models"))
    p.add_argument("--model", default="sentiment")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--bare-threads", type=int, default=2, help="ONNX Runtime threads for the bare limit")
    p.add_argument("--workers", type=int, default=2, help="server: concurrent batches")
    p.add_argument("--threads", type=int, default=1, help="server: ONNX Runtime threads per batch")
    p.add_argument("--max-delay-ms", type=float, default=2.0)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--latency-requests", type=int, default=300)
    args = p.parse_args()

    version = ModelRepository(args.repository).resolve(args.model)
    encoder = open_model(version, variant="int8").encoder
    texts = make_texts(encoder, 512, args.tokens)
    lengths = [len(ids) for ids in encoder.token_ids(texts)]
    print(f"model {version.manifest.name} v{version.manifest.version} int8; {len(texts)} texts of "
          f"{min(lengths)}-{max(lengths)} tokens", flush=True)

    limit, best_batch, per_batch = bare_limit(version, texts, args.bare_threads, args.seconds / 3)
    print("bare runtime texts/s by batch size: " + ", ".join(f"{b}: {v:.0f}" for b, v in per_batch.items()), flush=True)

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "bench.yaml"
        cfg.write_text(
            f"log_level: WARNING\nsentiment:\n  host: 127.0.0.1\n  port: {port}\n  max_items: 64\n"
            f"  model:\n    name: {args.model}\n    repository: {args.repository.resolve()}\n    variant: int8\n"
            f"    intra_threads: {args.threads}\n"
            f"  batch:\n    workers: {args.workers}\n    max_batch_size: {args.max_batch_size}\n"
            f"    max_delay_ms: {args.max_delay_ms}\n    queue_capacity: 4096\n")
        server = subprocess.Popen([sys.executable, "-m", "nlpsuite.cli", "serve", "sentiment", "--config", str(cfg)],
                                  env={**os.environ})
        try:
            target = f"127.0.0.1:{port}"
            asyncio.run(wait_serving(target))
            served, _ = asyncio.run(load(target, texts, args.clients, args.seconds, warmup=2.0))
            _, lat = asyncio.run(_sequential(target, texts, args.latency_requests))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
    lat_ms = np.array(lat) * 1000
    summary = {
        "clients": args.clients, "tokens": args.tokens,
        "served_texts_per_s": round(served, 1),
        "bare_limit_texts_per_s": round(limit, 1), "bare_best_batch": best_batch,
        "ratio": round(served / limit, 3),
        "p50_ms_c1": round(float(np.percentile(lat_ms, 50)), 2),
        "p99_ms_c1": round(float(np.percentile(lat_ms, 99)), 2),
        "server": {"workers": args.workers, "intra_threads": args.threads, "max_delay_ms": args.max_delay_ms,
                   "max_batch_size": args.max_batch_size},
    }
    print(f"served {served:.0f} texts/s with {args.clients} clients = {summary['ratio']:.3f} of the bare limit "
          f"{limit:.0f} texts/s (batch {best_batch}); concurrency 1: p50 {summary['p50_ms_c1']} ms, "
          f"p99 {summary['p99_ms_c1']} ms")
    print(json.dumps(summary))
    return 0


async def _sequential(target: str, texts: list[str], n: int) -> tuple[float, list[float]]:
    latencies = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = sentiment_pb2_grpc.SentimentServiceStub(channel)
        for i in range(20):
            await stub.Analyze(sentiment_pb2.AnalyzeRequest(texts=[texts[i]]), timeout=30)
        for i in range(n):
            t0 = time.perf_counter()
            await stub.Analyze(sentiment_pb2.AnalyzeRequest(texts=[texts[i % len(texts)]]), timeout=30)
            latencies.append(time.perf_counter() - t0)
    return 0.0, latencies


if __name__ == "__main__":
    sys.exit(main())
