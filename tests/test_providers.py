"""GPU provider choice and options, checked on the CPU: what nlpsuite passes to ONNX Runtime for TensorRT and CUDA
(ORT is made to believe those providers work here; the session underneath really runs on the CPU), the engine
cache rules, and the message when GPU libraries are missing (real, on this GPU-less machine)."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnxruntime as ort
import pytest

from nlpsuite.shared import runtime
from nlpsuite.shared.config import BatchSettings, ModelSettings
from nlpsuite.shared.model_repo import ModelRepoError
from nlpsuite.shared.providers import ShapeProfile
from nlpsuite.shared.serving import ServedModel
from tests.support import load_and_close

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"


class _Session:
    """A real CPU session that reports the providers it was asked for, as a GPU session would."""

    def __init__(self, real: ort.InferenceSession, providers: list) -> None:
        self._real, self._providers = real, [p[0] if isinstance(p, tuple) else p for p in providers]

    def get_providers(self) -> list[str]:
        return self._providers

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.fixture()
def gpu_here(monkeypatch):
    """Pretend the given providers load here; record every provider list passed to ORT."""
    calls: list[list] = []
    real_session = runtime._quiet_session

    def install(*usable: str) -> list[list]:
        names = {"tensorrt": TRT, "cuda": CUDA, "cpu": CPU}
        monkeypatch.setattr(runtime.ort, "get_available_providers", lambda: [TRT, CUDA, CPU])
        monkeypatch.setattr(runtime, "probe_provider", lambda choice: choice == "cpu" or choice in usable)

        def session(model, options, providers):
            calls.append(providers)
            if isinstance(providers[0], tuple) and providers[0][0] not in {names[u] for u in usable}:
                return _Session(real_session(model, options, [CPU]), [CPU])  # ORT's silent fallback
            return _Session(real_session(model, options, [CPU]), providers)

        monkeypatch.setattr(runtime, "_quiet_session", session)
        return calls

    return install


def served(version, batch: BatchSettings, **model) -> ServedModel:
    settings = ModelSettings(name=version.manifest.name, repository=version.path.parent.parent,
                             reload_interval_s=0, **model)
    return ServedModel(settings, batch, max_tokens=128, reject_overlong=False, task="classify")


def test_tensorrt_session_has_cuda_behind_it_fp16_a_cache_and_the_batchers_shapes(built_classifier, gpu_here,
                                                                                   tmp_path):
    calls = gpu_here("tensorrt", "cuda")
    model = served(built_classifier, BatchSettings(), provider="auto", engine_cache_dir=tmp_path / "engines",
                   device_id=1)
    load_and_close(model)
    assert model.model.provider == TRT and model.model.variant == "fp16"
    providers = calls[-1]
    assert [name for name, _ in providers] == [TRT, CUDA, CPU]
    cache = tmp_path / "engines" / built_classifier.manifest.name / f"{built_classifier.manifest.version}-fp16"
    assert cache.is_dir()
    # GPU batch defaults: 128 texts, 16,384 tokens; texts are cut at the model's 64 tokens.
    assert providers[0][1] == {
        "device_id": "1", "trt_fp16_enable": "1", "trt_max_workspace_size": str(4 << 30),
        "trt_engine_cache_enable": "1", "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "1", "trt_timing_cache_path": str(cache),
        "trt_profile_min_shapes": "input_ids:1x1,attention_mask:1x1",
        "trt_profile_opt_shapes": "input_ids:128x64,attention_mask:128x64",
        "trt_profile_max_shapes": "input_ids:128x64,attention_mask:128x64",
    }
    assert providers[1][1] == {"device_id": "1"}
    assert model.model.self_test is not None and model.model.self_test.passed
    assert (model.batcher.max_batch_size, model.batcher.max_batch_tokens) == (128, 16384)


def test_shape_profile_follows_configured_batch_limits(built_classifier, gpu_here, tmp_path):
    calls = gpu_here("tensorrt", "cuda")
    load_and_close(served(built_classifier, BatchSettings(max_batch_size=8, max_batch_tokens=256), provider="tensorrt",
                engine_cache_dir=tmp_path / "engines"))
    options = calls[-1][0][1]
    assert options["trt_profile_opt_shapes"] == "input_ids:8x32,attention_mask:8x32"
    assert options["trt_profile_max_shapes"] == "input_ids:8x64,attention_mask:8x64"
    assert ShapeProfile.for_batcher(4, 10_000, 128) == ShapeProfile(4, 128, 4, 128)


def test_auto_takes_cuda_when_tensorrt_cannot_load_and_the_cpu_when_neither_can(built_classifier, gpu_here,
                                                                                 tmp_path):
    calls = gpu_here("cuda")
    assert runtime.expected_provider("auto") == CUDA
    model = served(built_classifier, BatchSettings(), provider="auto", engine_cache_dir=tmp_path / "engines")
    load_and_close(model)
    assert model.model.provider == CUDA and [name for name, _ in calls[-1]] == [CUDA, CPU]
    assert not (tmp_path / "engines").exists()  # only TensorRT writes a cache
    calls = gpu_here()
    assert runtime.expected_provider("auto") == CPU
    model = served(built_classifier, BatchSettings(), provider="auto")
    load_and_close(model)
    assert model.model.provider == CPU and calls[-1] == [(CPU, {})]


def test_engine_cache_must_be_writable_and_outside_the_model(built_classifier, gpu_here, tmp_path):
    gpu_here("tensorrt", "cuda")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ModelRepoError, match=r"TensorRT engine cache .*a-file.* is not writable by uid \d+ .*"
                                             r"set model.engine_cache_dir"):
        load_and_close(served(built_classifier, BatchSettings(), provider="tensorrt", engine_cache_dir=blocker))
    repo = tmp_path / "repo"
    shutil.copytree(built_classifier.path, repo / built_classifier.manifest.name / "1")
    version = type(built_classifier)(path=repo / built_classifier.manifest.name / "1",
                                     manifest=built_classifier.manifest)
    with pytest.raises(ModelRepoError, match="is inside the model version"):
        load_and_close(served(version, BatchSettings(), provider="tensorrt", engine_cache_dir=version.path / "engines"))


def test_default_engine_cache_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert ModelSettings(name="m").engine_cache() == tmp_path / "nlpsuite" / "tensorrt"
    assert ModelSettings(name="m", engine_cache_dir=Path("/var/cache/x")).engine_cache() == Path("/var/cache/x")


@pytest.mark.parametrize("provider, libraries", [
    ("cuda", ("libcublas", "libcuda.so.1", "CUDA 13 runtime", "NVIDIA driver")),
    ("tensorrt", ("libnvinfer.so.10", "TensorRT 10", "libcuda.so.1")),
])
def test_a_forced_gpu_provider_names_the_missing_libraries(built_classifier, provider, libraries):
    if runtime.probe_provider(provider):
        pytest.skip(f"{provider} really works here")
    with pytest.raises(RuntimeError) as err:
        runtime.create_session(built_classifier.variant_path("fp32"), provider)
    message = str(err.value)
    for library in libraries:
        assert library in message, message


def test_a_session_that_fell_back_leaves_no_profile_behind(built_classifier, gpu_here):
    gpu_here("cuda")  # TensorRT is listed by the build but falls back to the CPU, as ORT does
    leftovers = lambda: set(Path(tempfile.gettempdir()).glob(f"nlpsuite-placement-{os.getpid()}*"))  # noqa: E731
    before = leftovers()
    with pytest.raises(RuntimeError, match="TensorrtExecutionProvider: session fell back to CPUExecutionProvider"):
        runtime.create_session(built_classifier.variant_path("fp32"), "tensorrt", profile=True)
    assert leftovers() == before
