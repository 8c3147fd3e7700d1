"""Fine-tuning on the CPU (or a GPU when present) with dynamic padding and early stopping on the dev set."""
from __future__ import annotations

import copy
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from nlpsuite.pipeline.data import Dataset

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "camembert", "mpnet"}


class CheckpointError(ValueError):
    """A base checkpoint directory that is not a usable BERT-family model."""


@dataclass
class Hyperparameters:
    epochs: int = 5
    batch_size: int = 16
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    patience: int = 2  # epochs without dev improvement before stopping
    max_length: int = 128
    seed: int = 13
    keep_layers: int | None = None  # structural pruning: keep only K encoder layers ...
    layer_choice: str = "first"  # ... which ones: "first" K, or "spread" evenly up to the top one (kept_layers)
    max_steps: int | None = None  # cap on optimizer steps (tests and quick runs)
    temperature: float = 0.05  # contrastive loss temperature for `embed`
    distill_temperature: float = 2.0  # with a teacher: softening of both models' logits (pipeline/distill.py)
    distill_weight: float = 0.5  # with a teacher: the soft targets' share of the loss, the labels' is the rest

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class TrainResult:
    model: object  # the fine-tuned torch module (eval mode, on the CPU)
    tokenizer: object
    best_dev_metric: float
    epochs_run: int
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def quiet_libraries() -> None:
    """Keep library notices out of a build's output: transformers' load report (a new classifier head's weights are
    missing by design) and weight-loading bars, and the ONNX exporter's tracer warnings (the exported graph is
    checked against PyTorch by the accuracy gate, which is what matters)."""
    import warnings

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    warnings.filterwarnings("ignore", message="Exporting aten::index operator", category=UserWarning)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_checkpoint(path: Path, role: str = "base checkpoint") -> Path:
    """The Hugging Face directory of a model given as one, as a published version or as a model's folder (its newest
    version, which must have been published with its checkpoint)."""
    from nlpsuite.shared.model_repo import ModelRepoError, version_at

    if (path / "config.json").is_file():
        return path
    try:
        version = version_at(path)
    except (ModelRepoError, OSError, ValueError):
        raise CheckpointError(f"{role} {path} is neither a Hugging Face model directory nor a published model "
                              f"version") from None
    if version.manifest.checkpoint is None:
        raise CheckpointError(f"{role} {version.path} was published without its PyTorch checkpoint: rebuild it with "
                              f"--save-checkpoint to train from it")
    return version.path / version.manifest.checkpoint


def check_checkpoint(path: Path, role: str = "base checkpoint") -> dict:
    """Validate a Hugging Face checkpoint dir before any heavy work; returns its config as a dict."""
    from transformers import AutoConfig

    if not path.is_dir():
        raise CheckpointError(f"{role} {path} is not a directory")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{role} {path} has no config.json: not a Hugging Face model directory")
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types here
        raise CheckpointError(f"{role} {path}: unreadable config ({exc})") from exc
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"{role} {path} is a {config.model_type!r} model; supported BERT-family types: "
            f"{', '.join(sorted(SUPPORTED_MODEL_TYPES))}"
        )
    if not any((path / f).is_file() for f in ("model.safetensors", "pytorch_model.bin")):
        raise CheckpointError(f"{role} {path} has no weights (model.safetensors or pytorch_model.bin)")
    if not any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt", "vocab.json")):
        raise CheckpointError(f"{role} {path} has no tokenizer files")
    return config.to_dict()


def _encoder_layers(model):
    """The ModuleList of transformer layers, whatever the BERT-family architecture calls it."""
    import torch

    base = model.base_model
    for name, module in base.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.split(".")[-1] in ("layer", "layers"):
            return base, name
    raise CheckpointError("cannot find the encoder layers to prune in this architecture")


LAYER_CHOICES = ("first", "spread")


def kept_layers(total: int, keep: int, choice: str = "first") -> list[int]:
    """Which of `total` encoder layers a K-layer student keeps: the first K (the bottom of the network), or K
    spread evenly and ending at the top layer (6 -> 3: 1, 3, 5; DistilBERT was initialised from every other layer of
    BERT), so the student starts from the last representation rather than a middle one."""
    if not 1 <= keep <= total:
        raise CheckpointError(f"--keep-layers {keep}: the model has {total} layers")
    if choice == "first":
        return list(range(keep))
    if choice == "spread":
        return [round((i + 1) * total / keep) - 1 for i in range(keep)]
    raise CheckpointError(f"--layer-choice {choice!r}: expected one of {', '.join(LAYER_CHOICES)}")


