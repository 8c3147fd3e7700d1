"""ONNX Runtime sessions with an honest provider choice.

onnxruntime-gpu lists TensorRT and CUDA as *available* even on a machine without a GPU (those are the
build's providers, not the machine's), and asking for CUDA there falls back to the CPU with a loud error.
So we try the preferred providers in order, quietly, and believe only what the created session reports.
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import math
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from nlpsuite.shared.providers import GPU_PROVIDERS, NAMES as _NAMES, GpuOptions, missing_libraries, provider_list
from nlpsuite.shared.tokenization import INPUT_NAMES

log = logging.getLogger(__name__)

ProviderChoice = Literal["auto", "tensorrt", "cuda", "cpu"]
_AUTO_ORDER = ("tensorrt", "cuda", "cpu")
# Op types that are matrix multiplications: a BERT encoder's useful arithmetic (attention's score and value
# products run as MatMul or FusedMatMul where attention is not fused; inside MultiHeadAttention they are not counted).
GEMM_OPS = frozenset({"MatMul", "FusedMatMul", "Gemm", "MatMulInteger", "MatMulIntegerToFloat", "QGemm",
                      "DynamicQuantizeMatMul", "MatMulNBits"})


@dataclass(frozen=True)
class Placement:
    """Which provider ran each node of a session's graph (from ORT's profile of one run)."""

    ops: dict[str, dict[str, int]] = field(default_factory=dict)  # provider -> op type -> nodes
    kernel_us: dict[str, float] = field(default_factory=dict)  # op type -> kernel time over the profiled runs

    def kernel_shares(self) -> dict[str, float]:
        """Each op type's share of the profiled kernel time, largest first."""
        total = sum(self.kernel_us.values()) or 1.0
        return {op: us / total for op, us in sorted(self.kernel_us.items(), key=lambda kv: -kv[1])}

    def gemm_share(self) -> float:
        """The share of the profiled kernel time spent in matrix multiplications (GEMM_OPS)."""
        return sum(share for op, share in self.kernel_shares().items() if op in GEMM_OPS)

    def nodes(self, provider: str) -> int:
        return sum(self.ops.get(provider, {}).values())

    @property
    def copies(self) -> int:
        """Memcpy nodes: tensors moved between the GPU and the host on every run."""
        return sum(n for ops in self.ops.values() for op, n in ops.items() if op.startswith("Memcpy"))

    def summary(self) -> dict[str, object]:
        out: dict[str, object] = {"nodes": {p: self.nodes(p) for p in self.ops}}
        if any(p in GPU_PROVIDERS for p in self.ops):
            out["cpu_ops"] = sorted(self.ops.get("CPUExecutionProvider", {}))
            out["copies"] = self.copies
        return out


@dataclass(frozen=True)
class RuntimeSession:
    session: ort.InferenceSession
    provider: str  # what the session really runs on, e.g. "CPUExecutionProvider"
    path: Path

    @property
    def on_gpu(self) -> bool:
        return self.provider != "CPUExecutionProvider"

    def end_profiling(self) -> Placement:
        """Stop the profiling `create_session(profile=True)` started and read which provider ran each node
        (an empty Placement, logged, where the profile could not be written or read: it is a report, not a
        condition for serving)."""
        written = self.session.end_profiling()
        try:
            events = json.loads(Path(written).read_text())
        except (OSError, ValueError) as exc:
            log.warning("node placement unknown: ONNX Runtime's profile could not be read",
                        extra={"model": str(self.path), "profile": written, "error": str(exc)})
            return Placement()
        finally:
            if written:
                Path(written).unlink(missing_ok=True)
        seen: dict[str, tuple[str, str]] = {}
        kernel_us: Counter = Counter()
        for event in events:
            args = event.get("args") or {}
            name = event.get("name", "")
            if event.get("cat") == "Node" and name.endswith("_kernel_time") and "provider" in args:
                seen[name] = (args["provider"], args.get("op_name", "?"))
                kernel_us[args.get("op_name", "?")] += float(event.get("dur", 0))
        ops: dict[str, Counter] = {}
        for provider, op in seen.values():
            ops.setdefault(provider, Counter())[op] += 1
        return Placement({p: dict(sorted(c.items())) for p, c in ops.items()}, dict(kernel_us))


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


