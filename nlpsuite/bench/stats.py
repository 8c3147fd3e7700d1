"""Latency summaries shared by every measurement."""
from __future__ import annotations

import numpy as np
from pydantic import BaseModel


class Latency(BaseModel):
    """Percentiles in ms; None when nothing completed (JSON has no NaN)."""

    n: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None

    @classmethod
    def of(cls, seconds: list[float]) -> Latency:
        if not seconds:
            return cls(n=0, p50_ms=None, p95_ms=None, p99_ms=None, mean_ms=None)
        ms = np.asarray(seconds) * 1000
        p50, p95, p99 = np.percentile(ms, [50, 95, 99])
        return cls(n=len(ms), p50_ms=round(float(p50), 3), p95_ms=round(float(p95), 3),
                   p99_ms=round(float(p99), 3), mean_ms=round(float(ms.mean()), 3))
