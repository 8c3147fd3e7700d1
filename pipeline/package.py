"""The half of a build after training: export a fine-tuned PyTorch model to ONNX, fuse, quantize, gate every variant
against the PyTorch reference and publish the ones that pass. `nlpsuite build` (classifiers and embedders) and the
recommender's behaviour-trained encoder (pipeline/behaviour.py) both end here; each brings its own `Gate`."""
from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from nlpsuite.pipeline.data import DataError
from nlpsuite.pipeline.export import export_onnx, fuse, to_fp16
from nlpsuite.pipeline.quantize import quantize_per_token
from nlpsuite.pipeline.train import predict_torch
from nlpsuite.shared.model_repo import (
    TOKENIZER, Manifest, ModelRepository, ModelVersion, VariantInfo, mkdirs_readable, write_label_examples,
    write_manifest,
)
from nlpsuite.shared.runtime import create_session
from nlpsuite.shared.self_test import GOLDEN, GoldenSet, golden_indices
from nlpsuite.shared.tokenization import TextEncoder

log = logging.getLogger(__name__)

VARIANT_ORDER = ("fp32", "int8", "fp16")
CHECKPOINT_DIR = "checkpoint"
CALIBRATION_TEXTS = 256  # training texts whose activation ranges set the int8 smoothing
QUANTIZATION = (
    "int8: per-channel symmetric 7-bit weights in int8 (no u8s8 saturation on non-VNNI CPUs); per-token dynamic int8 "
    "activations (scale from each token's own max |x|), so a text's result is independent of its batch; activations "
    "smoothed per channel on training texts (SmoothQuant); GELU as FastGelu; embedding tables int8 per row. "
    "fp16: weights and compute in float16 with float32 inputs/outputs."
)


class BuildError(RuntimeError):
    """The build ran but nothing could be published (e.g. every variant failed the accuracy gate)."""


class Gate(Protocol):
    """What the variants are judged on: `metrics(outputs, reference)` over the outputs for `texts`, with `score`
    (0..1, the headline) and every name in `gated`, whose drop from the reference is bounded."""

    texts: list[str]
    gated: tuple[str, ...]

    def metrics(self, outputs: np.ndarray, reference: np.ndarray) -> dict[str, float]: ...


@dataclass
class Packaging:
    """Where and how to publish; the manifest's descriptive fields come from the caller."""

    name: str
    task: str
    base: Path
    base_config: dict
    repository: Path
    max_length: int
    variants: tuple[str, ...] = VARIANT_ORDER
    max_drop_points: float = 1.0
    force: bool = False
    save_checkpoint: bool = False
    labels: list[str] = field(default_factory=list)
    label_examples: tuple[list[str], list[str]] | None = None  # classifiers: (texts, labels) for examples.json


