"""The load-time self-test: a version's golden texts, run on the device it really got, must match its reference.

`nlpsuite build` stores a few dev texts (their token ids) with the fp32 variant's outputs on the CPU, and a drift
bound per variant from what that variant showed there. Every load and hot reload runs them through the variant
and provider it got: fp16 on CUDA, TensorRT's own kernels or a CPU with another ISA can compute differently from
the build host, and a damaged file or a broken kernel shows here rather than in users' answers.

Drift, per text: for a classifier the largest change of any label's probability, for an embedder 1 - cosine.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ValidationError

from nlpsuite.shared.model_repo import ModelRepoError

log = logging.getLogger(__name__)

GOLDEN = "golden.json"
GOLDEN_TEXTS = 32
# A variant may drift up to SAFETY x what it showed on the build host, and at least FLOOR: other hardware
# rounds differently (CUDA fp16 accumulates in fp16 where the CPU casts to fp32), a damaged model is far beyond.
SAFETY = 4.0
FLOOR = {"probability": 0.05, "cosine": 0.01}
Measure = Literal["probability", "cosine"]


class GoldenSet(BaseModel):
    texts: list[str]
    ids: list[list[int]]  # token ids of each text as the build tokenized it (truncated to its max_length)
    reference_variant: str
    reference: list[list[float]]  # that variant's raw outputs on the CPU: logits or embeddings
    measure: Measure
    bounds: dict[str, float]  # variant -> the largest drift it may show

    @classmethod
    def build(cls, task: str, texts: list[str], ids: list[list[int]], reference: np.ndarray,
              variant_outputs: dict[str, np.ndarray], reference_variant: str = "fp32") -> GoldenSet:
        measure: Measure = "probability" if task == "classify" else "cosine"
        bounds = {name: round(max(FLOOR[measure], SAFETY * float(drift(measure, out, reference).max())), 6)
                  for name, out in variant_outputs.items()}
        return cls(texts=texts, ids=ids, reference_variant=reference_variant,
                   reference=np.asarray(reference, np.float32).tolist(), measure=measure, bounds=bounds)


def golden_indices(texts: list[str], count: int = GOLDEN_TEXTS) -> list[int]:
    """`count` texts spread over the range of lengths (short and long ones both exercise the model)."""
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    if len(order) <= count:
        return order
    return [order[round(k * (len(order) - 1) / (count - 1))] for k in range(count)]


def drift(measure: Measure, outputs: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per text: the largest probability change (classifier) or 1 - cosine (embedder)."""
    outputs, reference = np.asarray(outputs, np.float64), np.asarray(reference, np.float64)
    if measure == "probability":
        return np.abs(_softmax(outputs) - _softmax(reference)).max(axis=1)
    norms = np.linalg.norm(outputs, axis=1) * np.linalg.norm(reference, axis=1)
    return 1.0 - (outputs * reference).sum(axis=1) / np.maximum(norms, 1e-12)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def read_golden(version_dir: Path) -> GoldenSet | None:
    """The version's golden set, or None when it was built without one (before the self-test existed)."""
    path = version_dir / GOLDEN
    if not path.is_file():
        return None
    try:
        return GoldenSet.model_validate_json(path.read_text())
    except (ValidationError, ValueError) as exc:
        raise ModelRepoError(f"{path} is not a valid golden set: {exc}") from exc


@dataclass(frozen=True)
class SelfTestResult:
    variant: str
    provider: str
    texts: int
    drift: float  # the largest over the golden texts
    bound: float
    reference_variant: str

    @property
    def passed(self) -> bool:
        return self.drift <= self.bound

    def summary(self) -> dict[str, object]:
        return {"texts": self.texts, "drift": round(self.drift, 6), "bound": self.bound,
                "reference": self.reference_variant, "passed": self.passed}

    def problem(self) -> str:
        return (f"self-test failed: variant {self.variant} on {self.provider} drifts {self.drift:.4g} from the "
                f"{self.reference_variant} reference on {self.texts} golden texts (bound {self.bound:.4g}); "
                f"refusing to serve it")


def run_self_test(golden: GoldenSet, variant: str, provider: str, run, max_length: int,
                  max_batch: int) -> SelfTestResult | None:
    """Run the golden ids that fit `max_length` in batches of at most `max_batch` through `run(ids) -> outputs`.

    None when no bound is recorded for the variant or no golden text fits the serving token limit."""
    bound = golden.bounds.get(variant)
    if bound is None:
        return None
    rows = [i for i, ids in enumerate(golden.ids) if len(ids) <= max_length]
    if not rows:
        return None
    outputs = np.concatenate([run([golden.ids[i] for i in rows[start:start + max_batch]])
                              for start in range(0, len(rows), max_batch)])
    reference = np.asarray(golden.reference, np.float32)[rows]
    worst = float(drift(golden.measure, outputs, reference).max())
    return SelfTestResult(variant=variant, provider=provider, texts=len(rows), drift=worst, bound=bound,
                          reference_variant=golden.reference_variant)