def prune_layers(model, keep: int, choice: str = "first") -> None:
    import torch

    base, name = _encoder_layers(model)
    parent = base.get_submodule(name.rsplit(".", 1)[0]) if "." in name else base
    attr = name.split(".")[-1]
    layers = getattr(parent, attr)
    indices = kept_layers(len(layers), keep, choice)
    setattr(parent, attr, torch.nn.ModuleList([layers[i] for i in indices]))
    for key in ("num_hidden_layers", "n_layers"):
        if hasattr(model.config, key):
            setattr(model.config, key, keep)


def load_for_task(base: Path, task: str, labels: list[str], keep_layers: int | None, layer_choice: str = "first"):
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    check_checkpoint(base)
    tokenizer = AutoTokenizer.from_pretrained(str(base), use_fast=True, local_files_only=True)
    if not tokenizer.is_fast:
        raise CheckpointError(f"base checkpoint {base}: no fast tokenizer could be built")
    if task == "classify":
        model = AutoModelForSequenceClassification.from_pretrained(
            str(base), num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            attn_implementation="eager", local_files_only=True,
        )
    else:
        model = AutoModel.from_pretrained(str(base), attn_implementation="eager", local_files_only=True)
    if keep_layers:
        prune_layers(model, keep_layers, layer_choice)
    return model, tokenizer


def training_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _length_grouped_batches(lengths: list[int], size: int, rng: random.Random) -> list[list[int]]:
    """Batches of similar length (sorted with jitter, then the batch order shuffled) to cut padding."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i] + rng.random() * 8)
    batches = [order[i : i + size] for i in range(0, len(order), size)]
    rng.shuffle(batches)
    return batches


def optimizer_step(model, loss, optimizer, scheduler) -> float:
    """Backpropagate `loss`, clip the gradients to norm 1, step the optimizer and the schedule; the loss's value."""
    import torch

    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    return float(loss.detach())


def snapshot(model) -> dict:
    """A CPU copy of the model's weights (the best state so far)."""
    return copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})


def mean_pool(hidden, mask):
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2.0, dim=1)


def predict_torch(model, tokenizer, texts: list[str], task: str, max_length: int, batch_size: int = 64) -> np.ndarray:
    """Reference outputs of the PyTorch model: logits, or unit-norm mean-pooled embeddings."""
    import torch

    device = next(model.parameters()).device
    model.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start : start + batch_size], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt", return_token_type_ids=False)
            enc = {k: v.to(device) for k, v in enc.items()}
            if task == "classify":
                out = model(**enc).logits
            else:
                out = mean_pool(model(**enc).last_hidden_state, enc["attention_mask"])
            outputs.append(out.float().cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


def nearest_centroid_accuracy(train_emb: np.ndarray, train_labels: list[str],
                              dev_emb: np.ndarray, dev_labels: list[str]) -> float:
    """How often a dev text's nearest label centroid is its own label: the embedder's dev score."""
    labels = sorted(set(train_labels))
    index = {label: i for i, label in enumerate(labels)}
    centroids = np.zeros((len(labels), train_emb.shape[1]), np.float32)
    for emb, label in zip(train_emb, train_labels):
        centroids[index[label]] += emb
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True).clip(min=1e-9)
    predicted = (dev_emb @ centroids.T).argmax(axis=1)
    gold = np.array([index.get(label, -1) for label in dev_labels])
    return float((predicted == gold).mean())


def dev_score(model, tokenizer, task: str, train: Dataset, dev: Dataset, labels: list[str], max_length: int) -> float:
    if task == "classify":
        logits = predict_torch(model, tokenizer, dev.texts, task, max_length)
        gold = np.array([labels.index(label) for label in dev.labels])
        return float((logits.argmax(axis=1) == gold).mean())
    sample = train.texts[:2000], train.labels[:2000]
    train_emb = predict_torch(model, tokenizer, list(sample[0]), task, max_length)
    dev_emb = predict_torch(model, tokenizer, dev.texts, task, max_length)
    return nearest_centroid_accuracy(train_emb, list(sample[1]), dev_emb, dev.labels)


def _contrastive_batch(indices: list[int], data: Dataset, by_label: dict[str, list[int]], rng: random.Random
                       ) -> tuple[list[int], list[int]]:
    """Anchor/positive pairs (indices into `data`) with at most one anchor per label, so in-batch negatives are true
    negatives."""
    seen, anchors, positives = set(), [], []
    for i in indices:
        label = data.labels[i]
        if label in seen or len(by_label[label]) < 2:
            continue
        seen.add(label)
        j = i
        while j == i:
            j = rng.choice(by_label[label])
        anchors.append(i)
        positives.append(j)
    return anchors, positives


