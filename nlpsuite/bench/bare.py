"""The bare-runtime limit: the served ONNX model called in-process with ONNX Runtime, no server.

Run as a child process (`python -m nlpsuite.bench.bare SPEC OUT`) so its CPU time and peak memory are its own.
Throughput is tokenize + pad + run on fixed batches of the load texts, for every batch size and thread
layout (ORT threads per run x concurrent runs; ORT releases the GIL); the best point is the limit.
Single-text latency is one probe text per call, one call at a time.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from pydantic import BaseModel

from nlpsuite.bench.gemm import GemmLimit, measure, with_bare
from nlpsuite.bench.procs import batches_of, measure_rate, peak_rss_mb
from nlpsuite.bench.stats import Latency
from nlpsuite.shared.model import LoadedModel, open_model
from nlpsuite.shared.model_repo import ModelRepository


class BareSpec(BaseModel):
    repository: Path
    model: str
    version: str | None = None
    provider: str = "auto"
    texts: list[str]
    probe: list[str]
    batches: list[int]
    layouts: list[tuple[int, int]]  # (ORT intra-op threads, concurrent runs)
    seconds: float
    latency_threads: list[int] = []  # empty: no single-text latency
    latency_requests: int = 200
    gemm_seconds: float = 0.0  # per GEMM shape, for the GEMM-only limit at the best point (0: not measured)


class BarePoint(BaseModel):
    batch: int
    threads: int
    concurrent: int
    texts_per_s: float
    cpu_cores: float  # CPU time / wall time while measuring
    padding_waste: float  # 1 - real tokens / padded tokens over the batches run


class BareResult(BaseModel):
    provider: str
    variant: str
    points: list[BarePoint]
    best: BarePoint
    single_text: dict[int, Latency]  # by ORT threads
    peak_rss_mb: float
    gemm: GemmLimit | None = None  # the GEMM-only limit at the best point (CPU only)


def padding_waste(model: LoadedModel, chunks: list[list[str]]) -> float:
    limit = model.encoder.max_length
    real = padded = 0
    for chunk in chunks:
        lengths = [min(len(ids), limit) for ids in model.encoder.token_ids(chunk)]
        real += sum(lengths)
        padded += max(lengths) * len(lengths)
    return 1 - real / padded


def mean_tokens(model: LoadedModel, texts: list[str]) -> float:
    """Real tokens per text, as the model truncates them."""
    limit = model.encoder.max_length
    return sum(min(len(ids), limit) for ids in model.encoder.token_ids(texts)) / len(texts)


def single_text_latency(model: LoadedModel, texts: list[str], requests: int) -> Latency:
    for text in texts[:10]:
        model.predict([text])
    samples = []
    for i in range(requests):
        t0 = time.perf_counter()
        model.predict([texts[i % len(texts)]])
        samples.append(time.perf_counter() - t0)
    return Latency.of(samples)


def run(spec: BareSpec) -> BareResult:
    version = ModelRepository(spec.repository).resolve(spec.model, spec.version)
    points: list[BarePoint] = []
    single: dict[int, Latency] = {}
    provider = variant = ""
    for threads, concurrent in spec.layouts:
        model = open_model(version, provider=spec.provider, intra_threads=threads)
        provider, variant = model.provider, model.variant
        for batch in spec.batches:
            rate, cpu = measure_rate(model.predict, spec.texts, batch, spec.seconds, concurrent)
            points.append(BarePoint(batch=batch, threads=threads, concurrent=concurrent, texts_per_s=round(rate, 2),
                                    cpu_cores=round(cpu, 3),
                                    padding_waste=round(padding_waste(model, batches_of(spec.texts, batch)), 4)))
            print(f"bare {variant}/{provider} batch {batch:3d} x {threads} threads x {concurrent} runs: "
                  f"{rate:8.1f} texts/s", flush=True)
    for threads in spec.latency_threads:
        model = open_model(version, provider=spec.provider, intra_threads=threads)
        single[threads] = single_text_latency(model, spec.probe, spec.latency_requests)
        print(f"bare single text, {threads} threads: p50 {single[threads].p50_ms:.2f} ms", flush=True)
    best = max(points, key=lambda p: p.texts_per_s)
    limit = None
    if spec.gemm_seconds > 0 and provider == "CPUExecutionProvider":
        tokens = round(mean_tokens(model, spec.texts))
        limit = with_bare(measure(version.variant_path(variant), variant, best.batch, tokens, best.threads,
                                  best.concurrent, spec.gemm_seconds), best.texts_per_s)
        print(f"GEMM-only limit ({variant}, batch {best.batch} x {tokens} tokens): {limit.limit_texts_per_s:.1f} "
              f"texts/s; bare reaches {limit.fraction_of_limit:.0%} of it; GEMM share {limit.gemm_share:.0%}",
              flush=True)
    return BareResult(provider=provider, variant=variant, points=points, best=best, single_text=single,
                      peak_rss_mb=round(peak_rss_mb(), 1), gemm=limit)


def main(argv: list[str]) -> int:
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # GPU providers failing to load on a CPU-only host is expected
    spec = BareSpec.model_validate_json(Path(argv[0]).read_text())
    Path(argv[1]).write_text(run(spec).model_dump_json(indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
