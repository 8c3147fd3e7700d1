"""The PyTorch peer server: the same fine-tuned model behind a plain synchronous gRPC SentimentService.

`python -m nlpsuite.bench.peers SPEC` serves Analyze (label, confidence, scores; no topics or entities) with
gRPC health, and Prometheus batch metrics under the same names as our services, so one load generator
measures every server the same way. Two modes, as teams write them:

- per-request: each RPC runs its own texts through the model on a gRPC handler thread (`workers` threads);
- batched: handlers queue their texts; `workers` runner threads each take the oldest request, gather others
  for up to `max_delay_ms` or `max_batch_size` texts, pad to the longest and make one model call.
"""
from __future__ import annotations

import queue
import signal
import sys
import threading
import time
from concurrent import futures
from concurrent.futures import Future
from pathlib import Path
from typing import Literal

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic import BaseModel

from nlpsuite.bench.torch_models import TorchClassifier, torch_device
from nlpsuite.shared.metrics import Metrics
from nlpsuite.v1 import common_pb2, sentiment_pb2, sentiment_pb2_grpc

SERVICE_NAME = sentiment_pb2.DESCRIPTOR.services_by_name["SentimentService"].full_name
HANDLER_THREADS_BATCHED = 512  # handlers only wait on the runner, so they must not cap concurrency


class PeerSpec(BaseModel):
    checkpoint: Path
    max_length: int
    model_name: str
    model_version: str
    setting: str
    mode: Literal["per-request", "batched"]
    threads: int  # torch intra-op threads per model call
    workers: int  # concurrent model calls
    max_batch_size: int = 32
    max_delay_ms: float = 2.0
    port: int
    metrics_port: int


class _Batcher:
    """A plain micro-batcher: requests in a queue, runner threads make one model call per gathered batch."""

    def __init__(self, run, spec: PeerSpec) -> None:
        self.run = run
        self.max_batch_size = spec.max_batch_size
        self.max_delay = spec.max_delay_ms / 1000
        self.queue: queue.Queue[tuple[list[str], Future]] = queue.Queue()
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(spec.workers)]
        for t in self.threads:
            t.start()

    def submit(self, texts: list[str]) -> np.ndarray:
        future: Future = Future()
        self.queue.put((texts, future))
        return future.result()

    def _loop(self) -> None:
        while True:
            batch = [self.queue.get()]
            size = len(batch[0][0])
            until = time.monotonic() + self.max_delay
            while size < self.max_batch_size:
                left = until - time.monotonic()
                if left <= 0:
                    break
                try:
                    item = self.queue.get(timeout=left)
                except queue.Empty:
                    break
                batch.append(item)
                size += len(item[0])
            try:
                probs = self.run([t for texts, _ in batch for t in texts])
            except Exception as exc:  # noqa: BLE001 - fail the waiting requests, keep the runner alive
                for _, future in batch:
                    future.set_exception(exc)
                continue
            start = 0
            for texts, future in batch:
                future.set_result(probs[start : start + len(texts)])
                start += len(texts)


class PeerSentiment(sentiment_pb2_grpc.SentimentServiceServicer):
    def __init__(self, spec: PeerSpec) -> None:
        self.spec = spec
        device = torch_device()
        self.model = TorchClassifier(spec.checkpoint, spec.setting, spec.max_length, device, spec.threads)
        self.metrics = Metrics("peer")
        self.info = common_pb2.ModelInfo(name=spec.model_name, version=spec.model_version,
                                         variant=f"torch-{spec.setting}", provider=f"torch-{device}")
        for _ in range(3):  # warm-up, as a careful team does before taking traffic
            self.model.predict(["warm up", "a somewhat longer sentence to warm up the model with more tokens"])
        self.batcher = _Batcher(self._run, spec) if spec.mode == "batched" else None

    def _run(self, texts: list[str]) -> np.ndarray:
        probs, padded = self.model.predict(texts)
        self.metrics.batch_size.labels("peer", self.spec.model_name).observe(len(texts))
        self.metrics.batch_tokens.labels("peer", self.spec.model_name).observe(padded)
        return probs

    def Analyze(self, request: sentiment_pb2.AnalyzeRequest, context) -> sentiment_pb2.AnalyzeResponse:
        texts = list(request.texts)
        if not texts:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "texts is empty")
        probs = self.batcher.submit(texts) if self.batcher is not None else self._run(texts)
        labels = self.model.labels
        results = []
        for p in probs:
            best = int(np.argmax(p))
            results.append(sentiment_pb2.SentimentResult(
                label=labels[best], confidence=float(p[best]),
                scores=[common_pb2.LabelScore(label=label, score=float(s)) for label, s in zip(labels, p)]))
        return sentiment_pb2.AnalyzeResponse(results=results, model=self.info)


def serve(spec: PeerSpec) -> None:
    servicer = PeerSentiment(spec)
    handlers = spec.workers if spec.mode == "per-request" else HANDLER_THREADS_BATCHED
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=handlers))
    sentiment_pb2_grpc.add_SentimentServiceServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    servicer.metrics.serve(spec.metrics_port, host="127.0.0.1")
    server.add_insecure_port(f"127.0.0.1:{spec.port}")
    server.start()
    health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    stopped.wait()
    server.stop(grace=2).wait()


def main(argv: list[str]) -> int:
    serve(PeerSpec.model_validate_json(Path(argv[0]).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
