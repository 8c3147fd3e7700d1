"""Knowledge distillation for `nlpsuite build --teacher DIR`: a fine-tuned model teaches the student.

A classifier teaches a classifier with its soft targets.

The student (the base checkpoint, pruned with --keep-layers if asked) learns from both the labels and the teacher's
probabilities, which say how alike the classes look to a stronger model (Hinton et al., 2015):

    loss = weight * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - weight) * CE(student, label)

T^2 keeps the soft term's gradients on the hard term's scale whatever T is. The teacher is frozen and runs without
dropout, so its logits over the training texts are computed once, before training: on a CPU one pass instead of a
teacher forward at every step, with the same result.

An embedder teaches an embedder with its embeddings: the student's unit vector for a text is pulled toward the
teacher's, beside the contrastive loss on the data's pairs,

    loss = weight * mean(1 - cos(student, teacher)) / tau + (1 - weight) * contrastive

where tau is the contrastive temperature, so both terms are in the same units (similarity / tau: a student whose
vectors sit 0.05 in cosine from the teacher's pays what a positive pair 0.05 below a negative costs). This is how a
pruned embedder (--keep-layers) keeps the geometry of the full one its retrieval was calibrated on.

A teacher is a Hugging Face classifier (or encoder) directory, or a version in a model repository published with
`--save-checkpoint` (its `checkpoint/`). It must predict exactly the data's labels. Several teachers (an ensemble,
e.g. the same recipe from other seeds) teach with their mean logits.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from nlpsuite.pipeline.train import CheckpointError, check_checkpoint, predict_torch, resolve_checkpoint

log = logging.getLogger(__name__)

class TeacherError(CheckpointError):
    """A --teacher that cannot teach this build: not a classifier, other labels, no checkpoint (exit code 2)."""


def check_settings(weight: float, temperature: float) -> None:
    if not 0.0 <= weight <= 1.0:
        raise TeacherError(f"--distill-weight {weight}: the teacher's share of the loss must be between 0 and 1")
    if not temperature > 0:
        raise TeacherError(f"--distill-temperature {temperature}: must be above 0")


def check_teacher(path: Path, task: str, labels: list[str], hidden_size: int | None = None) -> Path:
    """The teacher's checkpoint, checked against this build before any training: for a classifier, a classifier of
    the same labels; for an embedder, an encoder (not a classifier) with the student's width (`hidden_size`)."""
    checkpoint = resolve_checkpoint(path, role="teacher")
    config = check_checkpoint(checkpoint, role="teacher")
    architectures = config.get("architectures") or []
    if task == "embed":
        if any(a.endswith("ForSequenceClassification") for a in architectures):
            raise TeacherError(f"teacher {checkpoint} is a classifier: an embed build needs an embedder as its "
                               f"teacher (a model built with --task embed)")
        if hidden_size is not None and config.get("hidden_size") != hidden_size:
            raise TeacherError(f"teacher {checkpoint} embeds in {config.get('hidden_size')} dimensions, the student "
                               f"in {hidden_size}: an embedder teaches a student of its own width")
        return checkpoint
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise TeacherError(f"teacher {checkpoint} is not a classifier (architectures: {architectures or 'none'}): "
                           f"a classify build needs a fine-tuned sequence classifier as its teacher")
    theirs = sorted(str(label) for label in (config.get("id2label") or {}).values())
    if theirs != sorted(labels):
        raise TeacherError(f"teacher {checkpoint} predicts the labels {theirs}, the data has {sorted(labels)}: "
                           f"a teacher must be trained on the same labels")
    return checkpoint


