"""A model served behind a dynamic batcher: token limits, timing, and errors mapped to gRPC codes."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from nlpsuite.shared.batcher import (
    BatcherClosedError, BatchStats, DeadlineExpiredError, DynamicBatcher, QueueFullError,
)
from nlpsuite.shared.config import BatchSettings, ModelSettings
from nlpsuite.shared.errors import DeadlineExceeded, InvalidArgument, Overloaded, Unavailable
from nlpsuite.shared.metrics import Metrics
from nlpsuite.shared.model import LoadedModel, open_model, softmax
from nlpsuite.shared.model_repo import ModelRepository
from nlpsuite.v1 import common_pb2

log = logging.getLogger(__name__)

WARMUP_TEXTS = ("warm up", "a somewhat longer sentence to warm up the runtime with a few more tokens in it")


@dataclass
class Timing:
    """Microseconds per stage for one request (queue and inference: the slowest of its texts)."""

    started: float  # time.perf_counter() at receipt
    tokenize_us: int = 0
    queue_us: int = 0
    inference_us: int = 0

    def proto(self) -> common_pb2.Timing:
        total = int((time.perf_counter() - self.started) * 1e6)
        return common_pb2.Timing(tokenize_us=self.tokenize_us, queue_us=self.queue_us,
                                 inference_us=self.inference_us, total_us=total)

    def stages(self) -> dict[str, int]:
        return {"tokenize": self.tokenize_us, "queue": self.queue_us, "inference": self.inference_us,
                "total": int((time.perf_counter() - self.started) * 1e6)}


@dataclass(frozen=True)
class Inference:
    outputs: np.ndarray  # [n, labels] probabilities (classifier) or [n, dim] unit embeddings (embedder)
    truncated: list[bool]


class ServedModel:
    """One ONNX model: loaded and warmed up off the event loop, run through a DynamicBatcher."""

    def __init__(self, settings: ModelSettings, batch: BatchSettings, max_tokens: int, reject_overlong: bool,
                 metrics: Metrics | None = None, field: str = "texts") -> None:
        self.settings = settings
        self.batch_settings = batch
        self.max_tokens = max_tokens
        self.reject_overlong = reject_overlong
        self.metrics = metrics
        self.field = field
        self.model: LoadedModel | None = None
        self.batcher: DynamicBatcher | None = None

    @property
    def loaded(self) -> bool:
        return self.model is not None and self.batcher is not None

    @property
    def labels(self) -> list[str]:
        assert self.model is not None
        return list(self.model.manifest.labels)

    def info(self) -> common_pb2.ModelInfo:
        if self.model is None:
            return common_pb2.ModelInfo(name=self.settings.name)
        m = self.model.manifest
        return common_pb2.ModelInfo(name=m.name, version=m.version, variant=self.model.variant,
                                    provider=self.model.provider)

    # -- lifecycle -------------------------------------------------------------------------------------
    def _load_blocking(self) -> LoadedModel:
        s = self.settings
        version = ModelRepository(s.repository).resolve(s.name, s.version)
        model = open_model(version, provider=s.provider, variant=s.variant, intra_threads=s.intra_threads,
                           max_length=min(self.max_tokens, version.manifest.max_length))
        # Warm-up: the first runs allocate and pick kernels; do them before reporting SERVING.
        for texts in ([WARMUP_TEXTS[0]], list(WARMUP_TEXTS), list(WARMUP_TEXTS) * 4):
            model.predict(texts)
        return model

    async def load(self) -> None:
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(None, self._load_blocking)
        self.model = model
        b = self.batch_settings
        name = model.manifest.name
        self.batcher = DynamicBatcher(
            self._run_batch, max_batch_size=b.max_batch_size, max_batch_tokens=b.max_batch_tokens,
            max_delay_s=b.max_delay_ms / 1000, capacity=b.queue_capacity, workers=b.workers,
            on_batch=self._on_batch, on_depth=self._on_depth, name=name,
        )
        await self.batcher.start()
        log.info("model ready", extra={"model": name, "version": model.manifest.version, "variant": model.variant,
                                       "provider": model.provider, "max_tokens": self.max_tokens})

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()

    def _on_batch(self, stats: BatchStats) -> None:
        if self.metrics is not None:
            self.metrics.batch_size.labels(self.metrics.service, self.settings.name).observe(stats.size)
            self.metrics.batch_tokens.labels(self.metrics.service, self.settings.name).observe(stats.tokens)

    def _on_depth(self, depth: int) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.labels(self.metrics.service, self.settings.name).set(depth)

    def _run_batch(self, ids: list[list[int]]) -> np.ndarray:
        assert self.model is not None
        out = self.model.run(self.model.encoder.pad(ids))
        return softmax(out) if self.model.manifest.task == "classify" else out

    # -- inference -------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> tuple[list[list[int]], list[bool]]:
        """Token ids cut to the token limit (keeping the final [SEP]), or INVALID_ARGUMENT if rejecting."""
        if self.model is None:
            raise Unavailable(f"model {self.settings.name} is not loaded")
        limit = self.model.encoder.max_length
        ids_list = self.model.encoder.token_ids(list(texts))
        truncated = [len(ids) > limit for ids in ids_list]
        if self.reject_overlong and any(truncated):
            i = truncated.index(True)
            raise InvalidArgument(f"{self.field}[{i}] has {len(ids_list[i])} tokens, over the limit of {limit}")
        clipped = [ids if len(ids) <= limit else ids[: limit - 1] + ids[-1:] for ids in ids_list]
        return clipped, truncated

    async def infer(self, texts: Sequence[str], timing: Timing, deadline: float | None = None) -> Inference:
        """Run texts through the batcher. `deadline` is time.monotonic()-based (None: no deadline)."""
        if not self.loaded:
            raise Unavailable(f"model {self.settings.name} is not loaded")
        t0 = time.perf_counter()
        ids, truncated = self.tokenize(texts)
        timing.tokenize_us += int((time.perf_counter() - t0) * 1e6)
        assert self.batcher is not None
        try:
            results = await self.batcher.submit(ids, deadline)
        except QueueFullError as exc:
            raise Overloaded(f"{self.settings.name}: {exc}; retry later") from None
        except DeadlineExpiredError:
            raise DeadlineExceeded("deadline passed before the request reached the model") from None
        except BatcherClosedError as exc:
            raise Unavailable(f"model {self.settings.name}: {exc}") from None
        timing.queue_us = max(timing.queue_us, max((r.queue_us for r in results), default=0))
        timing.inference_us = max(timing.inference_us, max((r.inference_us for r in results), default=0))
        outputs = np.stack([r.output for r in results]) if results else np.zeros((0, 0), np.float32)
        return Inference(outputs=outputs, truncated=truncated)


def deadline_of(context) -> float | None:
    """The RPC's deadline on the time.monotonic() clock, or None."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


OnReady = Callable[[], None]
