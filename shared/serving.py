"""A model served behind a dynamic batcher: token limits, timing, and errors mapped to gRPC codes.

No wire types here: what a request ran on is a `ModelRef`, and shared/rpc.py turns it and `Timing` into protos."""
from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nlpsuite.shared.batcher import (
    BatcherClosedError, BatchStats, DeadlineExpiredError, DynamicBatcher, Lane, QueueFullError,
)
from nlpsuite.shared.config import BatchSettings, ModelSettings
from nlpsuite.shared import tracing
from nlpsuite.shared.errors import DeadlineExceeded, InvalidArgument, Overloaded, Unavailable
from nlpsuite.shared.lru import LruCache
from nlpsuite.shared.metrics import Metrics
from nlpsuite.shared.model import LoadedModel, open_model, softmax
from nlpsuite.shared.model_repo import ModelRepoError, ModelRepository, Task
from nlpsuite.shared.offload import run_cpu, text_chars
from nlpsuite.shared.providers import GPU_PROVIDERS, ShapeProfile
from nlpsuite.shared.runtime import expected_provider, owned_cores
from nlpsuite.shared.self_test import read_golden, run_self_test
from nlpsuite.shared.tokenization import TextTooLongError

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 60.0  # how long a replaced version gets to finish its queued texts
WARMUP_TEXTS = ("warm up", "a somewhat longer sentence to warm up the runtime with a few more tokens in it")


@dataclass
class Timing:
    """Microseconds per stage for one request (queue and inference: the slowest of its texts)."""

    started: float  # time.perf_counter() at receipt
    tokenize_us: int = 0
    queue_us: int = 0
    inference_us: int = 0

    def stages(self) -> dict[str, int]:
        return {"tokenize": self.tokenize_us, "queue": self.queue_us, "inference": self.inference_us,
                "total": int((time.perf_counter() - self.started) * 1e6)}


@dataclass(frozen=True)
class ModelRef:
    """Which model version and variant ran a request, on which provider (empty fields: not loaded)."""

    name: str
    version: str = ""
    variant: str = ""
    provider: str = ""


@dataclass(frozen=True)
class Inference:
    outputs: np.ndarray  # [n, labels] probabilities (classifier) or [n, dim] unit embeddings (embedder)
    truncated: list[bool]
    model: ModelRef  # the version that really ran these texts (it may change on hot reload)


def cache_key(version: str, text: str) -> tuple[str, bytes]:
    """Whitespace runs collapsed: the tokenizers split on whitespace, so such texts give the same ids."""
    return version, hashlib.blake2b(" ".join(text.split()).encode("utf-8"), digest_size=16).digest()


@dataclass(frozen=True)
class _Active:
    """The version serving now and its own batcher: a request is tokenized and run by one version only."""

    model: LoadedModel
    batcher: DynamicBatcher