def teacher_logits(checkpoint: Path, texts: list[str], labels: list[str], max_length: int) -> np.ndarray:
    """The teacher's logits for `texts`, columns in the order of `labels` (the student's)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(checkpoint), local_files_only=True,
                                                               attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint), use_fast=True, local_files_only=True)
    logits = predict_torch(model, tokenizer, texts, "classify", max_length)
    column = {str(label): int(i) for i, label in model.config.id2label.items()}
    log.info("teacher %s scored %d training texts", checkpoint, len(texts))
    return logits[:, [column[label] for label in labels]].astype(np.float32)


def ensemble_logits(checkpoints: list[Path], texts: list[str], labels: list[str], max_length: int) -> np.ndarray:
    """The teachers' mean logits: an ensemble's soft targets (one teacher: its own)."""
    return mean_outputs([teacher_logits(c, texts, labels, max_length) for c in checkpoints], "classify")


def mean_outputs(outputs: list[np.ndarray], task: str) -> np.ndarray:
    """Several teachers' outputs as one target, each teacher weighing the same: the mean logits, or for embedders
    the normalised mean embedding."""
    mean = np.mean(outputs, axis=0)
    if task == "embed":
        mean = mean / np.linalg.norm(mean, axis=1, keepdims=True).clip(min=1e-9)
    return mean.astype(np.float32)


def teacher_outputs(checkpoints: list[Path], task: str, texts: list[str], labels: list[str], max_length: int
                    ) -> list[np.ndarray]:
    """Each given teacher's outputs over `texts`: logits in `labels` order, or unit embeddings."""
    if task == "classify":
        return [teacher_logits(c, texts, labels, max_length) for c in checkpoints]
    return [_teacher_embeddings(c, texts, max_length) for c in checkpoints]


def train_ensemble(base: Path, task: str, train, dev, labels: list[str], hp, n: int, progress: bool = True
                   ) -> tuple[np.ndarray, list[dict]]:
    """`--teachers N`: the averaged outputs (mean_outputs) of ensemble_outputs' N teachers, with their report."""
    outputs, report = ensemble_outputs(base, task, train, dev, labels, hp, n, progress)
    return mean_outputs(outputs, task), report


def ensemble_outputs(base: Path, task: str, train, dev, labels: list[str], hp, n: int, progress: bool = True
                     ) -> tuple[list[np.ndarray], list[dict]]:
    """Fine-tune N full-depth models of this recipe from the base, from seeds hp.seed + 1 ... + N, and return each
    one's outputs over the training texts with its seed and dev score. The teachers are not kept."""
    from dataclasses import replace

    from nlpsuite.pipeline.train import fine_tune

    outputs, report = [], []
    for i in range(1, n + 1):
        teacher_hp = replace(hp, seed=hp.seed + i, keep_layers=None)
        result = fine_tune(base, task, train, dev, labels, teacher_hp, progress=progress)
        outputs.append(predict_torch(result.model, result.tokenizer, train.texts, task, hp.max_length))
        report.append({"seed": teacher_hp.seed, "dev": round(result.best_dev_metric, 4),
                       "epochs_run": result.epochs_run})
        log.info("ensemble teacher %d of %d (seed %d): dev %.4f", i, n, teacher_hp.seed, result.best_dev_metric)
    return outputs, report


def _teacher_embeddings(checkpoint: Path, texts: list[str], max_length: int) -> np.ndarray:
    """An embedder teacher's unit-norm mean-pooled embeddings of `texts`."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(checkpoint), local_files_only=True, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint), use_fast=True, local_files_only=True)
    log.info("teacher %s embeds %d training texts", checkpoint, len(texts))
    return predict_torch(model, tokenizer, texts, "embed", max_length)


def embedding_distillation_loss(student, teacher, contrastive, temperature: float, weight: float):
    """weight * mean(1 - cos(student, teacher)) / temperature + (1 - weight) * the contrastive loss; `student` and
    `teacher` are unit vectors, `temperature` the contrastive one."""
    gap = (1 - (student * teacher).sum(-1)).mean() / temperature
    return weight * gap + (1 - weight) * contrastive


def distillation_loss(student, teacher, target, temperature: float, weight: float):
    """weight * T^2 * KL(teacher || student) at temperature T + (1 - weight) * cross-entropy with the labels."""
    import torch.nn.functional as F

    soft = F.kl_div(F.log_softmax(student / temperature, dim=-1), F.log_softmax(teacher / temperature, dim=-1),
                    reduction="batchmean", log_target=True) * temperature ** 2
    return weight * soft + (1 - weight) * F.cross_entropy(student, target)
