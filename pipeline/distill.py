"""Knowledge distillation for `nlpsuite build --teacher DIR`: a fine-tuned classifier's soft targets teach the student.

The student (the base checkpoint, pruned with --keep-layers if asked) learns from both the labels and the teacher's
probabilities, which say how alike the classes look to a stronger model (Hinton et al., 2015):

    loss = weight * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - weight) * CE(student, label)

T^2 keeps the soft term's gradients on the hard term's scale whatever T is. The teacher is frozen and runs without
dropout, so its logits over the training texts are computed once, before training: on a CPU one pass instead of a
teacher forward at every step, with the same result.

A teacher is a Hugging Face classifier directory, or a version in a model repository published with
`--save-checkpoint` (its `checkpoint/`). It must predict exactly the data's labels. Several teachers (an ensemble,
e.g. the same recipe from other seeds) teach with their mean logits.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from nlpsuite.pipeline.train import CheckpointError, check_checkpoint, predict_torch

log = logging.getLogger(__name__)

class TeacherError(CheckpointError):
    """A --teacher that cannot teach this build: not a classifier, other labels, no checkpoint (exit code 2)."""


def resolve_teacher(path: Path) -> Path:
    """The checkpoint directory of a teacher given as a checkpoint, a published version or a model's folder (its
    newest version)."""
    from nlpsuite.shared.model_repo import ModelRepoError, version_at

    if (path / "config.json").is_file():
        return path
    try:
        version = version_at(path)
    except (ModelRepoError, OSError, ValueError):
        raise TeacherError(f"teacher {path} is neither a Hugging Face model directory nor a published model "
                           f"version") from None
    if version.manifest.checkpoint is None:
        raise TeacherError(f"teacher {version.path} was published without its PyTorch checkpoint: rebuild it with "
                           f"--save-checkpoint to distil from it")
    return version.path / version.manifest.checkpoint


def check_settings(weight: float, temperature: float) -> None:
    if not 0.0 <= weight <= 1.0:
        raise TeacherError(f"--distill-weight {weight}: the teacher's share of the loss must be between 0 and 1")
    if not temperature > 0:
        raise TeacherError(f"--distill-temperature {temperature}: must be above 0")


def check_teacher(path: Path, task: str, labels: list[str]) -> Path:
    """The teacher's checkpoint, checked against this build before any training: a classifier of the same labels."""
    if task != "classify":
        raise TeacherError("--teacher distils classifiers; distilling an embedder is not supported yet")
    checkpoint = resolve_teacher(path)
    config = check_checkpoint(checkpoint, role="teacher")
    architectures = config.get("architectures") or []
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
    return np.mean([teacher_logits(c, texts, labels, max_length) for c in checkpoints], axis=0).astype(np.float32)


def distillation_loss(student, teacher, target, temperature: float, weight: float):
    """weight * T^2 * KL(teacher || student) at temperature T + (1 - weight) * cross-entropy with the labels."""
    import torch.nn.functional as F

    soft = F.kl_div(F.log_softmax(student / temperature, dim=-1), F.log_softmax(teacher / temperature, dim=-1),
                    reduction="batchmean", log_target=True) * temperature ** 2
    return weight * soft + (1 - weight) * F.cross_entropy(student, target)
