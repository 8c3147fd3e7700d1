"""Running the suite's pieces on this machine: a free port, a child that dies with its parent, waiting for SERVING,
a served service as a child process (`ServeProcess`) or on a thread of this one (`ServerThread`).

One home for what the demo, `nlpsuite broker`, `nlpsuite bench`, the benchmarks and the tests each need to start
servers locally; none of it is used by a service in production.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from functools import cache
from pathlib import Path


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


class ServeProcess:
    """`nlpsuite serve <service>` as a child process, started the way users start it, configured by a YAML file
    (`section`: the service's settings; host, port and metrics port are filled in). The one launcher of a served
    service for the benchmarks and the tests: it can be stopped gracefully, killed, and started again on the same
    port (an outage). Settings from this process's NLPSUITE_* environment are not passed on."""

    def __init__(self, service: str, section: dict, workdir: Path, *, service_name: str = "",
                 port: int | None = None, metrics_port: int | None = None, log_level: str = "INFO",
                 user: int | None = None) -> None:
        import yaml

        self.port = port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.service_name = service_name  # the health service to wait for ("": the server as a whole)
        config = {"log_level": log_level,
                  service: {"host": "127.0.0.1", "port": self.port, "metrics_port": self.metrics_port, **section}}
        self.config = workdir / f"{service}-{self.port}.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.log_path = workdir / f"{service}-{self.port}.log"
        self.args = [sys.executable, "-m", "nlpsuite.cli", "serve", service, "--config", str(self.config)]
        self.user = user  # run as this uid (and gid), as a container's non-root user; needs root here
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, timeout_s: float = 120.0) -> ServeProcess:
        self._log = open(self.log_path, "ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("NLPSUITE_")}
        as_user = {} if self.user is None else {"user": self.user, "group": self.user, "extra_groups": []}
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=set_pdeathsig, **as_user)
        try:
            wait_serving(self.target, self.service_name, self.check_alive, timeout_s)
        except (NotServing, RuntimeError) as exc:
            self.kill()
            raise NotServing(f"{exc}; last lines of {self.log_path}:\n{self.tail()}") from None
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.running:
            raise RuntimeError(f"`nlpsuite serve` exited with {self.proc.returncode if self.proc else None}")

    def tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def rss_kb(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def metrics(self) -> dict[tuple[str, tuple], float]:
        """Every sample on /metrics as {(name, sorted labels): value}."""
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        text = urllib.request.urlopen(self.metrics_url, timeout=10).read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def metric_sum(self, name: str, **labels: str) -> float:
        return sum(v for (n, ls), v in self.metrics().items()
                   if n == name and all(dict(ls).get(k) == val for k, val in labels.items()))

    def terminate(self) -> None:
        """SIGTERM: the server drains, then exits."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to the whole process group: no drain, no goodbye; in-flight calls fail with UNAVAILABLE."""
        if self.running:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._close_log()

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout_s`; the exit code (None if never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._close_log()
        return self.proc.returncode

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class ServerThread:
    """A real grpc.aio server for `service` in this process, on a background thread with its own event loop (for
    synchronous callers: tests, benchmarks that swap a service's code)."""

    def __init__(self, service) -> None:
        self.service = service
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = None
        self.port: int | None = None

    def call(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, wait_ready: bool = True) -> ServerThread:
        from nlpsuite.shared.server import GrpcServer

        self.thread.start()

        async def start() -> int:
            self.server = GrpcServer(self.service)
            return await self.server.start()

        self.port = self.call(start())
        if wait_ready:
            self.call(self.server.wait_ready())
        return self

    def stop_async(self, grace: float | None = None) -> Future:
        assert self.server is not None
        return asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop)

    def stop(self, grace: float | None = 1.0) -> None:
        if self.server is not None:
            self.stop_async(grace).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def health(self, service: str = "") -> int:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
