"""Running the suite's pieces on this machine: a free port, a child that dies with its parent, waiting for SERVING.

One home for what the demo, `nlpsuite broker`, `nlpsuite bench`, the benchmarks and the tests each need to start
servers locally; none of it is used by a service in production.
"""
from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from functools import cache


class NotServing(TimeoutError):
    """A server did not report SERVING in time."""


@cache
def _default_ports() -> frozenset[int]:
    from nlpsuite.shared.config import ChatSettings, RecommendSettings, SentimentSettings

    return frozenset(port for section in (SentimentSettings(), ChatSettings(), RecommendSettings())
                     for port in (section.port, section.metrics_port, section.health_port) if port)


def free_port() -> int:
    """A free loopback port that is none of the services' default ports: a config naming one service's port must
    not clash with another service's default (shared.config.Settings checks them all)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _default_ports():
            return port


def set_pdeathsig() -> None:
    """For subprocess.Popen(preexec_fn=...): the child gets its own session and dies with its parent."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - non-Linux
        pass


def wait_serving(target: str, service: str = "", alive: Callable[[], None] | None = None,
                 timeout_s: float = 120.0, interval_s: float = 0.2) -> None:
    """Until grpc.health.v1 on `target` says SERVING for `service` ("": the server as a whole). `alive` is called
    between tries and should raise if the server's process died; NotServing after `timeout_s`."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if alive is not None:
                alive()
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(interval_s)
    raise NotServing(f"{service or 'the server'} on {target} was not SERVING after {timeout_s:.0f} s")
