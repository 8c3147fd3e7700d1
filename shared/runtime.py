"""ONNX Runtime sessions with an honest provider choice.

onnxruntime-gpu lists TensorRT and CUDA as *available* even on a machine without a GPU (those are the
build's providers, not the machine's), and asking for CUDA there falls back to the CPU with a loud error.
So we try the preferred providers in order, quietly, and believe only what the created session reports.
"""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnxruntime as ort

log = logging.getLogger(__name__)

ProviderChoice = Literal["auto", "tensorrt", "cuda", "cpu"]
_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_AUTO_ORDER = ("tensorrt", "cuda", "cpu")


@dataclass(frozen=True)
class RuntimeSession:
    session: ort.InferenceSession
    provider: str  # what the session really runs on, e.g. "CPUExecutionProvider"
    path: Path

    @property
    def on_gpu(self) -> bool:
        return self.provider != "CPUExecutionProvider"


def _cgroup_cpu_limit() -> float | None:
    """The container's CPU limit in cores (cgroup v2 cpu.max, else v1 cfs quota), or None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available_cores() -> int:
    """CPU cores this process may really use: its affinity mask, capped by a cgroup CPU limit (a container's;
    the affinity mask of a pod on a big node lists every core of the node)."""
    cores = len(os.sched_getaffinity(0))
    limit = _cgroup_cpu_limit()
    return cores if limit is None else max(1, min(cores, math.ceil(limit)))


def owned_cores() -> list[int] | None:
    """The cores threads may be pinned to: the affinity mask, when no smaller cgroup CPU limit applies (under a
    limit the mask lists cores that other processes use too, and pinning would crowd onto a few of them)."""
    cores = sorted(os.sched_getaffinity(0))
    return cores if available_cores() == len(cores) else None


def _session_options(intra_threads: int, inter_threads: int, spinning: bool = True) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_threads
    options.inter_op_num_threads = inter_threads
    if not spinning:
        # Idle pool threads sleep instead of spinning: a session that shares cores with others must not burn them.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # failed GPU provider probes are expected on CPU machines; we log our own line
    return options


def _quiet_session(model: str | bytes, options: ort.SessionOptions, provider: str) -> ort.InferenceSession:
    # When a GPU provider fails, onnxruntime's Python wrapper print()s an "EP Error" banner to stdout
    # before falling back; keep stdout clean for commands whose output is parsed.
    with contextlib.redirect_stdout(io.StringIO()):
        return ort.InferenceSession(model, options, providers=[provider])


def expected_provider(provider: ProviderChoice = "auto") -> str:
    """The provider a session asked for with `provider` will run on here (probed with a one-node model)."""
    order = _AUTO_ORDER if provider == "auto" else (provider,)
    for choice in order:
        if choice == "cpu" or probe_provider(choice):
            return _NAMES[choice]
    return _NAMES[order[-1]]


@functools.cache
def probe_provider(choice: str) -> bool:
    """Whether `choice` really runs here; decided once per process, without ORT's error log on failure."""
    if choice == "cpu":
        return True
    if _NAMES[choice] not in ort.get_available_providers():
        return False
    # A GPU provider whose CUDA libraries are missing makes ORT's default logger print errors at load time;
    # an expected outcome on a CPU machine, so silence it for the probe (ORT's default severity is 2).
    ort.set_default_logger_severity(4)
    try:
        return _probe(choice)
    finally:
        ort.set_default_logger_severity(2)


def _probe(choice: str) -> bool:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    try:
        session = _quiet_session(model.SerializeToString(), _session_options(1, 1), _NAMES[choice])
    except Exception:  # noqa: BLE001 - any failure means the provider is not usable here
        return False
    return session.get_providers()[0] == _NAMES[choice]


def create_session(
    path: Path, provider: ProviderChoice = "auto", intra_threads: int = 0, inter_threads: int = 1,
    spinning: bool = True,
) -> RuntimeSession:
    """Open a model on the first provider that really works, in the order TensorRT, CUDA, CPU.

    `provider` other than "auto" forces one; if it cannot run here we raise instead of silently falling back.
    """
    order = _AUTO_ORDER if provider == "auto" else (provider,)
    options = _session_options(intra_threads, inter_threads, spinning)
    errors: list[str] = []
    for choice in order:
        name = _NAMES[choice]
        if name not in ort.get_available_providers():
            errors.append(f"{name}: not in this onnxruntime build")
            continue
        if provider == "auto" and not probe_provider(choice):
            errors.append(f"{name}: not usable on this machine")
            continue
        try:
            session = _quiet_session(str(path), options, name)
        except Exception as exc:  # noqa: BLE001 - try the next provider, report all at the end
            errors.append(f"{name}: {str(exc).splitlines()[0][:200]}")
            continue
        actual = session.get_providers()[0]
        if actual != name:
            errors.append(f"{name}: session fell back to {actual}")
            continue
        log.info("onnxruntime provider selected", extra={"provider": actual, "model": str(path)})
        return RuntimeSession(session=session, provider=actual, path=path)
    raise RuntimeError(f"no execution provider could open {path}: " + "; ".join(errors))
