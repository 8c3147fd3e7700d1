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
from nlpsuite.shared.local_run import ServerThread
from tests.support import metric, settings_for, wait_for

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


def test_a_cancel_storm_costs_no_inference_and_leaves_exact_metrics(built_classifier):
    """500 calls (within max_concurrent_streams on their one connection) queue behind one worker and are cancelled by
    their clients: their texts leave the queue unrun (counted as dropped), the gauges come back to zero, and the
    service answers the next call at once. Before the fix the queue-depth gauge stayed at hundreds after the
    cancelled texts had left the queue, and there was no in-flight gauge."""
    from nlpsuite.shared.config import BatchSettings

    service = SentimentService(settings_for(built_classifier, batch=BatchSettings(workers=1, max_batch_size=1,
                                                                                  queue_capacity=4096)))
    n = 500
    request = sentiment_pb2.AnalyzeRequest(texts=[long_text(600, 1)])  # the model's full 64 tokens: ~ms each
    analyze = dict(service="sentiment", method="Analyze")
    with ServerThread(service).start() as server:
        channel = grpc.insecure_channel(server.target)
        stub = sentiment_pb2_grpc.SentimentServiceStub(channel)
        before = metric(service, "nlpsuite_requests_total", **analyze)
        ran_before = metric(service, "nlpsuite_texts_run_total")
        calls = [stub.Analyze.future(request, timeout=120) for _ in range(n)]
        # Every call reached its handler: answered (counted) or being handled (in flight).
        assert wait_for(lambda: metric(service, "nlpsuite_requests_total", **analyze) - before
                        + metric(service, "nlpsuite_in_flight", **analyze) == n, 30)
        queued = metric(service, "nlpsuite_queue_depth")
        for call in calls:
            call.cancel()
        settled = wait_for(lambda: metric(service, "nlpsuite_in_flight", **analyze) == 0, 10)
        depth_after = metric(service, "nlpsuite_queue_depth")
        ok = metric(service, "nlpsuite_requests_total", code="OK", **analyze)
        cancelled = metric(service, "nlpsuite_requests_total", code="CANCELLED", **analyze)

        def ran_and_dropped() -> tuple[float, float]:
            return (metric(service, "nlpsuite_texts_run_total") - ran_before,
                    metric(service, "nlpsuite_dropped_texts_total", reason="cancelled", lane="interactive"))

        # A batch may still be running for callers already gone: its texts count once it ends.
        accounted = wait_for(lambda: sum(ran_and_dropped()) == n, 10)
        ran, dropped = ran_and_dropped()
        t0 = time.perf_counter()
        answer = stub.Analyze(sentiment_pb2.AnalyzeRequest(texts=["Profits rose."]), timeout=10)
        next_call_s = time.perf_counter() - t0
        # A second storm, cancelled at random moments (some before the server has even read the request: gRPC
        # never runs a handler for those, so they are not counted): the gauges still come back to zero.
        calls = [stub.Analyze.future(request, timeout=120) for _ in range(n)]
        for call in random.Random(0).sample(calls, n):
            call.cancel()
        settled_again = wait_for(lambda: metric(service, "nlpsuite_in_flight", **analyze) == 0
                                 and metric(service, "nlpsuite_queue_depth") == 0, 10)
        total_again = metric(service, "nlpsuite_requests_total", **analyze) - before - n - 1
        channel.close()
    print(f"queued when cancelled: {queued:.0f}; after: depth {depth_after:.0f}, OK {ok:.0f}, CANCELLED "
          f"{cancelled:.0f}, texts run {ran:.0f}, dropped unrun {dropped:.0f}; next call {next_call_s * 1000:.1f} ms; "
          f"random storm: {total_again:.0f} of {n} reached a handler")
    assert queued > 100, "the storm did not queue: the test proves nothing"
    assert settled and depth_after == 0
    assert ok + cancelled == n and cancelled > queued / 2  # a few queued ones may run before their cancel lands
    # Each text either ran or left the queue unrun, counted. Cancelled calls' texts did not run, but for the few that
    # finished while the client was still sending its 500 cancels.
    assert accounted and ran >= ok and dropped > queued / 2, (ran, ok, dropped, cancelled)
    assert answer.results[0].label and next_call_s < 2.0
    assert settled_again and 0 < total_again <= n


