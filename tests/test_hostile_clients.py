"""What real clients do to a server that the happy path never shows: the largest requests the limits allow
while health probes fire, streams whose reader stops reading, cancel storms, HTTP/2 rapid resets.

Real servers on loopback with a tiny real ONNX classifier (tests/conftest.py)."""
from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nlpsuite.services.sentiment.service import SentimentService
from nlpsuite.v1 import sentiment_pb2, sentiment_pb2_grpc
from tests.servers import ServerThread
from tests.test_sentiment_service import settings_for

WORDS = "shares of the company rose sharply after results beat expectations while rivals fell on weak demand".split()


def long_text(chars: int, seed: int) -> str:
    rng = random.Random(seed)
    out, size = [], 0
    while size < chars:
        word = rng.choice(WORDS)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)[:chars].rstrip()


class HealthProbe:
    """Checks health every `every_s` with a 1 s deadline (the kubelet's default probe timeout), recording latency."""

    def __init__(self, target: str, every_s: float = 0.05) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = health_pb2_grpc.HealthStub(self.channel)
        self.every_s = every_s
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                status = self.stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status
                if status != health_pb2.HealthCheckResponse.SERVING:
                    self.failures.append(f"status {status}")
            except grpc.RpcError as exc:
                self.failures.append(exc.code().name)
            self.latencies.append(time.perf_counter() - started)
            self._stop.wait(self.every_s)

    def __enter__(self) -> "HealthProbe":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.channel.close()


def test_health_answers_within_a_second_while_the_largest_requests_run(built_classifier):
    """Four concurrent Analyze requests of 200 texts x 20,000 characters (just under the 4 MiB message limit).
    Before the fix each whole text was tokenized on the event loop (~7,000 tokens to keep 128) and the watchlist
    matched on it there too: health stalled 1.8-5 s."""
    settings = settings_for(built_classifier, max_items=200, max_text_chars=20_000)
    texts = [long_text(20_000, seed) for seed in range(200)]
    request = sentiment_pb2.AnalyzeRequest(texts=texts)
    assert request.ByteSize() <= settings.max_message_bytes
    with ServerThread(SentimentService(settings)).start() as server:
        channel = grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", 8 << 20),
                                                                ("grpc.max_receive_message_length", 8 << 20)])
        stub = sentiment_pb2_grpc.SentimentServiceStub(channel)
        with HealthProbe(server.target) as probe, ThreadPoolExecutor(4) as pool:
            time.sleep(0.3)
            replies = list(pool.map(lambda _: stub.Analyze(request, timeout=120), range(4)))
            time.sleep(0.3)
        channel.close()
    assert all(len(r.results) == 200 and all(x.truncated for x in r.results) for r in replies)
    worst = max(probe.latencies)
    print(f"health probes: {len(probe.latencies)}, worst {worst * 1000:.0f} ms, failed: {probe.failures}")
    assert probe.failures == [] and len(probe.latencies) >= 10
    assert worst < 1.0, f"a health check took {worst:.2f} s behind the large requests"


def stream_items_done(service: SentimentService) -> float:
    return sum(s.value for m in service.metrics.requests.collect() for s in m.samples
               if s.name.endswith("_total") and s.labels["method"] == "AnalyzeStream.item")


def test_a_stream_whose_client_stops_reading_stops_being_scored(built_classifier):
    """A client sends 20,000 items with 4 KiB request ids and reads nothing for 4 s. Before the fix the server
    kept scoring (8,578-8,901 done unread in 10 s) and held every reply. Now it holds at most `stream_window`
    items plus what the transport buffers, and every reply still arrives, in full, once the client reads.
    The client turns off gRPC's BDP probing so its HTTP/2 receive window stays at 64 KiB: what the transport may
    take is then known (with probing on, the window grows to megabytes, held in the client, not the server)."""
    settings = settings_for(built_classifier)
    service = SentimentService(settings)
    total, pad = 20_000, "r" * 4096
    with ServerThread(service).start() as server:
        channel = grpc.insecure_channel(server.target, options=[("grpc.http2.bdp_probe", 0)])
        stub = sentiment_pb2_grpc.SentimentServiceStub(channel)
        items = (sentiment_pb2.AnalyzeStreamRequest(request_id=f"{i}-{pad}", text=f"shares fell {i}")
                 for i in range(total))
        replies = stub.AnalyzeStream(items, timeout=300)
        time.sleep(4)
        unread = stream_items_done(service)
        time.sleep(2)
        still = stream_items_done(service)
        ids = {r.request_id.split("-")[0] for r in replies if not r.error}
        channel.close()
    print(f"scored while unread: {unread:.0f} after 4 s, {still:.0f} after 6 s (window {settings.stream_window})")
    assert ids == {str(i) for i in range(total)}
    assert still == unread, "the server went on scoring for a client that reads nothing"
    # The window, plus the replies (~4.2 KiB each) that fit the client's 64 KiB flow-control window, plus slack.
    assert unread <= settings.stream_window + 16 + 16, unread
