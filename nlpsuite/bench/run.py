"""The order of one `nlpsuite bench` run, and its two profiles (full and --quick)."""
from __future__ import annotations

import contextlib
import importlib.metadata
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel

from nlpsuite.bench.bare import BarePoint, BareResult, BareSpec
from nlpsuite.bench.load import LoadResult, LoadSpec
from nlpsuite.bench.peers import PeerSpec
from nlpsuite.bench.procs import Child, cores, peak_rss_mb, python_module
from nlpsuite.bench.recommend import run_recommend
from nlpsuite.bench.results import FP32_SERVERS, BenchResult, HeadToHead, Meta, Round, ServerRun
from nlpsuite.bench.texts import TextSet, make_textset
from nlpsuite.bench.torch_models import SelectResult, SelectSpec, require_torch
from nlpsuite.shared.host import cpu, isa
from nlpsuite.shared.local_run import free_port, wait_serving
from nlpsuite.shared.model_repo import ModelRepoError, ModelRepository, ModelVersion
from nlpsuite.v1 import sentiment_pb2

SATURATION_LEVELS = 2  # the head to head tries each contender at its two best points and keeps the better
SENTIMENT_SERVICE = sentiment_pb2.DESCRIPTOR.services_by_name["SentimentService"].full_name


class Profile(BaseModel):
    texts: int
    probe_texts: int
    levels: list[int]
    warmup_s: float
    seconds: float
    probe_requests: int  # concurrency-1 requests on ~32-token texts, our service (the acceptance check)
    peer_probe_requests: int  # the same for the PyTorch servers (for the table only)
    bare_batches: list[int]
    bare_seconds: float
    gemm_seconds: float  # per GEMM shape, for the GEMM-only limit
    latency_requests: int
    torch_batch: int
    torch_seconds: float
    agreement_texts: int
    recommend_cold: int
    recommend_warm: int
    rounds: int  # head-to-head rounds the ratios come from (medians)
    round_warmup_s: float
    round_seconds: float  # per contender and round: short, so that a round is over before the host drifts
    round_latency_requests: int  # per round: single texts on the bare runtime, and the service's c=1 probe


FULL = Profile(texts=512, probe_texts=64, levels=[1, 8, 32, 128], warmup_s=2.0, seconds=8.0, probe_requests=300,
               peer_probe_requests=100, bare_batches=[1, 8, 16, 32, 64], bare_seconds=2.0,
               gemm_seconds=1.0, latency_requests=300,
               torch_batch=32, torch_seconds=3.0, agreement_texts=64, recommend_cold=20, recommend_warm=50,
               rounds=5, round_warmup_s=1.0, round_seconds=3.0, round_latency_requests=150)
QUICK = Profile(texts=64, probe_texts=16, levels=[1, 8], warmup_s=0.3, seconds=1.0, probe_requests=20,
                peer_probe_requests=20, bare_batches=[1, 8], bare_seconds=0.5,
                gemm_seconds=0.2, latency_requests=20, torch_batch=8,
                torch_seconds=0.5, agreement_texts=16, recommend_cold=3, recommend_warm=5,
                rounds=1, round_warmup_s=0.3, round_seconds=1.0, round_latency_requests=10)


class BenchConfig(BaseModel):
    repository: Path
    model: str = "sentiment"
    version: str | None = None
    embedder: str | None = "embedder"  # None: skip the recommend cache check
    data_dir: Path
    mix: str = "medium"
    provider: str = "auto"
    quick: bool = False
    levels: list[int] | None = None  # None: the profile's
    seconds: float | None = None  # None: the profile's
    out: Path = Path("bench-results")
    publish: Path | None = None
    command: str = "nlpsuite bench"

    @property
    def profile(self) -> Profile:
        base = QUICK if self.quick else FULL
        updates = {k: v for k, v in (("levels", self.levels), ("seconds", self.seconds)) if v is not None}
        return base.model_copy(update=updates)


