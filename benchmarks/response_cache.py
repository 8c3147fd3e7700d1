"""Benchmark (not a test): the response cache on a stream of headlines where syndicated ones repeat.

The stream: --stream texts drawn from --unique Financial PhraseBank sentences with Zipf-like weights (rank r has
weight 1 / r^--skew), so a few stories arrive many times and most once or twice, as with wire copy picked up by
many outlets. Two `nlpsuite serve sentiment` processes, cache off and cache on (--entries), serve the stream
in turn for --rounds interleaved rounds: --clients clients, one text per call, in stream order. Per round: texts/s
of each, and the hit ratio from the cached server's own metrics.

    python benchmarks/response_cache.py --repository models --data-dir ../shared/data [--rounds 3]
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import random
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nlpsuite.shared.host import isa  # noqa: E402
from nlpsuite.shared.local_run import ServeProcess  # noqa: E402
from nlpsuite.v1 import sentiment_pb2, sentiment_pb2_grpc  # noqa: E402


def stream_of(data_dir: Path, unique: int, length: int, skew: float, seed: int = 0) -> list[str]:
    with open(data_dir / "financial_phrasebank" / "train.csv", newline="") as handle:
        sentences = [row["sentence"] for row in csv.DictReader(handle)]
    rng = random.Random(seed)
    stories = rng.sample(sentences, unique)
    weights = [1 / (rank + 1) ** skew for rank in range(unique)]
    return rng.choices(stories, weights=weights, k=length)


def cache_counts(url: str) -> tuple[float, float]:
    body = urllib.request.urlopen(url, timeout=10).read().decode()
    found = {s.labels["result"]: s.value for f in text_string_to_metric_families(body) for s in f.samples
             if s.name == "nlpsuite_response_cache_total"}
    return found.get("hit", 0.0), found.get("miss", 0.0)


async def serve_stream(target: str, stream: list[str], clients: int) -> float:
    """Texts/s for the whole stream, `clients` calls in flight, one text each, in stream order."""
    position = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = sentiment_pb2_grpc.SentimentServiceStub(channel)

        async def client() -> None:
            nonlocal position
            while position < len(stream):
                text = stream[position]
                position += 1
                await stub.Analyze(sentiment_pb2.AnalyzeRequest(texts=[text]), timeout=120)

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return len(stream) / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model", default="sentiment")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--unique", type=int, default=1000, help="distinct headlines")
    parser.add_argument("--stream", type=int, default=3000, help="headlines in the stream")
    parser.add_argument("--skew", type=float, default=1.0, help="Zipf exponent of how often a story repeats")
    parser.add_argument("--entries", type=int, default=10_000, help="response_cache entries of the cached server")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    stream = stream_of(args.data_dir, args.unique, args.stream, args.skew)
    repeats = 1 - len(set(stream)) / len(stream)
    logs = Path(tempfile.mkdtemp(prefix="response-cache-"))
    servers = {}
    children = []
    try:
        for name, entries in (("off", 0), ("on", args.entries)):
            model = {"name": args.model, "repository": str(args.repository.resolve()), "response_cache": entries,
                     "reload_interval_s": 0}
            child = ServeProcess("sentiment", {"model": model}, logs, service_name="nlpsuite.v1.SentimentService",
                                 log_level="WARNING")
            children.append(child)
            child.start()
            servers[name] = (child.target, child.metrics_url)
        rates: dict[str, list[float]] = {"off": [], "on": []}
        ratios = []
        for r in range(args.rounds):
            # Each round the cached server starts from what earlier rounds left: a later round is a warm cache,
            # the first a cold one; both are reported.
            hits0, misses0 = cache_counts(servers["on"][1])
            for name in ("off", "on"):
                rates[name].append(asyncio.run(serve_stream(servers[name][0], stream, args.clients)))
            hits, misses = cache_counts(servers["on"][1])
            ratios.append((hits - hits0) / max(1.0, hits - hits0 + misses - misses0))
            print(f"round {r + 1}: cache off {rates['off'][-1]:.1f} texts/s, on {rates['on'][-1]:.1f} texts/s "
                  f"(hit ratio {ratios[-1]:.3f}, speed-up {rates['on'][-1] / rates['off'][-1]:.2f}x)", flush=True)
    finally:
        for child in children:
            child.stop()
    label = isa()
    first = rates["on"][0] / rates["off"][0]
    warm = statistics.median(on / off for on, off in zip(rates["on"][1:], rates["off"][1:])) if args.rounds > 1 \
        else None
    print(f"\nstream: {len(stream)} headlines, {len(set(stream))} distinct ({repeats:.1%} repeats), {args.clients} "
          f"clients, one text per call [{label}]")
    print(f"first pass (cache cold at the start): hit ratio {ratios[0]:.3f}, speed-up {first:.2f}x [{label}]")
    if warm is not None:
        print(f"later passes (cache warm): hit ratio {statistics.median(ratios[1:]):.3f}, speed-up {warm:.2f}x "
              f"(median of {args.rounds - 1}) [{label}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
