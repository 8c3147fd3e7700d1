"""Benchmark (not a test): interactive latency while a bulk client saturates the sentiment service, with and
without priority lanes.

One `nlpsuite serve sentiment` process (default settings) and three phases, interleaved over --rounds rounds:

- **alone**: 8 interactive clients, one ~32-token text per call, each sending the next call when its answer comes;
- **lanes**: the same 8 clients while a bulk client keeps 4 calls of 32 medium texts in flight, sending
  `x-nlpsuite-priority: bulk` (what the news monitor sends);
- **no lanes**: the same, the bulk client sending no priority: every text shares one FIFO queue, as before lanes.

Per phase: the interactive p50/p99 (client-measured) and the bulk texts/s. The target: interactive p99 under bulk
load within 2x of its p99 alone, and bulk still completing work.

    python benchmarks/priority_lanes.py --repository models --data-dir ../shared/data [--rounds 3] [--seconds 8]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nlpsuite.bench.stats import Latency  # noqa: E402
from nlpsuite.bench.texts import make_textset  # noqa: E402
from nlpsuite.shared.host import isa  # noqa: E402
from nlpsuite.shared.local_run import ServeProcess  # noqa: E402
from nlpsuite.shared.model_repo import ModelRepository  # noqa: E402
from nlpsuite.shared.priority import priority_metadata  # noqa: E402
from nlpsuite.v1 import sentiment_pb2, sentiment_pb2_grpc  # noqa: E402

INTERACTIVE_CLIENTS = 8
BULK_CALLS = 4  # in flight at once
BULK_TEXTS = 32  # per call
PHASES = ("alone", "lanes", "no lanes")


async def phase(target: str, name: str, probe: list[str], bulk_texts: list[str], seconds: float
                ) -> tuple[Latency, float]:
    """(interactive latency, bulk texts/s) over `seconds` after a 1 s warm-up."""
    stop_at = time.monotonic() + 1.0 + seconds
    measure_from = time.monotonic() + 1.0
    latencies: list[float] = []
    bulk_done = 0
    metadata = [priority_metadata("bulk")] if name == "lanes" else None
    async with grpc.aio.insecure_channel(target) as interactive_ch, grpc.aio.insecure_channel(target) as bulk_ch:
        interactive = sentiment_pb2_grpc.SentimentServiceStub(interactive_ch)
        bulk = sentiment_pb2_grpc.SentimentServiceStub(bulk_ch)

        async def person(k: int) -> None:
            i = k
            while time.monotonic() < stop_at:
                measured = time.monotonic() >= measure_from
                t0 = time.perf_counter()
                await interactive.Analyze(sentiment_pb2.AnalyzeRequest(texts=[probe[i % len(probe)]]), timeout=120)
                if measured:
                    latencies.append(time.perf_counter() - t0)
                i += INTERACTIVE_CLIENTS

        async def backfill(k: int) -> None:
            nonlocal bulk_done
            i = k * BULK_TEXTS
            while time.monotonic() < stop_at:
                texts = [bulk_texts[(i + j) % len(bulk_texts)] for j in range(BULK_TEXTS)]
                await bulk.Analyze(sentiment_pb2.AnalyzeRequest(texts=texts), timeout=120, metadata=metadata)
                if time.monotonic() >= measure_from:
                    bulk_done += len(texts)
                i += BULK_CALLS * BULK_TEXTS

        tasks = [person(k) for k in range(INTERACTIVE_CLIENTS)]
        if name != "alone":
            tasks += [backfill(k) for k in range(BULK_CALLS)]
        await asyncio.gather(*tasks)
    return Latency.of(latencies), bulk_done / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model", default="sentiment")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()

    version = ModelRepository(args.repository).resolve(args.model)
    texts = make_textset(args.data_dir, version.tokenizer_path, "medium", 512, 64)
    logs = Path(tempfile.mkdtemp(prefix="priority-lanes-"))
    child = ServeProcess("sentiment", {"model": {"name": args.model, "repository": str(args.repository.resolve())}},
                         logs, service_name="nlpsuite.v1.SentimentService", log_level="WARNING")
    results: dict[str, list[tuple[Latency, float]]] = {name: [] for name in PHASES}
    try:
        target = child.start().target
        for r in range(args.rounds):
            for name in PHASES:
                lat, bulk = asyncio.run(phase(target, name, texts.probe, texts.texts, args.seconds))
                results[name].append((lat, bulk))
                print(f"round {r + 1} {name:8s}: interactive p50 {lat.p50_ms:7.1f} ms, p99 {lat.p99_ms:7.1f} ms "
                      f"({lat.n} calls); bulk {bulk:6.1f} texts/s", flush=True)
    finally:
        child.stop()

    label = isa()
    print(f"\nmedians over {args.rounds} interleaved rounds [{label}]; interactive: {INTERACTIVE_CLIENTS} clients, one "
          f"~32-token text per call; bulk: {BULK_CALLS} calls of {BULK_TEXTS} medium texts in flight")
    print("| phase | interactive p50 ms | interactive p99 ms | p99 vs alone | bulk texts/s |")
    print("|---|---:|---:|---:|---:|")
    alone_p99 = statistics.median(lat.p99_ms for lat, _ in results["alone"])
    for name in PHASES:
        p50 = statistics.median(lat.p50_ms for lat, _ in results[name])
        p99 = statistics.median(lat.p99_ms for lat, _ in results[name])
        bulk = statistics.median(b for _, b in results[name])
        print(f"| {name} | {p50:.1f} | {p99:.1f} | {p99 / alone_p99:.2f}x | {bulk:.1f} |")
    lanes_p99 = statistics.median(lat.p99_ms for lat, _ in results["lanes"])
    lanes_bulk = statistics.median(b for _, b in results["lanes"])
    ok = lanes_p99 <= 2 * alone_p99 and lanes_bulk > 0
    print(f"\n[{'PASS' if ok else 'FAIL'}] with lanes, interactive p99 {lanes_p99:.1f} ms <= 2 x {alone_p99:.1f} ms "
          f"alone, and bulk completes {lanes_bulk:.1f} texts/s [{label}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
