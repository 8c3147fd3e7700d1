"""A published model opened for inference: manifest + tokenizer + ONNX Runtime session."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nlpsuite.shared.model_repo import ModelRepoError, ModelVersion, choose_variant, version_at
from nlpsuite.shared.providers import NAMES, GpuOptions, ShapeProfile
from nlpsuite.shared.runtime import (
    Placement, ProviderChoice, RuntimeSession, available_cores, create_session, expected_provider,
)
from nlpsuite.shared.self_test import SelfTestResult
from nlpsuite.shared.tokenization import Encoded, TextEncoder

log = logging.getLogger(__name__)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


@dataclass
class LoadedModel:
    version: ModelVersion
    variant: str
    runtime: RuntimeSession
    encoder: TextEncoder
    solo: RuntimeSession | None = None  # more threads, for a batch that has the CPU to itself (see open_model)
    placement: Placement | None = None  # which provider runs each node (from the first run)
    self_test: SelfTestResult | None = None  # set by the load-time self-test (shared/self_test.py)

    @property
    def manifest(self):
        return self.version.manifest

    @property
    def provider(self) -> str:
        return self.runtime.provider

    @property
    def solo_threads(self) -> int:
        return self.solo.session.get_session_options().intra_op_num_threads if self.solo is not None else 0

    def run(self, encoded: Encoded, alone: bool = False) -> np.ndarray:
        """Logits [batch, labels] for a classifier, unit-norm embeddings [batch, dim] for an embedder.

        `alone`: no other batch is running, so the solo session (if any) may use every core."""
        runtime = self.solo if alone and self.solo is not None else self.runtime
        return runtime.session.run(None, encoded.feeds())[0]

    def predict(self, texts: list[str], alone: bool = False) -> np.ndarray:
        return self.run(self.encoder.encode(texts), alone)

    def run_ids(self, ids: list[list[int]], alone: bool = False) -> np.ndarray:
        return self.run(self.encoder.pad(ids), alone)


def open_model(
    version: ModelVersion,
    provider: ProviderChoice = "auto",
    variant: str | None = None,
    intra_threads: int = 0,
    max_length: int | None = None,
    solo_threads: int | None = 0,
    device_id: int = 0,
    engine_cache: Path | None = None,
    profile: ShapeProfile | None = None,
) -> LoadedModel:
    """Open the best variant for the device we really got (fp16 on GPU, int8 on CPU) unless one is forced.

    `solo_threads` > `intra_threads` (None: the cores available) on the CPU also opens a solo session with that many
    threads, for batches that run while no other does. At light load one request then gets every core (one
    MiniLM text: 7.7 ms on one thread, 5.4 ms on two, measured here), while under load each concurrent batch keeps
    its one thread, which gives more texts per second than sharing threads. Its pool threads spin while a run lasts
    and sleep as soon as it returns (ORT's force_spinning_stop), so a batch started beside it loses little. Against
    threads that never spin this cut the service's concurrency-1 latency (AVX512-VNNI EPYC, interleaved, two
    orders: 8.08 vs 9.55 ms, 9.22 vs 9.60 ms p50), since each of the graph's few hundred nodes no longer waits for
    a sleeping thread to wake.

    On TensorRT, `engine_cache` (a writable directory; this version gets its own folder in it) keeps built engines
    and `profile` is the range of shapes they must serve. The first run is profiled to learn which provider runs
    each node (`LoadedModel.placement`)."""
    manifest = version.manifest
    expected = expected_provider(provider)
    chosen = choose_variant(manifest, expected, override=variant)
    path = version.variant_path(chosen)
    tokenizer = version.tokenizer_path
    if not tokenizer.is_file():
        raise ModelRepoError(f"tokenizer file missing: {tokenizer}")
    try:
        encoder = TextEncoder(tokenizer, max_length or manifest.max_length)
    except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception for unreadable files
        raise ModelRepoError(f"{tokenizer} is not a valid tokenizer: {exc}") from exc
    cache = None
    if engine_cache is not None and expected == NAMES["tensorrt"]:
        cache = prepare_engine_cache(engine_cache / manifest.name / f"{manifest.version}-{chosen}", version.path)
    gpu = GpuOptions(device_id=device_id, engine_cache=cache, profile=profile)
    runtime = create_session(path, provider, intra_threads, gpu=gpu, profile=True)
    runtime.session.run(None, encoder.encode(["placement"]).feeds())
    placement = runtime.end_profiling()
    solo_threads = available_cores() if solo_threads is None else solo_threads
    solo = None
    if not runtime.on_gpu and intra_threads > 0 and solo_threads > intra_threads:
        solo = create_session(path, "cpu", solo_threads, spinning=False)
    log.info(
        "model loaded",
        extra={"model": manifest.name, "version": manifest.version, "variant": chosen, "provider": runtime.provider,
               "intra_threads": intra_threads, "solo_threads": solo_threads if solo else 0,
               "placement": placement.summary()},
    )
    return LoadedModel(version=version, variant=chosen, runtime=runtime, encoder=encoder, solo=solo,
                       placement=placement)


def prepare_engine_cache(path: Path, model_dir: Path) -> Path:
    """Create a TensorRT engine cache folder and prove it writable; never inside the (read-only) model version."""
    path = path.absolute()
    if path.is_relative_to(model_dir.absolute()):
        raise ModelRepoError(f"engine cache {path} is inside the model version {model_dir}; model repositories are "
                             f"read-only where they are served: set model.engine_cache_dir elsewhere")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ModelRepoError(f"TensorRT engine cache {path} is not writable by uid {os.getuid()} ({exc.strerror}): "
                             f"set model.engine_cache_dir to a writable folder") from None
    return path


def open_model_dir(path: Path, **kwargs) -> LoadedModel:
    """Open a version directory (`<root>/<name>/<version>`) or resolve the newest under `<root>/<name>`."""
    return open_model(version_at(path), **kwargs)