def rapid_reset(port: int, streams: int) -> int:
    """Open `streams` gRPC calls on one HTTP/2 connection and cancel each at once (RST_STREAM right after
    HEADERS: the CVE-2023-44487 pattern). Returns how many were sent before the server closed the connection."""
    import socket

    import h2.config
    import h2.connection
    import h2.exceptions

    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100})
    sock.sendall(conn.data_to_send())
    headers = [(":method", "POST"), (":scheme", "http"), (":authority", f"127.0.0.1:{port}"),
               (":path", "/nlpsuite.v1.SentimentService/Analyze"), ("content-type", "application/grpc"),
               ("te", "trailers")]
    sent = 0
    try:
        for _ in range(streams):
            stream_id = conn.get_next_available_stream_id()
            conn.send_headers(stream_id, headers)
            conn.reset_stream(stream_id, error_code=8)  # CANCEL
            sent += 1
            if sent % 100 == 0:
                sock.sendall(conn.data_to_send())
                sock.setblocking(False)
                try:
                    while data := sock.recv(65536):
                        conn.receive_data(data)
                except BlockingIOError:
                    pass
                finally:
                    sock.setblocking(True)
        sock.sendall(conn.data_to_send())
    except (OSError, h2.exceptions.ProtocolError):
        pass  # the server may close a connection that floods it: that is a fine answer
    finally:
        sock.close()
    return sent


def test_rapid_reset_on_one_connection_does_not_hurt_other_clients(built_classifier):
    """20,000 streams opened and reset at once on one connection while five other clients call Analyze. Before
    the fix 1-3 of the five clients' calls failed with CANCELLED inside the gRPC library."""
    with ServerThread(SentimentService(settings_for(built_classifier))).start() as server:
        stop = threading.Event()
        results: list[str] = []

        def client() -> None:
            with grpc.insecure_channel(server.target) as channel:
                stub = sentiment_pb2_grpc.SentimentServiceStub(channel)
                while not stop.is_set():
                    try:
                        stub.Analyze(sentiment_pb2.AnalyzeRequest(texts=["shares fell"]), timeout=10)
                        results.append("OK")
                    except grpc.RpcError as exc:
                        results.append(f"{exc.code().name}: {exc.details()}")

        threads = [threading.Thread(target=client) for _ in range(5)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        sent = rapid_reset(server.port, 20_000)
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(20)
        healthy = server.health()
    failed = [r for r in results if r != "OK"]
    print(f"rapid reset: {sent} streams sent; other clients: {len(results)} calls, failed: {failed[:5]}")
    assert healthy == health_pb2.HealthCheckResponse.SERVING
    assert len(results) > 20 and failed == []


def test_a_closed_stream_stops_its_pending_items(built_classifier):
    """A client that cancels its AnalyzeStream while items wait behind one worker: those items leave the queue
    unrun (counted as dropped), and the gauges return to zero."""
    from nlpsuite.shared.config import BatchSettings

    service = SentimentService(settings_for(built_classifier, batch=BatchSettings(workers=1, max_batch_size=1)))
    text = long_text(600, 2)
    with ServerThread(service).start() as server:
        channel = grpc.insecure_channel(server.target)
        stub = sentiment_pb2_grpc.SentimentServiceStub(channel)
        items = (sentiment_pb2.AnalyzeStreamRequest(request_id=str(i), text=text) for i in range(300))
        call = stub.AnalyzeStream(items, timeout=120)
        assert wait_for(lambda: metric(service, "nlpsuite_queue_depth") >= 50, 30), "the stream did not queue"
        call.cancel()
        settled = wait_for(lambda: metric(service, "nlpsuite_queue_depth") == 0
                           and metric(service, "nlpsuite_in_flight", method="AnalyzeStream") == 0, 10)
        ran = metric(service, "nlpsuite_texts_run_total")
        dropped = metric(service, "nlpsuite_dropped_texts_total", reason="cancelled")
        channel.close()
    print(f"stream of 300 cancelled: {ran:.0f} texts run, {dropped:.0f} dropped unrun")
    assert settled and dropped >= 40 and ran + dropped <= 300