def _log(started: float, message: str) -> None:
    print(f"[{time.monotonic() - started:6.1f} s] {message}", flush=True)


def _layouts(n: int) -> list[tuple[int, int]]:
    """(threads per run, concurrent runs): all cores on one run, or one core per run."""
    return [(n, 1), (1, n)] if n > 1 else [(1, 1)]


def _host() -> dict[str, object]:
    name, flags = cpu()
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8")
            if f in flags]
    gpu = "none"
    try:
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            import subprocess

            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=10)
            gpu = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "none"
    except (ImportError, OSError, IndexError):
        pass
    return {"cpu": name, "cores": cores(), "simd": ", ".join(simd) or "none of avx2/avx512", "isa": isa(flags),
            "gpu": gpu}


def _libraries() -> dict[str, str]:
    versions = {}
    for lib in ("nlpsuite", "onnxruntime-gpu", "onnxruntime", "torch", "transformers", "grpcio"):
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def resolve_with_checkpoint(config: BenchConfig) -> tuple[ModelVersion, Path]:
    version = ModelRepository(config.repository).resolve(config.model, config.version)
    checkpoint = version.checkpoint_path
    if checkpoint is None:
        raise ModelRepoError(
            f"model {config.model} version {version.manifest.version} under {config.repository} has no PyTorch "
            f"checkpoint, and the PyTorch peers must serve the same fine-tuned model: rebuild it with "
            f"`nlpsuite build ... --save-checkpoint`")
    if version.manifest.task != "classify":
        raise ModelRepoError(f"model {config.model} is a {version.manifest.task!r} model; the bench needs the "
                             f"sentiment classifier")
    return version, checkpoint


