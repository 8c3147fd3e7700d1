"""The monitor's client of the sentiment service: one `Analyze` call per batch in the bulk lane, retried with
backoff while the service fails; a batch the service refuses (INVALID_ARGUMENT) is split to find the items it
refuses, so one bad item never holds up the others."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from nlpsuite.shared.security import open_channel
from nlpsuite.v1 import sentiment_pb2, sentiment_pb2_grpc

from .config import MonitorSettings
from .delivery import Backoff
from .metrics import MonitorMetrics
from .schema import ModelRef

log = logging.getLogger(__name__)

Wait = Callable[[float], None]  # back off this long before a retry (may raise to give the batch up)


@dataclass
class Scores:
    results: list  # per text, the service's SentimentResult, or None for a text it refused
    refused: dict[int, str] = field(default_factory=dict)  # text index -> the service's reason
    model: ModelRef | None = None
    elapsed: float = 0.0  # seconds in sentiment calls


class _Refused(Exception):
    pass


class SentimentCalls:
    def __init__(self, settings: MonitorSettings, metrics: MonitorMetrics) -> None:
        self.s = settings
        self.metrics = metrics
        # Reconnect quickly once the service is back (gRPC's default reconnect backoff grows to 120 s).
        options = [("grpc.initial_reconnect_backoff_ms", int(settings.retry_initial_s * 1000)),
                   ("grpc.min_reconnect_backoff_ms", int(settings.retry_initial_s * 1000)),
                   ("grpc.max_reconnect_backoff_ms", int(settings.retry_max_s * 1000))]
        self.channel = open_channel(settings.sentiment_target, settings.sentiment_tls, settings.sentiment_secret(),
                                    options=options, priority=settings.sentiment_priority)
        self.stub = sentiment_pb2_grpc.SentimentServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def start(self, texts: list[str], metadata=None):
        """Send the batch's call without waiting for it: the service works while the caller publishes."""
        return self.stub.Analyze.future(sentiment_pb2.AnalyzeRequest(texts=texts),
                                        timeout=self.s.sentiment_timeout_s, metadata=metadata)

    def finish(self, call, started: float, texts: list[str], wait: Wait) -> Scores:
        """The started call's scores, in `texts` order; retried (after `wait`) until the service answers."""
        try:
            try:
                resp = call.result()
                elapsed = time.perf_counter() - started
                self.metrics.sentiment_seconds.observe(elapsed)
            except grpc.RpcError as exc:
                self._failed(exc)  # raises _Refused for INVALID_ARGUMENT
                wait(self.s.retry_initial_s)
                resp, elapsed = self._call(texts, wait)
            return Scores(list(resp.results), model=_model(resp), elapsed=elapsed)
        except _Refused:
            pass
        scores = Scores([])
        for i, text in enumerate(texts):
            try:
                resp, elapsed = self._call([text], wait)
                scores.results.append(resp.results[0])
                scores.model, scores.elapsed = _model(resp), scores.elapsed + elapsed
            except _Refused as exc:
                scores.results.append(None)
                scores.refused[i] = str(exc)
        return scores

    def _failed(self, exc: grpc.RpcError) -> None:
        code = exc.code()
        self.metrics.sentiment_errors.labels(code.name if code else "UNKNOWN").inc()
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            raise _Refused(exc.details()) from None
        log.warning("sentiment call failed (%s: %s); retrying with backoff, nothing committed", code, exc.details())

    def _call(self, texts: list[str], wait: Wait):
        backoff = Backoff(self.s.retry_initial_s, self.s.retry_max_s)
        while True:
            t0 = time.perf_counter()
            try:
                resp = self.stub.Analyze(sentiment_pb2.AnalyzeRequest(texts=texts), timeout=self.s.sentiment_timeout_s)
                elapsed = time.perf_counter() - t0
                self.metrics.sentiment_seconds.observe(elapsed)
                return resp, elapsed
            except grpc.RpcError as exc:
                self._failed(exc)
                wait(backoff.next())


def _model(resp) -> ModelRef:
    m = resp.model
    return ModelRef(name=m.name, version=m.version, variant=m.variant, provider=m.provider)
