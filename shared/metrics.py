"""Prometheus metrics, one registry per server, exposed on their own HTTP port."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TOKEN_BUCKETS = (16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


class Metrics:
    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        self.requests = Counter("nlpsuite_requests", "RPCs by method and status code",
                                ["service", "method", "code"], registry=self.registry)
        self.latency = Histogram("nlpsuite_stage_seconds", "Latency by stage (tokenize, queue, inference, total)",
                                 ["service", "method", "stage"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("nlpsuite_batch_size", "Texts per model batch", ["service", "model"],
                                    buckets=_SIZE_BUCKETS, registry=self.registry)
        self.batch_tokens = Histogram("nlpsuite_batch_tokens", "Padded tokens per model batch",
                                      ["service", "model"], buckets=_TOKEN_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("nlpsuite_queue_depth", "Texts waiting in the batcher, by priority lane",
                                 ["service", "model", "lane"], registry=self.registry)
        self.texts_run = Counter("nlpsuite_texts_run", "Texts the model ran, by priority lane",
                                 ["service", "model", "lane"], registry=self.registry)
        self.response_cache = Counter("nlpsuite_response_cache", "Texts looked up in the response cache, by result "
                                      "(hit, miss)", ["service", "model", "result"], registry=self.registry)
        self.dropped_texts = Counter("nlpsuite_dropped_texts", "Texts taken out of the queue unrun: their call was "
                                     "cancelled (reason cancelled) or their deadline passed while queued (expired)",
                                     ["service", "model", "lane", "reason"], registry=self.registry)
        self.in_flight = Gauge("nlpsuite_in_flight", "Calls being handled now: unary calls from receipt to answer, "
                               "open streams", ["service", "method"], registry=self.registry)
        self.model_version = Gauge("nlpsuite_model_version_info", "1 for the model version serving now, by labels",
                                   ["service", "model", "version", "variant", "provider"], registry=self.registry)
        self.self_test_drift = Gauge("nlpsuite_model_self_test_drift", "Largest drift of a loaded version's golden "
                                     "texts from their reference, on the provider it got (probability or 1 - "
                                     "cosine); a version past its bound is refused",
                                     ["service", "model", "version", "variant", "provider"], registry=self.registry)
        self.model_reloads = Counter("nlpsuite_model_reloads", "Hot reloads by outcome (switched, refused)",
                                     ["service", "model", "outcome"], registry=self.registry)
        self._server = None
        self.port: int | None = None
        self._children: dict[tuple[str, str], tuple[Counter, dict[str, Histogram]]] = {}
        self._in_flight: dict[str, Gauge] = {}

    def in_flight_of(self, method: str) -> Gauge:
        gauge = self._in_flight.get(method)
        if gauge is None:
            gauge = self._in_flight[method] = self.in_flight.labels(self.service, method)
        return gauge

    def observe_request(self, method: str, code: str, stages_us: dict[str, int]) -> None:
        # labels() costs a lock and a dict lookup per call; every request observes five series, so keep them.
        children = self._children.get((method, code))
        if children is None:
            children = (self.requests.labels(self.service, method, code), {})
            self._children[(method, code)] = children
        counter, stages = children
        counter.inc()
        for stage, us in stages_us.items():
            histogram = stages.get(stage)
            if histogram is None:
                histogram = stages[stage] = self.latency.labels(self.service, method, stage)
            histogram.observe(us / 1e6)

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Start the /metrics HTTP endpoint (port 0: any free port); returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        self.port = server.server_port
        return self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
