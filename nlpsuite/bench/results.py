"""What one `nlpsuite bench` run measured (bench.json), and the acceptance checks computed from it."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from nlpsuite.bench.bare import BarePoint, BareResult
from nlpsuite.bench.load import Level
from nlpsuite.bench.recommend import RecommendResult
from nlpsuite.bench.stats import Latency
from nlpsuite.bench.torch_models import SelectResult

ACCEPTANCE_MIX = "medium"


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


class Check(BaseModel):
    name: str
    value: float
    target: str
    passed: bool


class BenchResult(BaseModel):
    meta: Meta
    torch_select: SelectResult
    bare: BareResult
    bare_recheck: BarePoint | None = None  # the best point again after the served run (shared hosts drift)
    bare_limit_texts_per_s: float
    servers: list[ServerRun]
    recommend: RecommendResult | None = None
    ratios: dict[str, float] = {}
    checks: list[Check] = []

    def server(self, name: str) -> ServerRun:
        return next(s for s in self.servers if s.name == name)

    def evaluate(self) -> None:
        """Fill ratios and checks (the issue's acceptance lines) from the measurements."""
        service = self.server("service").best.texts_per_s
        fp32 = max(self.server("torch-fp32").best.texts_per_s, self.server("torch-fp32-batched").best.texts_per_s)
        best_torch = self.server("torch-best-batched").best.texts_per_s
        self.ratios = {
            "service_vs_torch_fp32_server": round(service / fp32, 3),
            "service_vs_best_torch_server": round(service / best_torch, 3),
            "service_vs_bare_limit": round(service / self.bare_limit_texts_per_s, 3),
            "best_torch_vs_torch_fp32_server": round(best_torch / fp32, 3),
            "bare_limit_vs_torch_fp32_server": round(self.bare_limit_texts_per_s / fp32, 3),
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
        probe = self.server("service").probe
        bare_p50s = [lat.p50_ms for lat in self.bare.single_text.values() if lat.p50_ms is not None]
        if probe is not None and probe.p50_ms is not None and bare_p50s:
            bare_p50 = min(bare_p50s)
            bound = 1.3 * bare_p50 + 1.0
            self.ratios["service_c1_p50_vs_bare_single_text_p50"] = round(probe.p50_ms / bare_p50, 3)
            checks.append(Check(name=f"service p50 at concurrency 1, ~32-token texts (bare single text p50 "
                                     f"{bare_p50:.2f} ms)", value=probe.p50_ms,
                                target=f"<= 1.3 x {bare_p50:.2f} + 1 = {bound:.2f} ms", passed=probe.p50_ms <= bound))
        if self.recommend is not None:
            self.ratios["recommend_warm_vs_cold_p50"] = self.recommend.speedup_p50
            checks.append(Check(name=f"recommend: {self.recommend.candidates} candidates, warm item cache vs cold (p50)",
                                value=self.recommend.speedup_p50, target=">= 10x",
                                passed=self.recommend.speedup_p50 >= 10))
        if not self.meta.quick:
            checks.append(Check(name="whole benchmark wall time (s)", value=self.meta.wall_s, target="< 600 s",
                                passed=self.meta.wall_s < 600))
        self.checks = checks