class ServedModel:
    """One ONNX model: loaded, checked and warmed up off the event loop, run through a DynamicBatcher.

    With `settings.version` None and `reload_interval_s` > 0 it polls the repository and hot-swaps to a newer
    published version once that version has loaded, warmed up and matched the serving one (task, labels,
    output width). Requests already queued finish on the old version; a version that fails is refused once,
    logged with the reason, and never retried.
    """

    def __init__(self, settings: ModelSettings, batch: BatchSettings, max_tokens: int, reject_overlong: bool,
                 metrics: Metrics | None = None, field: str = "texts", task: Task | None = None) -> None:
        self.settings = settings
        self.batch_settings = batch
        self.max_tokens = max_tokens
        self.reject_overlong = reject_overlong
        self.metrics = metrics
        self.field = field
        self.task = task  # the task the service needs; another fails loading with a clear message
        self._active: _Active | None = None
        self._refused: dict[str, str] = {}  # version -> why it was refused
        self._watcher: asyncio.Task | None = None
        self._reload_lock = asyncio.Lock()
        # (version, text hash) -> (output row, truncated); None: off
        self.cache: LruCache[tuple[str, bytes], tuple[np.ndarray, bool]] | None = (
            LruCache(settings.response_cache) if settings.response_cache else None)

    @property
    def model(self) -> LoadedModel | None:
        return self._active.model if self._active is not None else None

    @property
    def batcher(self) -> DynamicBatcher | None:
        return self._active.batcher if self._active is not None else None

    @property
    def loaded(self) -> bool:
        return self._active is not None

    @property
    def labels(self) -> list[str]:
        assert self._active is not None
        return list(self._active.model.manifest.labels)

    @property
    def refused(self) -> dict[str, str]:
        return dict(self._refused)

    def info(self) -> ModelRef:
        return self._info(self.model)

    def _info(self, model: LoadedModel | None) -> ModelRef:
        if model is None:
            return ModelRef(name=self.settings.name)
        m = model.manifest
        return ModelRef(name=m.name, version=m.version, variant=model.variant, provider=model.provider)

    # -- lifecycle -------------------------------------------------------------------------------------
    def _load_blocking(self, version: str | None) -> LoadedModel:
        """Open, check and warm up a version; ModelRepoError names the version, the file and the problem."""
        s = self.settings
        resolved = ModelRepository(s.repository).resolve(s.name, version)
        manifest = resolved.manifest
        where = f"model {s.name!r} version {manifest.version} ({resolved.path})"
        if self.task is not None and manifest.task != self.task:
            raise ModelRepoError(f"{where}: manifest.json says task {manifest.task!r}; this service needs a "
                                 f"{self.task!r} model")
        if manifest.task == "classify" and not manifest.labels:
            raise ModelRepoError(f"{where}: manifest.json lists no labels for a classifier")
        max_batch, max_batch_tokens = self.batch_settings.limits(expected_provider(s.provider) in GPU_PROVIDERS)
        max_length = min(self.max_tokens, manifest.max_length)
        try:
            model = open_model(resolved, provider=s.provider, variant=s.variant, intra_threads=s.intra_threads,
                               max_length=max_length, solo_threads=s.solo_threads, device_id=s.device_id,
                               engine_cache=s.engine_cache(),
                               profile=ShapeProfile.for_batcher(max_batch, max_batch_tokens, max_length))
        except ModelRepoError as exc:
            raise ModelRepoError(f"{where}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime and tokenizers raise their own types
            raise ModelRepoError(f"{where}: {str(exc).splitlines()[0][:1000] if str(exc) else type(exc).__name__}"
                                 ) from exc
        # Warm-up: the first runs allocate and pick kernels; do them before reporting SERVING. They also
        # prove that the model's outputs fit its manifest.
        # (A TensorRT session builds its engines here, for every shape up to the batcher's limits.)
        sessions = (False, True) if model.solo is not None else (False,)  # alone=True: the solo session
        for texts, alone in itertools.product(([WARMUP_TEXTS[0]], list(WARMUP_TEXTS), list(WARMUP_TEXTS) * 4),
                                              sessions):
            texts = texts[:max_batch]
            try:
                out = model.predict(texts, alone)
            except Exception as exc:  # noqa: BLE001
                raise ModelRepoError(f"{where}: warm-up inference failed: {str(exc).splitlines()[0][:300]}"
                                     ) from exc
            self._check_outputs(model, out, len(texts), where)
        if s.self_test:
            self._self_test(model, resolved.path, max_batch, where)
        return model

    def _self_test(self, model: LoadedModel, version_dir, max_batch: int, where: str) -> None:
        """Run the version's golden texts on the provider we got; refuse the variant if they drift past its bound."""
        golden = read_golden(version_dir)
        if golden is None:
            log.warning("model has no golden set: self-test skipped", extra={"model": self.settings.name,
                                                                             "version": model.manifest.version})
            return
        try:
            result = run_self_test(golden, model.variant, model.provider, model.run_ids, model.encoder.max_length,
                                   max_batch)
        except Exception as exc:  # noqa: BLE001
            raise ModelRepoError(f"{where}: self-test inference failed: {str(exc).splitlines()[0][:300]}") from exc
        model.self_test = result
        if result is None:
            return
        if self.metrics is not None:
            self.metrics.self_test_drift.labels(self.metrics.service, self.settings.name, model.manifest.version,
                                                model.variant, model.provider).set(result.drift)
        if not result.passed:
            raise ModelRepoError(f"{where}: {result.problem()}")

    @staticmethod
    def _check_outputs(model: LoadedModel, out: np.ndarray, rows: int, where: str) -> None:
        m = model.manifest
        file = model.runtime.path.name
        if out.ndim != 2 or out.shape[0] != rows:
            raise ModelRepoError(f"{where}: {file} returned shape {list(out.shape)} for {rows} texts")
        if m.task == "classify" and out.shape[1] != len(m.labels):
            raise ModelRepoError(f"{where}: manifest.json lists {len(m.labels)} labels but {file} outputs "
                                 f"{out.shape[1]} scores per text")
        if m.task == "embed" and m.embedding_dim is not None and out.shape[1] != m.embedding_dim:
            raise ModelRepoError(f"{where}: manifest.json says embedding_dim {m.embedding_dim} but {file} outputs "
                                 f"{out.shape[1]} dimensions")
        if not np.isfinite(out).all():
            raise ModelRepoError(f"{where}: {file} returned non-finite values on the warm-up texts")

    @staticmethod
    def _incompatible(old: LoadedModel, new: LoadedModel) -> str | None:
        """Why `new` cannot replace `old` under running clients, or None."""
        a, b = old.manifest, new.manifest
        if a.task != b.task:
            return f"task {b.task!r} differs from the serving version's {a.task!r}"
        if a.task == "classify" and list(a.labels) != list(b.labels):
            return f"labels {b.labels} differ from the serving version's {a.labels}"
        width = new.predict([WARMUP_TEXTS[0]]).shape[1]
        old_width = old.predict([WARMUP_TEXTS[0]]).shape[1]
        if width != old_width:
            return f"outputs {width} values per text, the serving version {old_width}"
        return None

    async def load(self) -> None:
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(None, self._load_blocking, self.settings.version)
        await self._activate(model)
        if self.settings.version is None and self.settings.reload_interval_s > 0:
            self._watcher = asyncio.create_task(self._watch(), name=f"reload-{self.settings.name}")

    async def _activate(self, model: LoadedModel) -> None:
        """Swap in `model` with a fresh batcher; the old version finishes what it has queued, then stops."""
        b = self.batch_settings
        name = model.manifest.name
        max_batch, max_batch_tokens = b.limits(model.runtime.on_gpu)
        batcher = DynamicBatcher(
            functools.partial(self._run_batch, model), max_batch_size=max_batch, max_batch_tokens=max_batch_tokens,
            max_delay_s=b.max_delay_ms / 1000, capacity=b.queue_capacity,
            workers=b.workers, on_batch=self._on_batch, on_depth=self._on_depth, on_drop=self._on_drop, name=name,
            pin_cores=owned_cores() if b.pin_workers and not model.runtime.on_gpu else None, bulk_share=b.bulk_share,
            bulk_batch_tokens=b.bulk_tokens(model.runtime.on_gpu),
        )
        await batcher.start()
        old, self._active = self._active, _Active(model, batcher)
        if self.metrics is not None:
            gauge = self.metrics.model_version
            if old is not None:
                gauge.remove(self.metrics.service, self.settings.name, old.model.manifest.version,
                             old.model.variant, old.model.provider)
            gauge.labels(self.metrics.service, self.settings.name, model.manifest.version, model.variant,
                         model.provider).set(1)
        log.info("model ready", extra={"model": name, "version": model.manifest.version, "variant": model.variant,
                                       "provider": model.provider, "max_tokens": self.max_tokens,
                                       "max_batch_tokens": batcher.max_batch_tokens,
                                       "max_batch_size": batcher.max_batch_size,
                                       "solo_threads": model.solo_threads, "pinned_cores": batcher.pin_cores,
                                       "self_test": model.self_test.summary() if model.self_test else None,
                                       "placement": model.placement.summary() if model.placement else None})
        if old is not None:
            await old.batcher.drain(DRAIN_TIMEOUT_S)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        if self._active is not None:
            await self._active.batcher.stop()

    # -- hot reload ------------------------------------------------------------------------------------
    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_interval_s)
            try:
                await self.reload()
            except Exception:  # noqa: BLE001 - the watcher must outlive a bad poll (e.g. an unreadable dir)
                log.exception("model reload check failed", extra={"model": self.settings.name})

    async def reload(self) -> str | None:
        """Switch to the newest published version if it is not the one serving.

        Returns "switched", "refused" (the old version keeps serving; the reason is logged and kept in
        `refused`), or None when there is nothing new.
        """
        async with self._reload_lock:
            if self._active is None:
                return None
            loop = asyncio.get_running_loop()
            s = self.settings
            versions = await loop.run_in_executor(None, ModelRepository(s.repository).versions, s.name)
            current = self._active.model.manifest.version
            if not versions or versions[-1] == current or versions[-1] in self._refused:
                return None
            newest = versions[-1]
            try:
                model = await loop.run_in_executor(None, self._load_blocking, newest)
                problem = await loop.run_in_executor(None, self._incompatible, self._active.model, model)
                if problem is not None:
                    raise ModelRepoError(f"model {s.name!r} version {newest}: {problem}")
            except Exception as exc:  # noqa: BLE001 - any failure refuses the version and keeps the old one
                self._refused[newest] = str(exc)
                if self.metrics is not None:
                    self.metrics.model_reloads.labels(self.metrics.service, s.name, "refused").inc()
                log.error("new model version refused; the serving one stays",
                          extra={"model": s.name, "version": newest, "serving": current, "reason": str(exc)})
                return "refused"
            await self._activate(model)
            if self.metrics is not None:
                self.metrics.model_reloads.labels(self.metrics.service, s.name, "switched").inc()
            log.info("model switched", extra={"model": s.name, "version": newest, "previous": current})
            return "switched"

    # -- batching --------------------------------------------------------------------------------------
    def _on_batch(self, stats: BatchStats) -> None:
        if self.metrics is not None:
            self.metrics.batch_size.labels(self.metrics.service, self.settings.name).observe(stats.size)
            self.metrics.batch_tokens.labels(self.metrics.service, self.settings.name).observe(stats.tokens)
            self.metrics.texts_run.labels(self.metrics.service, self.settings.name, stats.lane).inc(stats.size)

    def _on_depth(self, lane: Lane, depth: int) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.labels(self.metrics.service, self.settings.name, lane).set(depth)

    def _on_drop(self, lane: Lane, reason: str, texts: int) -> None:
        if self.metrics is not None:
            self.metrics.dropped_texts.labels(self.metrics.service, self.settings.name, lane, reason).inc(texts)

    @staticmethod
    def _run_batch(model: LoadedModel, ids: list[list[int]], alone: bool) -> np.ndarray:
        out = model.run(model.encoder.pad(ids), alone)
        return softmax(out) if model.manifest.task == "classify" else out

    # -- inference -------------------------------------------------------------------------------------
    def _tokenize(self, model: LoadedModel, texts: Sequence[str]) -> tuple[list[list[int]], list[bool]]:
        tokens = model.encoder.tokenize(list(texts))
        if self.reject_overlong:
            try:
                tokens.check_fits(model.encoder.max_length)
            except TextTooLongError as exc:
                raise InvalidArgument(str(exc).replace("texts[", f"{self.field}[", 1)) from None
        return tokens.ids, tokens.truncated

    async def infer(self, texts: Sequence[str], timing: Timing, deadline: float | None = None,
                    lane: Lane = "interactive", solo: bool = True) -> Inference:
        """Run texts through the batcher's `lane` (those in the response cache, if on, are answered from it).
        `deadline` is time.monotonic()-based (None: no deadline); `solo`: see Batcher.submit_many."""
        active = self._active  # one version for the whole request, even if a reload swaps meanwhile
        if active is None:
            raise Unavailable(f"model {self.settings.name} is not loaded")
        if self.cache is None:
            outputs, truncated = await self._run(active, texts, timing, deadline, lane, solo)
            return Inference(outputs=outputs, truncated=truncated, model=self._info(active.model))
        version = active.model.manifest.version
        keys = [cache_key(version, text) for text in texts]
        found = [self.cache.get(key) for key in keys]
        missing = [i for i, hit in enumerate(found) if hit is None]
        self._count_cache(len(texts) - len(missing), len(missing))
        if missing:
            outputs, truncated = await self._run(active, [texts[i] for i in missing], timing, deadline, lane,
                                                 solo)
            for row, i in enumerate(missing):
                found[i] = entry = (outputs[row].copy(), truncated[row])  # a copy: the batch's array is not kept
                entry[0].setflags(write=False)
                self.cache.put(keys[i], entry)
        rows = [hit for hit in found if hit is not None]
        outputs = np.stack([row for row, _ in rows]) if rows else np.zeros((0, 0), np.float32)
        return Inference(outputs=outputs, truncated=[flag for _, flag in rows], model=self._info(active.model))

    def _count_cache(self, hits: int, misses: int) -> None:
        if self.metrics is not None:
            for result, n in (("hit", hits), ("miss", misses)):
                if n:
                    self.metrics.response_cache.labels(self.metrics.service, self.settings.name, result).inc(n)

    async def _run(self, active: _Active, texts: Sequence[str], timing: Timing, deadline: float | None,
                   lane: Lane, solo: bool) -> tuple[np.ndarray, list[bool]]:
        try:
            active.batcher.admit(len(texts), deadline, lane)  # shed before paying for tokenization
            t0 = time.perf_counter()
            with tracing.span("tokenize", attributes={"texts": len(texts)}):
                ids, truncated = await run_cpu(text_chars(texts), self._tokenize, active.model, texts)
            timing.tokenize_us += int((time.perf_counter() - t0) * 1e6)
            results = await active.batcher.submit(ids, deadline, lane, solo)
        except QueueFullError as exc:
            raise Overloaded(f"{self.settings.name}: {exc}; retry later") from None
        except DeadlineExpiredError:
            raise DeadlineExceeded("deadline passed before the request reached the model") from None
        except BatcherClosedError as exc:
            raise Unavailable(f"model {self.settings.name}: {exc}") from None
        queue_us = max((r.queue_us for r in results), default=0)
        inference_us = max((r.inference_us for r in results), default=0)
        timing.queue_us = max(timing.queue_us, queue_us)
        timing.inference_us = max(timing.inference_us, inference_us)
        if tracing.enabled() and results:  # the slowest text's queue wait and batch, as the batcher timed them
            now = time.time_ns()
            ran_from = now - inference_us * 1000
            tracing.record("queue", ran_from - queue_us * 1000, ran_from, {"lane": lane})
            tracing.record("inference", ran_from, now, {"model": self.settings.name, "lane": lane,
                                                        "batch_size": max(r.batch_size for r in results)})
        outputs = np.stack([r.output for r in results]) if results else np.zeros((0, 0), np.float32)
        return outputs, truncated

