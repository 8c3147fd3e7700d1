"""A real `nlpsuite serve <service>` subprocess for shutdown and overload tests: config, readiness, RSS, metrics."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from nlpsuite.shared.local_run import NotServing, free_port, wait_serving


class ServeProcess:
    def __init__(self, tmp_path: Path, service: str, section: dict, service_name: str,
                 user: int | None = None) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        self.service_name = service_name
        config = {service: {"host": "127.0.0.1", "port": self.port, "metrics_port": self.metrics_port, **section}}
        self.config = tmp_path / f"{service}-serve.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.stderr_path = tmp_path / f"{service}-serve.log"
        self.args = [sys.executable, "-m", "nlpsuite.cli", "serve", service, "--config", str(self.config)]
        self.proc: subprocess.Popen | None = None
        self.user = user  # run as this uid (and gid), as a container's non-root user; needs root here

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> ServeProcess:
        self._stderr = open(self.stderr_path, "w")
        as_user = {} if self.user is None else {"user": self.user, "group": self.user, "extra_groups": []}
        self.proc = subprocess.Popen(self.args, stderr=self._stderr, start_new_session=True, **as_user)

        def alive() -> None:
            assert self.proc is not None and self.proc.poll() is None, \
                f"serve exited: {self.stderr_path.read_text()[-3000:]}"

        try:
            wait_serving(self.target, self.service_name, alive, timeout)
        except NotServing as exc:
            raise NotServing(f"{exc}: {self.stderr_path.read_text()[-3000:]}") from None
        return self

    def rss_kb(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def metrics(self) -> dict[tuple[str, tuple], float]:
        """Every sample on /metrics as {(name, sorted labels): value}."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def metric_sum(self, name: str, **labels: str) -> float:
        return sum(v for (n, ls), v in self.metrics().items()
                   if n == name and all(dict(ls).get(k) == val for k, val in labels.items()))

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._stderr.close()
        return self.proc.returncode

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