def _session_options(intra_threads: int, inter_threads: int, spinning: bool = True,
                     profile: bool = False) -> ort.SessionOptions:
    options = ort.SessionOptions()
    if profile:  # the first runs only: RuntimeSession.end_profiling stops it and deletes the file
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tempfile.gettempdir()) / f"nlpsuite-placement-{os.getpid()}")
    options.intra_op_num_threads = intra_threads
    options.inter_op_num_threads = inter_threads
    if not spinning:
        # Pool threads spin only while a run lasts (hand-offs between nodes stay fast) and sleep once it returns: a
        # session that shares cores with others must not burn them between runs.
        options.add_session_config_entry("session.force_spinning_stop", "1")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # failed GPU provider probes are expected on CPU machines; we log our own line
    return options


def _quiet_session(model: str | bytes, options: ort.SessionOptions,
                   providers: list[str] | list[tuple[str, dict[str, str]]]) -> ort.InferenceSession:
    # When a GPU provider fails, onnxruntime's Python wrapper print()s an "EP Error" banner to stdout
    # before falling back; keep stdout clean for commands whose output is parsed.
    with contextlib.redirect_stdout(io.StringIO()):
        return ort.InferenceSession(model, options, providers=providers)


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
        session = _quiet_session(model.SerializeToString(), _session_options(1, 1), [_NAMES[choice]])
    except Exception:  # noqa: BLE001 - any failure means the provider is not usable here
        return False
    return session.get_providers()[0] == _NAMES[choice]


def create_session(
    path: Path, provider: ProviderChoice = "auto", intra_threads: int = 0, inter_threads: int = 1,
    spinning: bool = True, gpu: GpuOptions | None = None, profile: bool = False,
) -> RuntimeSession:
    """Open a model on the first provider that really works, in the order TensorRT, CUDA, CPU.

    `provider` other than "auto" forces one; if it cannot run here we raise instead of silently falling back,
    naming the libraries that are missing. TensorRT sessions keep CUDA (then the CPU) behind TensorRT for the
    nodes it does not take; `gpu` sets the device, the engine cache and the shape profile. `profile`: record
    which provider runs each node until `end_profiling()`.
    """
    order = _AUTO_ORDER if provider == "auto" else (provider,)
    gpu = gpu or GpuOptions()
    errors: list[str] = []
    for choice in order:
        name = _NAMES[choice]
        if name not in ort.get_available_providers():
            errors.append(f"{name}: not in this onnxruntime build")
            continue
        if provider == "auto" and not probe_provider(choice):
            errors.append(f"{name}: {missing_libraries(choice) or 'not usable on this machine'}")
            continue
        providers = provider_list(choice, gpu, list(INPUT_NAMES))
        options = _session_options(intra_threads, inter_threads, spinning, profile)
        if choice != "cpu":  # our error names what is missing; ORT's own log lines would only repeat it
            ort.set_default_logger_severity(4)
        try:
            session = _quiet_session(str(path), options, providers)
        except Exception as exc:  # noqa: BLE001 - try the next provider, report all at the end
            errors.append(f"{name}: {_why(choice, exc)}")
            continue
        finally:
            ort.set_default_logger_severity(2)
        actual = session.get_providers()[0]
        if actual != name:
            if profile:  # ORT opened the profile file with the session; leave nothing behind
                with contextlib.suppress(Exception):
                    Path(session.end_profiling()).unlink(missing_ok=True)
            errors.append(f"{name}: session fell back to {actual}; {missing_libraries(choice) or 'no GPU found'}")
            continue
        log.info("onnxruntime provider selected",
                 extra={"provider": actual, "behind_it": session.get_providers()[1:], "model": str(path)})
        return RuntimeSession(session=session, provider=actual, path=path)
    raise RuntimeError(f"no execution provider could open {path}: " + "; ".join(errors))


def synthetic_feeds(batch: int, tokens: int) -> dict[str, np.ndarray]:
    """A batch x tokens input of random word ids between [CLS] and [SEP], no padding: for timing a graph."""
    ids = np.random.default_rng(0).integers(1000, 20000, size=(batch, tokens), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    return dict(zip(INPUT_NAMES, (ids, np.ones_like(ids))))


def profile_kernels(path: Path, batch: int, tokens: int, threads: int, runs: int = 6) -> Placement:
    """Where a CPU session's kernel time goes at batch x tokens, over `runs` profiled runs (the first, which
    allocates and picks kernels, among them)."""
    profiled = create_session(path, "cpu", threads, profile=True)
    feeds = synthetic_feeds(batch, tokens)
    for _ in range(runs):
        profiled.session.run(None, feeds)
    return profiled.end_profiling()


def _why(choice: str, exc: Exception) -> str:
    first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    missing = missing_libraries(choice)
    return f"{missing} ({first})" if missing else first