def fine_tune(
    base: Path, task: Literal["classify", "embed"], train: Dataset, dev: Dataset,
    labels: list[str], hp: Hyperparameters, progress: bool = True, teacher_outputs: np.ndarray | None = None,
) -> TrainResult:
    """Fine-tune the base checkpoint; with `teacher_outputs` (one row per training text: a classifier teacher's logits
    with columns in `labels` order, or an embedder teacher's unit embeddings) the student learns from them and the
    labels together (pipeline/distill.py)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    from nlpsuite.pipeline.distill import distillation_loss, embedding_distillation_loss

    seed_everything(hp.seed)
    model, tokenizer = load_for_task(base, task, labels, hp.keep_layers, hp.layer_choice)
    device = training_device()
    model.to(device)
    log.info("fine-tuning on %s", device)
    rng = random.Random(hp.seed)
    label_index = {label: i for i, label in enumerate(labels)}
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(train.labels):
        by_label.setdefault(label, []).append(i)

    lengths = [len(ids) for ids in tokenizer(train.texts, truncation=True, max_length=hp.max_length)["input_ids"]]
    steps_per_epoch = math.ceil(len(train) / hp.batch_size)
    total_steps = steps_per_epoch * hp.epochs
    if hp.max_steps:
        total_steps = min(total_steps, hp.max_steps)
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
         "weight_decay": hp.weight_decay},
        {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=hp.learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(total_steps * hp.warmup_ratio), max(total_steps, 1))

    started = time.monotonic()
    best = dev_score(model, tokenizer, task, train, dev, labels, hp.max_length) if total_steps == 0 else -1.0
    best_state = None
    history: list[dict[str, float]] = []
    step, epochs_run, stale = 0, 0, 0
    bar = tqdm(total=total_steps, desc=f"fine-tune {task}", unit="step", disable=not progress)
    for epoch in range(hp.epochs):
        if step >= total_steps:
            break
        model.train()
        losses = []
        for batch in _length_grouped_batches(lengths, hp.batch_size, rng):
            if step >= total_steps:
                break
            if task == "classify":
                enc = tokenizer([train.texts[i] for i in batch], padding=True, truncation=True,
                                max_length=hp.max_length, return_tensors="pt", return_token_type_ids=False)
                enc = {k: v.to(device) for k, v in enc.items()}
                target = torch.tensor([label_index[train.labels[i]] for i in batch], device=device)
                logits = model(**enc).logits
                if teacher_outputs is None:
                    loss = torch.nn.functional.cross_entropy(logits, target)
                else:
                    soft = torch.from_numpy(teacher_outputs[batch]).to(device)
                    loss = distillation_loss(logits, soft, target, hp.distill_temperature, hp.distill_weight)
            else:
                anchors, positives = _contrastive_batch(batch, train, by_label, rng)
                if len(anchors) < 2:
                    continue
                rows = anchors + positives
                enc = tokenizer([train.texts[i] for i in rows], padding=True, truncation=True,
                                max_length=hp.max_length, return_tensors="pt", return_token_type_ids=False)
                enc = {k: v.to(device) for k, v in enc.items()}
                emb = mean_pool(model(**enc).last_hidden_state, enc["attention_mask"])
                a, p = emb[: len(anchors)], emb[len(anchors):]
                sims = a @ p.T / hp.temperature
                loss = torch.nn.functional.cross_entropy(sims, torch.arange(len(anchors), device=device))
                if teacher_outputs is not None:
                    target_emb = torch.from_numpy(teacher_outputs[rows]).to(device)
                    loss = embedding_distillation_loss(emb, target_emb, loss, hp.temperature, hp.distill_weight)
            losses.append(optimizer_step(model, loss, optimizer, scheduler))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        epochs_run = epoch + 1
        score = dev_score(model, tokenizer, task, train, dev, labels, hp.max_length)
        history.append({"epoch": epochs_run, "loss": float(np.mean(losses)) if losses else 0.0, "dev": score})
        log.info("epoch %d: loss %.4f dev %.4f", epochs_run, history[-1]["loss"], score)
        bar.write(f"epoch {epochs_run}: train loss {history[-1]['loss']:.4f}, dev {'accuracy' if task == 'classify' else 'centroid accuracy'} {score:.4f}")
        if score > best:
            best, stale = score, 0
            best_state = snapshot(model)
        else:
            stale += 1
            if stale >= hp.patience:
                bar.write(f"early stop: no dev improvement for {stale} epoch(s)")
                break
    bar.close()
    model.to("cpu")
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model=model, tokenizer=tokenizer, best_dev_metric=best, epochs_run=epochs_run,
                       steps=step, seconds=time.monotonic() - started, history=history)
