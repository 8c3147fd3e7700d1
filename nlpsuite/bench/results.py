"""What one `nlpsuite bench` run measured (bench.json), and the acceptance checks computed from it."""
from __future__ import annotations

import statistics
from typing import Literal

from pydantic import BaseModel

from nlpsuite.bench.bare import BareResult
from nlpsuite.bench.load import Level
from nlpsuite.bench.recommend import RecommendResult
from nlpsuite.bench.stats import Latency
from nlpsuite.bench.torch_models import SelectResult

ACCEPTANCE_MIX = "medium"
FP32_SERVERS = ("torch-fp32", "torch-fp32-batched")  # the FP32 ratio is against the faster of the two


class Meta(BaseModel):
    started_at: str
    wall_s: float
    command: str
    quick: bool
    host: dict[str, object]  # cpu model, cores, SIMD flags, GPU
    load_avg_start: float
    load_avg_end: float
    libraries: dict[str, str]
    model: str  # name and version
    texts: dict[str, object]


class ServerRun(BaseModel):
    name: str  # service | torch-fp32 | torch-fp32-batched | torch-best-batched
    label: str
    kind: Literal["service", "peer"]
    settings: dict[str, object]
    variant: str
    provider: str
    levels: list[Level]
    probe: Latency | None = None  # concurrency 1 on ~32-token texts
    peak_rss_mb: float

    @property
    def best(self) -> Level:
        return max(self.levels, key=lambda level: level.texts_per_s)


class Round(BaseModel):
    """One head-to-head round: the bare limit, then each contender, each at the better of its two best points."""

    bare_texts_per_s: float
    bare_point: str  # the point that gave it
    bare_single_text_p50_ms: float | None  # at the thread count whose p50 was lowest in the sweep
    servers: dict[str, float]  # server name -> texts/s
    concurrency: dict[str, int]  # server name -> the concurrency that gave it
    service_c1_p50_ms: float | None  # concurrency 1 on ~32-token texts


class HeadToHead(BaseModel):
    """The figures the ratios come from: each contender's best point measured again in short alternating rounds.

    A shared host's speed drifts by tens of percent within a minute, so a ratio is taken within each round (between
    windows seconds apart) and the median over the rounds counts."""

    contenders: list[str]  # server names
    levels: list[int]  # the concurrencies each server is driven at in every round
    bare_points: list[str]  # the bare points tried in every round, e.g. "batch 1, 1 threads x 2 runs"
    latency_threads: int
    rounds: list[Round]

    def server(self, name: str) -> float:
        return statistics.median(r.servers[name] for r in self.rounds)

    def ratio(self, name: str, to: str | None = None) -> float:
        """Median over the rounds of server `name`'s texts/s over server `to`'s (None: over the bare limit's)."""
        return statistics.median(r.servers[name] / (r.bare_texts_per_s if to is None else r.servers[to])
                                 for r in self.rounds)

    @property
    def bare(self) -> float:
        return statistics.median(r.bare_texts_per_s for r in self.rounds)

    @staticmethod
    def _median(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    @property
    def bare_single_text_p50_ms(self) -> float | None:
        return self._median([r.bare_single_text_p50_ms for r in self.rounds])

    @property
    def service_c1_p50_ms(self) -> float | None:
        return self._median([r.service_c1_p50_ms for r in self.rounds])


class Check(BaseModel):
    name: str
    value: float
    target: str
    passed: bool


class BenchResult(BaseModel):
    meta: Meta
    torch_select: SelectResult
    bare: BareResult
    servers: list[ServerRun]
    head_to_head: HeadToHead
    recommend: RecommendResult | None = None
    ratios: dict[str, float] = {}
    checks: list[Check] = []

    def server(self, name: str) -> ServerRun:
        return next(s for s in self.servers if s.name == name)

    @property
    def bare_limit_texts_per_s(self) -> float:
        return self.head_to_head.bare

    def evaluate(self) -> None:
        """Fill ratios and checks (the issue's acceptance lines) from the measurements."""
        h = self.head_to_head
        fp32 = next(name for name in h.contenders if name in FP32_SERVERS)
        self.ratios = {
            "service_vs_torch_fp32_server": round(h.ratio("service", fp32), 3),
            "service_vs_best_torch_server": round(h.ratio("service", "torch-best-batched"), 3),
            "service_vs_bare_limit": round(h.ratio("service"), 3),
            "best_torch_vs_torch_fp32_server": round(h.ratio("torch-best-batched", fp32), 3),
            "bare_limit_vs_torch_fp32_server": round(1 / h.ratio(fp32), 3),
        }
        mix = self.meta.texts["mix"]
        suffix = "" if mix == ACCEPTANCE_MIX else f" (on the {mix} mix; the target is set on the medium mix)"
        checks = [
            Check(name="service at saturation vs the PyTorch FP32 server's best" + suffix,
                  value=self.ratios["service_vs_torch_fp32_server"], target=">= 3.0x",
                  passed=self.ratios["service_vs_torch_fp32_server"] >= 3.0),
            Check(name="service at saturation vs the best PyTorch setting's server" + suffix,
                  value=self.ratios["service_vs_best_torch_server"], target=">= 1.3x",
                  passed=self.ratios["service_vs_best_torch_server"] >= 1.3),
            Check(name="service at saturation vs the bare-runtime limit" + suffix,
                  value=self.ratios["service_vs_bare_limit"], target=">= 0.85x",
                  passed=self.ratios["service_vs_bare_limit"] >= 0.85),
        ]
        probe, bare_p50 = h.service_c1_p50_ms, h.bare_single_text_p50_ms
        if probe is not None and bare_p50 is not None:
            bound = 1.3 * bare_p50 + 1.0
            self.ratios["service_c1_p50_vs_bare_single_text_p50"] = round(probe / bare_p50, 3)
            checks.append(Check(name=f"service p50 at concurrency 1, ~32-token texts (bare single text p50 "
                                     f"{bare_p50:.2f} ms)", value=probe,
                                target=f"<= 1.3 x {bare_p50:.2f} + 1 = {bound:.2f} ms", passed=probe <= bound))
        if self.recommend is not None:
            self.ratios["recommend_warm_vs_cold_p50"] = self.recommend.speedup_p50
            checks.append(Check(name=f"recommend: {self.recommend.candidates} candidates, warm item cache vs cold (p50)",
                                value=self.recommend.speedup_p50, target=">= 10x",
                                passed=self.recommend.speedup_p50 >= 10))
        if not self.meta.quick:
            checks.append(Check(name="whole benchmark wall time (s)", value=self.meta.wall_s, target="< 600 s",
                                passed=self.meta.wall_s < 600))
        self.checks = checks
