"""Which execution providers a session gets, with which options, and what stops a GPU provider from loading.

TensorRT runs in one session with the CUDA provider behind it (and ORT's CPU provider last): the fused graph's
com.microsoft ops (MultiHeadAttention, SkipLayerNormalization, BiasGelu) are not TensorRT ops, and alone
TensorRT would hand them to the CPU with a device copy around each. Its engines are built for one shape profile
covering every batch the batcher can form, at warm-up, and kept with the timing cache in a writable cache
directory, so a new batch shape, a restart or a hot reload never builds an engine on the request path.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
GPU_PROVIDERS = (NAMES["tensorrt"], NAMES["cuda"])
TRT_WORKSPACE_BYTES = 4 << 30  # TensorRT's scratch space limit while building and running an engine

# What each GPU provider's library needs beyond ORT itself, by the name ORT 1.31's wheel links against: for the
# error message when one is missing (the driver's libcuda is not linked; ORT loads it at session start).
_PROVIDER_LIBRARY = {"cuda": "libonnxruntime_providers_cuda.so", "tensorrt": "libonnxruntime_providers_tensorrt.so"}
_WHERE_FROM = {
    "libcuda.so": "the NVIDIA driver (a GPU node with the NVIDIA container toolkit)",
    "libcudnn": "cuDNN 9 (nvidia/cuda:13.*-cudnn-runtime images, or the nvidia-cudnn-cu13 wheel)",
    "libnvinfer": "TensorRT 10 (the tensorrt-cu13-libs wheel on LD_LIBRARY_PATH, as in our GPU image)",
    "libnvonnxparser": "TensorRT 10 (the tensorrt-cu13-libs wheel on LD_LIBRARY_PATH, as in our GPU image)",
    "libcu": "CUDA 13 runtime (nvidia/cuda:13.*-runtime images, or the nvidia-*-cu13 wheels)",
}


@dataclass(frozen=True)
class ShapeProfile:
    """The input shapes a session must serve, from the batcher's limits: TensorRT builds its engine for them."""

    max_batch: int
    max_tokens: int
    opt_batch: int
    opt_tokens: int

    @classmethod
    def for_batcher(cls, max_batch_size: int, max_batch_tokens: int, max_tokens: int) -> ShapeProfile:
        # The batcher never forms more than max_batch_size texts nor pads past max_tokens; at saturation its
        # batches are full and share the token budget, which makes the typical shape.
        opt_batch = max_batch_size
        opt_tokens = max(1, min(max_tokens, max_batch_tokens // max_batch_size))
        return cls(max_batch=max_batch_size, max_tokens=max_tokens, opt_batch=opt_batch, opt_tokens=opt_tokens)

    def trt_shapes(self, inputs: list[str]) -> dict[str, str]:
        def spec(batch: int, tokens: int) -> str:
            return ",".join(f"{name}:{batch}x{tokens}" for name in inputs)

        return {"trt_profile_min_shapes": spec(1, 1),
                "trt_profile_opt_shapes": spec(self.opt_batch, self.opt_tokens),
                "trt_profile_max_shapes": spec(self.max_batch, self.max_tokens)}


@dataclass(frozen=True)
class GpuOptions:
    device_id: int = 0
    engine_cache: Path | None = None  # TensorRT engine + timing cache; None: no cache (engines rebuilt per start)
    profile: ShapeProfile | None = None  # None: TensorRT sizes engines from the shapes it meets (rebuilds)
    fp16: bool = True


def provider_list(choice: str, gpu: GpuOptions, inputs: list[str]) -> list[tuple[str, dict[str, str]]]:
    """The providers, with their options, for a session that should run on `choice` (tensorrt, cuda or cpu)."""
    cuda = (NAMES["cuda"], {"device_id": str(gpu.device_id)})
    cpu = (NAMES["cpu"], {})
    if choice == "cpu":
        return [cpu]
    if choice == "cuda":
        return [cuda, cpu]
    trt: dict[str, str] = {
        "device_id": str(gpu.device_id),
        "trt_fp16_enable": "1" if gpu.fp16 else "0",
        "trt_max_workspace_size": str(TRT_WORKSPACE_BYTES),
    }
    if gpu.engine_cache is not None:
        trt |= {"trt_engine_cache_enable": "1", "trt_engine_cache_path": str(gpu.engine_cache),
                "trt_timing_cache_enable": "1", "trt_timing_cache_path": str(gpu.engine_cache)}
    if gpu.profile is not None:
        trt |= gpu.profile.trt_shapes(inputs)
    return [(NAMES["tensorrt"], trt), cuda, cpu]


def missing_libraries(choice: str) -> str | None:
    """Why `choice`'s provider library cannot load here, naming each missing library; None if it loads."""
    library = _PROVIDER_LIBRARY.get(choice)
    if library is None:
        return None
    capi = Path(ort.__file__).parent / "capi"
    path = capi / library
    if not path.is_file():
        return f"{library} is not in this onnxruntime build ({ort.__version__}; install onnxruntime-gpu)"
    missing = _ldd_missing(path)
    if missing is None:  # no ldd: the loader names the first missing library only
        try:
            ctypes.CDLL(str(capi / "libonnxruntime_providers_shared.so"), mode=ctypes.RTLD_GLOBAL)
            ctypes.CDLL(str(path))
            missing = []
        except OSError as exc:
            missing = [str(exc).split(":")[0]]
    if not _loads("libcuda.so.1") and "libcuda.so.1" not in missing:
        missing.append("libcuda.so.1")
    if not missing:
        return None
    by_origin: dict[str, list[str]] = {}
    for name in missing:
        by_origin.setdefault(_origin(name), []).append(name)
    return "missing " + "; ".join(f"{', '.join(names)}: {origin}" for origin, names in by_origin.items())


def _ldd_missing(path: Path) -> list[str] | None:
    ldd = shutil.which("ldd")
    if ldd is None:
        return None
    try:
        out = subprocess.run([ldd, str(path)], capture_output=True, text=True, timeout=10,
                             env={**os.environ, "LC_ALL": "C"}).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [line.split("=>")[0].strip() for line in out.splitlines() if "not found" in line]


def _loads(name: str) -> bool:
    try:
        ctypes.CDLL(name)
        return True
    except OSError:
        return False


def _origin(library: str) -> str:
    return next((where for prefix, where in _WHERE_FROM.items() if library.startswith(prefix)), "unknown")