class _Runner:
    def __init__(self, config: BenchConfig, version: ModelVersion, checkpoint: Path, texts: TextSet,
                 started: float) -> None:
        self.config, self.version, self.checkpoint, self.texts = config, version, checkpoint, texts
        self.profile = config.profile
        self.logs = config.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.started = started
        # name -> how to start that server again (the argument names its child process and log)
        self._starters: dict[str, Callable[[str], contextlib.AbstractContextManager[_Started]]] = {}

    def log(self, message: str) -> None:
        _log(self.started, message)

    def _child_json(self, name: str, module: str, spec: BaseModel, timeout: float) -> str:
        spec_path, out_path = self.logs / f"{name}.spec.json", self.logs / f"{name}.out.json"
        spec_path.write_text(spec.model_dump_json())
        Child(name, python_module(module, str(spec_path), str(out_path)), self.logs).wait(timeout)
        return out_path.read_text()

    def select_torch(self) -> SelectResult:
        p = self.profile
        spec = SelectSpec(checkpoint=self.checkpoint, max_length=self.version.manifest.max_length,
                          texts=self.texts.texts, batch=p.torch_batch, layouts=_layouts(cores()),
                          seconds=p.torch_seconds, agreement_texts=p.agreement_texts)
        return SelectResult.model_validate_json(self._child_json("torch-select", "nlpsuite.bench.torch_models",
                                                                 spec, 900))

    def bare(self, name: str, batches: list[int], layouts: list[tuple[int, int]], latency_threads: list[int],
             latency_requests: int, seconds: float, gemm: bool = False) -> BareResult:
        c = self.config
        spec = BareSpec(repository=c.repository, model=c.model, version=self.version.manifest.version,
                        provider=c.provider, texts=self.texts.texts, probe=self.texts.probe, batches=batches,
                        layouts=layouts, seconds=seconds, latency_threads=latency_threads,
                        latency_requests=latency_requests, gemm_seconds=self.profile.gemm_seconds if gemm else 0.0)
        return BareResult.model_validate_json(self._child_json(name, "nlpsuite.bench.bare", spec, 900))

    def drive(self, name: str, server: _Started, levels: list[int], probe_requests: int,
              warmup_s: float, seconds: float) -> LoadResult:
        spec = LoadSpec(target=server.target, server_pid=server.child.pid,
                        metrics_url=f"http://127.0.0.1:{server.metrics_port}/metrics", texts=self.texts.texts,
                        mean_tokens=self.texts.mean_tokens, levels=levels, warmup_s=warmup_s, seconds=seconds,
                        probe=self.texts.probe, probe_requests=probe_requests)
        budget = len(levels) * (warmup_s + seconds + 130) + probe_requests * 2 + 60
        return LoadResult.model_validate_json(self._child_json(f"load-{name}", "nlpsuite.bench.load", spec, budget))

    # -- servers: each started the same way for its sweep and again for the head-to-head ----------------------
    def _service_config(self, name: str) -> tuple[Path, int, int]:
        c = self.config
        port, metrics_port = free_port(), free_port()
        config = self.logs / f"{name}.yaml"
        config.write_text(
            f"log_level: WARNING\nsentiment:\n  host: 127.0.0.1\n  port: {port}\n  metrics_port: {metrics_port}\n"
            f"  model:\n    name: {c.model}\n    repository: {c.repository.resolve()}\n"
            f"    version: '{self.version.manifest.version}'\n    provider: {c.provider}\n")
        return config, port, metrics_port

    @contextlib.contextmanager
    def _service(self, name: str = "sentiment-service") -> Iterator[_Started]:
        config, port, metrics_port = self._service_config(name)
        child = Child(name, python_module("nlpsuite.cli", "serve", "sentiment", "--config", str(config)), self.logs)
        try:
            wait_serving(f"127.0.0.1:{port}", SENTIMENT_SERVICE, child.check_alive, timeout_s=300)
            yield _Started(child, port, metrics_port, _model_info(f"127.0.0.1:{port}"), config)
        finally:
            child.stop()

    @contextlib.contextmanager
    def _peer(self, name: str, setting: str, mode: str, threads: int, workers: int) -> Iterator[_Started]:
        port, metrics_port = free_port(), free_port()
        m = self.version.manifest
        spec = PeerSpec(checkpoint=self.checkpoint, max_length=m.max_length, model_name=m.name,
                        model_version=m.version, setting=setting, mode=mode, threads=threads, workers=workers,
                        port=port, metrics_port=metrics_port)
        spec_path = self.logs / f"{name}.spec.json"
        spec_path.write_text(spec.model_dump_json())
        child = Child(name, python_module("nlpsuite.bench.peers", str(spec_path)), self.logs)
        try:
            wait_serving(f"127.0.0.1:{port}", SENTIMENT_SERVICE, child.check_alive, timeout_s=300)
            yield _Started(child, port, metrics_port, _model_info(f"127.0.0.1:{port}"), spec_path)
        finally:
            child.stop()

    def service(self) -> ServerRun:
        self._starters["service"] = self._service
        with self._service() as server:
            p = self.profile
            load = self.drive("service", server, p.levels, p.probe_requests, p.warmup_s, p.seconds)
            peak = peak_rss_mb(server.child.pid)
        from nlpsuite.shared.config import load_settings

        s = load_settings(server.config).sentiment
        info = server.info
        settings = {"workers": s.batch.workers, "ORT threads": s.model.intra_threads,
                    "max batch": s.batch.limits(info.provider != "CPUExecutionProvider")[0],
                    "max delay ms": s.batch.max_delay_ms}
        return ServerRun(name="service", label="our service (nlpsuite serve sentiment)", kind="service",
                         settings=settings, variant=info.variant, provider=info.provider, levels=load.levels,
                         probe=load.probe, peak_rss_mb=round(peak, 1))

    def peer(self, name: str, label: str, setting: str, mode: str, threads: int, workers: int) -> ServerRun:
        def start(child_name: str) -> contextlib.AbstractContextManager[_Started]:
            return self._peer(child_name, setting, mode, threads, workers)

        self._starters[name] = start
        with start(name) as server:
            p = self.profile
            load = self.drive(name, server, p.levels, p.peer_probe_requests, p.warmup_s, p.seconds)
            peak = peak_rss_mb(server.child.pid)
        settings = {"mode": mode, "torch threads": threads, "concurrent model calls": workers}
        if mode == "batched":
            spec = PeerSpec.model_validate_json(server.config.read_text())
            settings |= {"max batch": spec.max_batch_size, "max delay ms": spec.max_delay_ms}
        return ServerRun(name=name, label=label, kind="peer", settings=settings, variant=server.info.variant,
                         provider=server.info.provider, levels=load.levels, probe=load.probe,
                         peak_rss_mb=round(peak, 1))

    def head_to_head(self, bare: BareResult, servers: list[ServerRun]) -> HeadToHead:
        """The bare limit and each contender at saturation, again, in short alternating rounds.

        One noisy sweep window must not pick the point a contender is judged at: each round measures the bare
        runtime at the sweep's two best points and each server at the sweep's two highest concurrencies (beyond
        one), and the better of the two counts. The contenders are our service, the faster PyTorch FP32 server and
        the best-setting PyTorch server, all running at once (idle but for their own window). Each round also times
        single texts on the bare runtime (right after its throughput window) and ends with the service's
        concurrency-1 probe.

        (Alternating short blocks of service and bare single texts from one client process was tried and dropped:
        with the bare model in the client, the service's p50 doubled (4.4-5.1 ms alone, 5.8-10.5 ms alternated,
        gaps of 50 or 150 ms between blocks; an idle ONNX Runtime pool thread spins ~45 ms after each run).)"""
        p = self.profile
        fp32 = max((s for s in servers if s.name in FP32_SERVERS), key=lambda s: s.best.texts_per_s)
        contenders = [s for s in servers if s.name in ("service", "torch-best-batched")] + [fp32]
        levels = [c for c in p.levels if c > 1][-SATURATION_LEVELS:]
        points = sorted(bare.points, key=lambda pt: pt.texts_per_s, reverse=True)[:SATURATION_LEVELS]
        latency_threads = min(bare.single_text, key=lambda t: bare.single_text[t].p50_ms or float("inf"))
        rounds = []
        with contextlib.ExitStack() as stack:
            started = {s.name: stack.enter_context(self._starters[s.name](f"{s.name}-h2h")) for s in contenders}
            for r in range(p.rounds):
                # One layout per bare child (each point its own run): the two best may differ in layout.
                tried = [self.bare(f"bare-h2h-{r}-{i}", [pt.batch], [(pt.threads, pt.concurrent)],
                                   [latency_threads] if i == 0 else [], p.round_latency_requests, p.round_seconds)
                         for i, pt in enumerate(points)]
                top = max((t.best for t in tried), key=lambda pt: pt.texts_per_s)
                rates, at = {}, {}
                for s in contenders:
                    load = self.drive(f"{s.name}-h2h-{r}", started[s.name], levels, 0, p.round_warmup_s,
                                      p.round_seconds)
                    level = max(load.levels, key=lambda lv: lv.texts_per_s)
                    rates[s.name], at[s.name] = level.texts_per_s, level.concurrency
                c1 = self.drive(f"service-c1-h2h-{r}", started["service"], [], p.round_latency_requests, 0, 0)
                assert c1.probe is not None
                rounds.append(Round(bare_texts_per_s=top.texts_per_s, bare_point=_point(top),
                                    bare_single_text_p50_ms=tried[0].single_text[latency_threads].p50_ms,
                                    servers=rates, concurrency=at, service_c1_p50_ms=c1.probe.p50_ms))
                self.log(f"round {r + 1}/{p.rounds}: bare {top.texts_per_s:.1f} texts/s, "
                         + ", ".join(f"{name} {rate:.1f}" for name, rate in rates.items()))
        return HeadToHead(contenders=[s.name for s in contenders], levels=levels,
                          bare_points=[_point(pt) for pt in points], latency_threads=latency_threads, rounds=rounds)


