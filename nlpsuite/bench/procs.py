"""Child processes for the benchmark and what /proc says about them (CPU time, peak memory)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cores() -> int:
    return len(os.sched_getaffinity(0))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14 and 15 of stat)


def peak_rss_mb(pid: int | None = None) -> float:
    """Peak resident memory (VmHWM) of a running process, in MB."""
    for line in Path(f"/proc/{pid or os.getpid()}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Child:
    """A child process in its own process group, its output in a log file; stopped with SIGTERM then SIGKILL."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, **(env or {})})

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}; last lines of "
                               f"{self.log_path}:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait(self, timeout: float) -> int:
        """Wait for a run-to-completion child; its non-zero exit is an error with its log's tail."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(f"{self.name} did not finish within {timeout:.0f} s; see {self.log_path}") from None
        if code != 0:
            raise RuntimeError(f"{self.name} failed (exit {code}); last lines of {self.log_path}:\n{self.tail()}")
        return code

    def stop(self, grace: float = 15.0) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def batches_of(texts: list[str], batch: int) -> list[list[str]]:
    """Whole batches of `batch` texts (at least one, even if short)."""
    return [texts[i : i + batch] for i in range(0, len(texts) - batch + 1, batch)] or [texts[:batch]]


def measure_rate(predict: Callable[[list[str]], object], texts: list[str], batch: int, seconds: float,
                 concurrent: int) -> tuple[float, float]:
    """(texts/s, CPU cores used) of `concurrent` threads each calling `predict` on whole batches until time is
    up (the runtimes release the GIL while they compute)."""
    chunks = batches_of(texts, batch)
    predict(chunks[0])
    stop_at = time.perf_counter() + seconds

    def loop(offset: int) -> int:
        done, i = 0, offset
        while time.perf_counter() < stop_at:
            chunk = chunks[i % len(chunks)]
            predict(chunk)
            done += len(chunk)
            i += concurrent
        return done

    cpu0, started = cpu_seconds(os.getpid()), time.perf_counter()
    with ThreadPoolExecutor(concurrent) as pool:
        total = sum(pool.map(loop, range(concurrent)))
    wall = time.perf_counter() - started
    return total / wall, (cpu_seconds(os.getpid()) - cpu0) / wall
