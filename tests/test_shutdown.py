"""SIGTERM under load to a real `nlpsuite serve sentiment`: health turns NOT_SERVING, every call the server had
received finishes within the grace period, later calls are refused with UNAVAILABLE, and the exit is clean."""
from __future__ import annotations

import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nlpsuite.v1 import sentiment_pb2, sentiment_pb2_grpc
from nlpsuite.shared.local_run import ServeProcess

SERVICE = "nlpsuite.v1.SentimentService"
GRACE_S = 60.0
CALLS, TEXTS = 24, 64
TEXT = "Norvale Mining shares slump after the regulator opens an inquiry into its quarterly accounts " * 3


def test_sigterm_under_load_finishes_in_flight_calls_and_refuses_new_ones(tmp_path, built_classifier):
    section = {"grace_s": GRACE_S, "model": {"name": built_classifier.manifest.name,
                                             "repository": str(built_classifier.path.parent.parent)},
               # one small batch at a time: the queue stays long enough to SIGTERM under load
               "batch": {"workers": 1, "max_batch_size": 4, "queue_capacity": 100_000}}
    with ServeProcess("sentiment", section, tmp_path, service_name=SERVICE) as server, \
            grpc.insecure_channel(server.target) as channel:
        health_seen: list[int] = []
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE))

        def follow() -> None:
            try:
                for reply in watch:
                    health_seen.append(reply.status)
                    if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                        watch.cancel()  # an open Watch would hold the shutdown for the whole grace period
            except grpc.RpcError:
                pass

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        stub = sentiment_pb2_grpc.SentimentServiceStub(channel)
        request = sentiment_pb2.AnalyzeRequest(texts=[TEXT] * TEXTS)
        in_flight = [stub.Analyze.future(request, timeout=GRACE_S + 60) for _ in range(CALLS)]
        # Every call has reached the batcher (queued or done) and work is still waiting: SIGTERM now.
        end = time.monotonic() + 60
        while time.monotonic() < end:
            queued = server.metric_sum("nlpsuite_queue_depth")
            done = server.metric_sum("nlpsuite_batch_size_sum")
            if queued + done >= CALLS * TEXTS - 4 and queued > 0:
                break
            time.sleep(0.02)
        else:
            raise AssertionError(f"calls did not all reach the server (queued {queued}, done {done})")
        sent_at = time.monotonic()
        server.terminate()

        refused = None
        late = sentiment_pb2.AnalyzeRequest(texts=["after SIGTERM"])
        while time.monotonic() < sent_at + 30 and refused is None:
            try:
                stub.Analyze(late, timeout=10)
            except grpc.RpcError as err:
                refused = err
            time.sleep(0.05)

        replies = [f.result() for f in in_flight]  # raises if any in-flight call failed
        exit_code = server.proc.wait(GRACE_S + 30)
        stopped_after = time.monotonic() - sent_at
        follower.join(10)
    assert all(len(r.results) == TEXTS for r in replies)
    assert refused is not None and refused.code() == grpc.StatusCode.UNAVAILABLE, refused
    assert health_pb2.HealthCheckResponse.NOT_SERVING in health_seen, health_seen
    assert exit_code == 0
    assert stopped_after < GRACE_S + 10
    print(f"\nshutdown: {CALLS} in-flight calls x {TEXTS} texts all succeeded; process exited {stopped_after:.1f} s "
          f"after SIGTERM (grace {GRACE_S} s); late call: {refused.code().name}")
