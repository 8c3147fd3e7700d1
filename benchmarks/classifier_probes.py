"""Probes for issue 16's served-L6 accuracy: recipes measured on dev that `nlpsuite build` does not offer.

Each run fine-tunes with the pipeline's own loop (pipeline/train.py) and prints one JSON line with the dev accuracy
by epoch; nothing is exported or published. `ensemble` scores saved dev logits alone and averaged.

    python benchmarks/classifier_probes.py train --data P/train.csv --dev P/dev.csv --text-col sentence --head mean
    python benchmarks/classifier_probes.py train ... --base R/teacher/1/checkpoint --augment 2 \
        --teacher R/teacher/1/checkpoint --teacher R/t7/1/checkpoint --teacher R/t21/1/checkpoint --epochs 3
    python benchmarks/classifier_probes.py train ... --seed 7 --save-dev-logits seed7.npz
    python benchmarks/classifier_probes.py score --checkpoint R/teacher/1/checkpoint --dev ... --out seed13.npz
    python benchmarks/classifier_probes.py ensemble seed13.npz seed7.npz seed21.npz --dev ... --label-col category

`--head mean` puts the classifier on the mean of the last hidden states (the pooling all-MiniLM-L6-v2 was trained
with) instead of BERT's pooler over [CLS]; `--augment N` adds N copies of the training texts with words dropped
(10%) and one neighbour swap, labelled by the teachers' mean logits (and the original label), as TinyBERT's
augmented transfer set does.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from nlpsuite.pipeline import train as T
from nlpsuite.pipeline.build import default_base_checkpoint
from nlpsuite.pipeline.data import Dataset, load_dataset
from nlpsuite.pipeline.distill import ensemble_logits, teacher_logits
from nlpsuite.pipeline.metrics import classification_metrics


def _mean_head_loader(original):
    """load_for_task, with a BERT classifier whose head reads the masked mean of the last hidden states."""
    from transformers import BertForSequenceClassification
    from transformers.modeling_outputs import SequenceClassifierOutput

    class MeanPooledBert(BertForSequenceClassification):
        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **_):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return SequenceClassifierOutput(logits=self.classifier(self.dropout(pooled)))

    def load(base, task, labels, keep_layers, layer_choice="first"):
        model, tokenizer = original(base, task, labels, keep_layers, layer_choice)
        if task != "classify":
            return model, tokenizer
        mean = MeanPooledBert.from_pretrained(str(base), num_labels=len(labels), attn_implementation="eager",
                                              local_files_only=True)
        if keep_layers:
            T.prune_layers(mean, keep_layers, layer_choice)
        return mean, tokenizer

    return load


def augmented(data: Dataset, copies: int, seed: int) -> Dataset:
    rng = random.Random(seed)

    def perturb(text: str) -> str:
        words = text.split()
        kept = [w for w in words if rng.random() > 0.1] or words
        if len(kept) > 3 and rng.random() < 0.5:
            i = rng.randrange(len(kept) - 1)
            kept[i], kept[i + 1] = kept[i + 1], kept[i]
        return " ".join(kept)

    texts, labels = list(data.texts), list(data.labels)
    for _ in range(copies):
        texts += [perturb(t) for t in data.texts]
        labels += list(data.labels)
    return replace(data, texts=texts, labels=labels)


def cmd_train(args) -> dict:
    train = load_dataset(args.data, args.text_col, args.label_col)
    dev = load_dataset(args.dev, args.text_col, args.label_col)
    labels = sorted(set(train.labels))
    if args.head == "mean":
        T.load_for_task = _mean_head_loader(T.load_for_task)
    if args.augment and not args.teacher:
        sys.exit("--augment needs --teacher (the copies are labelled by the teachers' logits)")
    started = time.monotonic()
    data = augmented(train, args.augment, args.seed) if args.augment else train
    soft = (ensemble_logits([Path(t) for t in args.teacher], data.texts, labels, args.max_length)
            if args.teacher else None)
    hp = T.Hyperparameters(epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size,
                           max_length=args.max_length, patience=args.patience, seed=args.seed,
                           max_steps=args.max_steps)
    result = T.fine_tune(args.base or default_base_checkpoint(), "classify", data, dev, labels, hp, progress=False,
                         teacher_outputs=soft)
    if args.save_checkpoint:
        result.model.save_pretrained(str(args.save_checkpoint))
        result.tokenizer.save_pretrained(str(args.save_checkpoint))
    if args.save_dev_logits:
        logits = T.predict_torch(result.model, result.tokenizer, dev.texts, "classify", args.max_length)
        np.savez(args.save_dev_logits, logits=logits, labels=np.array(labels))
    return {"head": args.head, "augment": args.augment, "teachers": len(args.teacher or []), "seed": args.seed,
            "best_dev_accuracy": round(result.best_dev_metric, 4),
            "dev_by_epoch": [round(h["dev"], 4) for h in result.history],
            "minutes": round((time.monotonic() - started) / 60, 1)}


def cmd_score(args) -> dict:
    dev = load_dataset(args.dev, args.text_col, args.label_col)
    labels = sorted(set(dev.labels))
    logits = teacher_logits(args.checkpoint, dev.texts, labels, args.max_length)
    np.savez(args.out, logits=logits, labels=np.array(labels))
    return {"saved": str(args.out)}


def cmd_ensemble(args) -> dict:
    dev = load_dataset(args.dev, args.text_col, args.label_col)
    columns = sorted(set(dev.labels))
    aligned = []
    report = {}
    for path in args.logits:
        saved = np.load(path)
        order = [list(map(str, saved["labels"])).index(label) for label in columns]
        aligned.append(saved["logits"][:, order])
        report[Path(path).name] = _scores(aligned[-1], dev.labels, columns)
    report["mean logits"] = _scores(np.mean(aligned, axis=0), dev.labels, columns)
    return report


def _scores(logits: np.ndarray, gold: list[str], columns: list[str]) -> dict:
    metrics = classification_metrics(np.array([columns.index(label) for label in gold]), logits)
    return {"accuracy": round(metrics["accuracy"], 4), "macro_f1": round(metrics["macro_f1"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dev", type=Path, required=True)
    common.add_argument("--text-col", default="text")
    common.add_argument("--label-col", default="label")
    common.add_argument("--max-length", type=int, default=128)
    t = sub.add_parser("train", parents=[common])
    t.add_argument("--data", type=Path, required=True)
    t.add_argument("--base", type=Path)
    t.add_argument("--head", choices=("cls", "mean"), default="cls")
    t.add_argument("--teacher", type=Path, action="append", help="a classifier checkpoint; several: mean logits")
    t.add_argument("--augment", type=int, default=0)
    t.add_argument("--epochs", type=int, default=5)
    t.add_argument("--learning-rate", type=float, default=5e-5)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--patience", type=int, default=2)
    t.add_argument("--seed", type=int, default=13)
    t.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (a quick check)")
    t.add_argument("--save-dev-logits", type=Path)
    t.add_argument("--save-checkpoint", type=Path, help="keep the fine-tuned model (a teacher for later probes)")
    s = sub.add_parser("score", parents=[common])
    s.add_argument("--checkpoint", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    e = sub.add_parser("ensemble", parents=[common])
    e.add_argument("logits", nargs="+")
    args = parser.parse_args()
    T.quiet_libraries()
    print(json.dumps({"train": cmd_train, "score": cmd_score, "ensemble": cmd_ensemble}[args.command](args)))


if __name__ == "__main__":
    main()
