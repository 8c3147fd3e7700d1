"""Fine-tune a text encoder on what users liked: the recommender's two-tower objective with one shared tower.

A user is the rating-weighted mean of the embeddings of items they rated (the same rule serving uses,
services/recommend/scoring.user_vectors); for each step a few users are drawn, each user's history (a sample of it)
is the context (the user's side) and a few of their later ratings, positives and negatives, are held out (without
marked targets the rated items are split at random), and the encoder learns to rank every held-out positive above
every held-out negative by cosine to the user (a pairwise logistic loss, the smooth form of
the per-user AUC the recommender is judged on). Context embeddings are computed without gradient: the item side
alone carries it, which costs half as much and, with one shared tower, moves the same weights.
"""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from nlpsuite.pipeline.train import (
    TrainResult, load_for_task, mean_pool, optimizer_step, seed_everything, snapshot, training_device,
)
from nlpsuite.services.recommend.scoring import rating_weights

log = logging.getLogger(__name__)


@dataclass
class BehaviourHyperparameters:
    steps: int = 200
    learning_rate: float = 1e-5
    users_per_step: int = 8
    context_items: int = 16  # rated items that stand for the user in one step
    targets_per_class: int = 4  # held-out positives (and as many negatives) per user and step
    scale: float = 20.0  # cosine -> logit
    max_length: int = 64
    seed: int = 13
    keep_layers: int | None = None
    eval_every: int = 50  # steps between held-out scores (the best is kept, the base itself included)
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class RatedItem:
    item: str
    rating: float
    liked: bool | None  # True positive, False negative, None neither (it still shapes the user's vector)
    target: bool = False  # rated after the user's history: learnt to rank, never part of the user's side


@dataclass
class Interactions:
    """Per user, the items they rated; `texts` holds every item's text."""

    texts: dict[str, str]
    users: dict[str, list[RatedItem]] = field(default_factory=dict)


def _plan(rated: list[RatedItem], hp: BehaviourHyperparameters, rng: random.Random
          ) -> tuple[list[RatedItem], list[str], list[str]] | None:
    shuffled = rated[:]
    rng.shuffle(shuffled)
    # With targets marked, the user's history predicts their later ratings, as when serving; otherwise any split.
    targets = [r for r in shuffled if r.target] or shuffled
    pos = [r.item for r in targets if r.liked is True][: hp.targets_per_class]
    neg = [r.item for r in targets if r.liked is False][: hp.targets_per_class]
    held = set(pos) | set(neg)
    context = [r for r in shuffled if r.item not in held and not r.target][: hp.context_items]
    if not pos or not neg or not context:
        return None
    return context, pos, neg


def trainable_users(data: Interactions, users: Sequence[str]) -> list[str]:
    """Users with a liked and a disliked item to rank and something more to stand for them."""
    out = []
    for user in users:
        rated = data.users.get(user, [])
        targets = [r for r in rated if r.target] or rated
        context = [r for r in rated if not r.target]
        if any(r.liked is True for r in targets) and any(r.liked is False for r in targets) and len(context) >= 1 \
                and len(rated) >= 3:
            out.append(user)
    return out


def fine_tune_on_behaviour(base: Path, data: Interactions, users: Sequence[str], hp: BehaviourHyperparameters,
                           score: Callable[[object, object], float] | None = None,
                           report: Callable[[str], None] | None = None) -> TrainResult:
    """Fine-tune `base` on `users`' ratings; `score(model, tokenizer)` (higher is better, e.g. held-out users' mean
    AUC) is taken every `eval_every` steps and the best state kept."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    seed_everything(hp.seed)
    rng = random.Random(hp.seed)
    pool = trainable_users(data, users)
    if len(pool) < hp.users_per_step:
        raise ValueError(f"{len(pool)} users have liked and disliked items; at least {hp.users_per_step} needed")
    model, tokenizer = load_for_task(base, "embed", [], hp.keep_layers)
    device = training_device()
    model.to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(hp.steps * hp.warmup_ratio), max(hp.steps, 1))

    def embed(items: list[str]):
        enc = tokenizer([data.texts[i] for i in items], padding=True, truncation=True, max_length=hp.max_length,
                        return_tensors="pt", return_token_type_ids=False)
        enc = {k: v.to(device) for k, v in enc.items()}
        return mean_pool(model(**enc).last_hidden_state, enc["attention_mask"])

    def evaluate() -> float:
        model.eval()
        try:
            return float(score(model, tokenizer)) if score is not None else float("nan")
        finally:
            model.train()

    started = time.monotonic()
    best = evaluate()
    best_state = snapshot(model)  # kept if never beaten
    history: list[dict[str, float]] = [{"step": 0, "held_out": best}]
    say = report or (lambda line: log.info("%s", line))
    say(f"behaviour fine-tuning: step 0 (the base), held-out {best:.4f}")
    losses: list[float] = []
    for step in range(1, hp.steps + 1):
        plans = [p for p in (_plan(data.users[u], hp, rng) for u in rng.sample(pool, hp.users_per_step)) if p]
        if not plans:
            continue
        context_items = sorted({r.item for context, _, _ in plans for r in context})
        target_items = sorted({i for _, pos, neg in plans for i in pos + neg})
        with torch.no_grad():
            context_emb = dict(zip(context_items, embed(context_items)))
        target_emb = embed(target_items)
        where = {item: k for k, item in enumerate(target_items)}
        terms = []
        for context, pos, neg in plans:
            weights = torch.from_numpy(rating_weights([r.rating for r in context])).to(device)
            user = torch.nn.functional.normalize(
                (weights[:, None] * torch.stack([context_emb[r.item] for r in context])).sum(0), dim=0)
            s_pos = target_emb[[where[i] for i in pos]] @ user * hp.scale
            s_neg = target_emb[[where[i] for i in neg]] @ user * hp.scale
            terms.append(torch.nn.functional.softplus(s_neg[None, :] - s_pos[:, None]).mean())
        losses.append(optimizer_step(model, torch.stack(terms).mean(), optimizer, scheduler))
        if step % hp.eval_every == 0 or step == hp.steps:
            held_out = evaluate()
            history.append({"step": step, "loss": float(np.mean(losses[-hp.eval_every:])), "held_out": held_out})
            say(f"behaviour fine-tuning: step {step}, loss {history[-1]['loss']:.4f}, held-out {held_out:.4f}")
            if score is None or held_out > best:
                best = held_out
                best_state = snapshot(model)
    model.to("cpu")
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model=model, tokenizer=tokenizer, best_dev_metric=best, epochs_run=0, steps=hp.steps,
                       seconds=time.monotonic() - started, history=history)