def _point(point: BarePoint) -> str:
    return f"batch {point.batch}, {point.threads} threads x {point.concurrent} runs"


@dataclass(frozen=True)
class _Started:
    child: Child
    port: int
    metrics_port: int
    info: object  # common_pb2.ModelInfo
    config: Path  # the server's config (service) or spec (peer) file

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def _model_info(target: str):
    from nlpsuite.services.sentiment.client import SentimentClient

    with SentimentClient(target, timeout=60) as client:
        return client.analyze(["model info"]).model


def run_bench(config: BenchConfig) -> BenchResult:
    started, started_at = time.monotonic(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    load_start = os.getloadavg()[0]
    require_torch()
    version, checkpoint = resolve_with_checkpoint(config)
    movielens = config.data_dir / "movielens_latest_small"
    if config.embedder:  # fail now, not after minutes of measuring
        try:
            ModelRepository(config.repository).resolve(config.embedder)
        except ModelRepoError as exc:
            raise ModelRepoError(f"{exc}: the recommend cache check needs an embedder (--embedder NAME, or pass "
                                 f"--no-recommend)") from None
        if not (movielens / "movies.csv").is_file():
            raise ModelRepoError(f"{movielens} has no movies.csv: the recommend check needs MovieLens "
                                 f"(or pass --no-recommend)")
    p = config.profile
    texts = make_textset(config.data_dir, version.tokenizer_path, config.mix, p.texts, p.probe_texts)
    runner = _Runner(config, version, checkpoint, texts, started)
    n = cores()
    runner.log(f"{config.model} v{version.manifest.version}; {len(texts.texts)} {config.mix} texts, "
               f"mean {texts.mean_tokens:.1f} tokens; {n} cores; logs in {runner.logs}")

    runner.log("PyTorch settings, in-process")
    select = runner.select_torch()
    best = select.best
    runner.log(f"best PyTorch setting: {best.setting}, {best.threads} threads x {best.concurrent} calls "
               f"({best.texts_per_s:.1f} texts/s)")
    runner.log("bare runtime sweep, in-process")
    bare = runner.bare("bare", p.bare_batches, _layouts(n), sorted({1, n}), p.latency_requests, p.bare_seconds,
                       gemm=True)
    runner.log(f"bare limit: {bare.best.texts_per_s:.1f} texts/s at batch {bare.best.batch}")
    runner.log("our service")
    servers = [runner.service()]
    runner.log("PyTorch FP32 server, one model call per request")
    servers.append(runner.peer("torch-fp32", "PyTorch FP32 server, per request", "fp32", "per-request", 1, n))
    runner.log("PyTorch FP32 server, batched")
    servers.append(runner.peer("torch-fp32-batched", "PyTorch FP32 server, batched", "fp32", "batched", n, 1))
    runner.log(f"PyTorch best-setting server ({best.setting}), batched")
    servers.append(runner.peer("torch-best-batched", f"PyTorch {best.setting} server, batched", best.setting,
                               "batched", best.threads, best.concurrent))
    runner.log(f"head to head: the bare limit and each contender at its best concurrency, {p.rounds} alternating "
               f"round{'s' if p.rounds > 1 else ''}")
    h2h = runner.head_to_head(bare, servers)
    rec = None
    if config.embedder:
        runner.log("recommend: warm vs cold item cache")
        rec = run_recommend(config.repository, config.embedder, movielens, config.provider, runner.logs,
                            p.recommend_cold, p.recommend_warm)
    meta = Meta(started_at=started_at, wall_s=round(time.monotonic() - started, 1), command=config.command,
                quick=config.quick, host=_host(), load_avg_start=round(load_start, 2),
                load_avg_end=round(os.getloadavg()[0], 2), libraries=_libraries(),
                model=f"{version.manifest.name} v{version.manifest.version}", texts=texts.summary())
    result = BenchResult(meta=meta, torch_select=select, bare=bare, servers=servers, head_to_head=h2h,
                         recommend=rec)
    result.evaluate()
    return result