def checkpoint_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for name in sorted(p.name for p in path.iterdir() if p.is_file()):
        if name.endswith((".json", ".txt", ".safetensors", ".bin", ".model")):
            digest.update(name.encode())
            with open(path / name, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    versions = {}
    for lib in ("torch", "transformers", "onnx", "onnxruntime-gpu", "onnxruntime", "tokenizers", "nlpsuite"):
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def check_variants(variants: tuple[str, ...]) -> None:
    if set(variants) - set(VARIANT_ORDER) or "fp32" not in variants:
        raise DataError(f"variants must include fp32 and be among {VARIANT_ORDER}; got {variants}")


def run_variant(path: Path, encoder: TextEncoder, texts: list[str], batch_size: int = 32) -> np.ndarray:
    """Outputs of an ONNX variant on the CPU, in input order (batched by length to cut padding)."""
    runtime = create_session(path, "cpu")
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    outputs: list[np.ndarray] = [None] * len(texts)  # type: ignore[list-item]
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        result = runtime.session.run(None, encoder.encode([texts[i] for i in chunk]).feeds())[0]
        for row, i in enumerate(chunk):
            outputs[i] = result[row]
    return np.stack(outputs)


def golden_set(task: str, encoder: TextEncoder, texts: list[str], outputs: dict[str, np.ndarray]) -> GoldenSet:
    """The load-time self-test's texts: a spread of gate texts with the fp32 variant's outputs as reference."""
    rows = golden_indices(texts)
    chosen = [texts[i] for i in rows]
    return GoldenSet.build(task, chosen, encoder.tokenize(chosen).ids, outputs["fp32"][rows],
                           {name: out[rows] for name, out in outputs.items()})


def _drop_name(metric: str) -> str:
    return "drop_points" if metric == "score" else f"{metric}_drop_points"


def package(model, tokenizer, spec: Packaging, gate: Gate, calibration_texts: list[str], *, dataset: dict,
            hyperparameters: dict, layers_kept: int | None, extra: dict, started: float,
            compare: Callable[[dict[str, tuple[Path, dict]]], dict] | None = None) -> ModelVersion:
    """Export, quantize, gate and publish; `extra` goes into the manifest beside the gate's refusals and timings.
    `compare`, given the published variants' files and gate metrics, returns the table kept as `extra["pareto"]`."""
    check_variants(spec.variants)
    repo = ModelRepository(spec.repository)
    mkdirs_readable(spec.repository)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=spec.repository))
    try:
        tok_dir = staging / "_tokenizer"
        tokenizer.save_pretrained(str(tok_dir))
        if not (tok_dir / TOKENIZER).is_file():
            raise DataError(f"base checkpoint {spec.base}: its tokenizer cannot be saved as a fast tokenizer.json")
        shutil.copy2(tok_dir / TOKENIZER, staging / TOKENIZER)
        shutil.rmtree(tok_dir)
        if spec.save_checkpoint:
            model.save_pretrained(str(staging / CHECKPOINT_DIR))
            tokenizer.save_pretrained(str(staging / CHECKPOINT_DIR))

        raw = export_onnx(model, spec.task, staging / "raw.onnx")
        num_heads = spec.base_config.get("num_attention_heads") or spec.base_config.get("n_heads")
        hidden = spec.base_config.get("hidden_size") or spec.base_config.get("dim")
        files = {"fp32": fuse(raw, staging / "model.fp32.onnx", num_heads, hidden, target="cpu")}
        encoder = TextEncoder(staging / TOKENIZER, spec.max_length)
        if "int8" in spec.variants:
            # Activation ranges for smoothing come from training texts only (the gate below judges on others).
            sample = calibration_texts[::max(1, len(calibration_texts) // CALIBRATION_TEXTS)]
            files["int8"] = quantize_per_token(files["fp32"], staging / "model.int8.onnx",
                                               encoder.tokenize(sample).ids)
        if "fp16" in spec.variants:
            gpu_fused = fuse(raw, staging / "gpu.fp32.onnx", num_heads, hidden, target="gpu")
            files["fp16"] = to_fp16(gpu_fused, staging / "model.fp16.onnx")
            gpu_fused.unlink()
        raw.unlink()

        # The gate compares every variant with the fine-tuned PyTorch model.
        reference = predict_torch(model, tokenizer, gate.texts, spec.task, spec.max_length)
        reference_metrics = gate.metrics(reference, reference)
        variants: dict[str, VariantInfo] = {}
        refused: list[str] = []
        outputs_of: dict[str, np.ndarray] = {}
        for name, path in files.items():
            started_eval = time.perf_counter()
            outputs = outputs_of[name] = run_variant(path, encoder, gate.texts)
            metrics = gate.metrics(outputs, reference)
            metrics["ms_per_example"] = (time.perf_counter() - started_eval) * 1000 / max(len(gate.texts), 1)
            passed = True
            for metric in gate.gated:
                metrics[_drop_name(metric)] = drop = (reference_metrics[metric] - metrics[metric]) * 100
                passed = passed and drop <= spec.max_drop_points
            log.info("variant %s: %s (%s)", name, metrics, "pass" if passed else "FAIL")
            if not passed and not spec.force:
                refused.append(f"{name} (drops {metrics['drop_points']:.2f} points, bound {spec.max_drop_points})")
                path.unlink()
                continue
            variants[name] = VariantInfo(file=path.name, size_bytes=path.stat().st_size, metrics=metrics,
                                         passed_gate=passed, forced=not passed)
        if "fp32" not in variants:
            raise BuildError("accuracy gate refused the fp32 reference; nothing published: " + "; ".join(refused))
        if refused:
            log.warning("accuracy gate refused: %s", "; ".join(refused))
        if compare is not None:
            extra = {**extra, "pareto": compare({v: (staging / info.file, info.metrics) for v, info in variants.items()})}
        golden = golden_set(spec.task, encoder, gate.texts, {v: outputs_of[v] for v in variants})
        (staging / GOLDEN).write_text(golden.model_dump_json())

        manifest = Manifest(
            name=spec.name,
            task=spec.task,
            labels=spec.labels,
            max_length=spec.max_length,
            embedding_dim=int(reference.shape[1]) if spec.task == "embed" else None,
            base_checkpoint=str(spec.base),
            base_checkpoint_sha256=checkpoint_sha256(spec.base),
            layers_kept=layers_kept,
            dataset=dataset,
            hyperparameters=hyperparameters,
            reference_metrics=reference_metrics,
            variants=variants,
            quantization=QUANTIZATION,
            libraries=library_versions(),
            checkpoint=CHECKPOINT_DIR if spec.save_checkpoint else None,
            extra={**extra, "refused_variants": refused, "max_drop_points": spec.max_drop_points,
                   "build_seconds": round(time.monotonic() - started, 1)},
        )
        if spec.label_examples is not None:
            write_label_examples(staging, *spec.label_examples)
        write_manifest(staging, manifest)
        return repo.publish(staging, spec.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
