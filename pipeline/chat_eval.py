"""`nlpsuite evaluate --task chat`: the chat service's replies to labelled customer messages, per kind.

The cases file (CSV) has columns id, split (dev/test), kind (intent, faq, document, handoff), expected (the intent
label, FAQ id, document passage id, or hand-off reason), previous (the message before, for a follow-up; may be
empty) and message. `--calibrate` first fits the routing on the dev split (chat/routing.py) and saves it where the
service reads it; the figures reported are always on the chosen split, through the service's own code path.
"""
from __future__ import annotations

import asyncio
import csv
import json
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from nlpsuite.pipeline.data import DataError

log = logging.getLogger(__name__)

KINDS = ("intent", "faq", "document", "handoff")


class ChatCase(BaseModel):
    id: str = Field(min_length=1)
    split: str = Field(min_length=1)
    kind: Literal["intent", "faq", "document", "handoff"]
    expected: str = Field(min_length=1)
    previous: str = ""
    message: str = Field(min_length=1)


def load_cases(path: Path) -> list[ChatCase]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise DataError(f"{path}: {exc.strerror}") from None
    cases = []
    for line, row in enumerate(rows, start=2):
        try:
            cases.append(ChatCase.model_validate(row))
        except ValidationError as exc:
            errors = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise DataError(f"{path} line {line}: {errors}") from None
    if not cases:
        raise DataError(f"{path}: no cases (expected columns id, split, kind, expected, previous, message)")
    return cases


def _check_targets(cases: list[ChatCase], labels: list[str], passage_ids: set[str], path: Path) -> None:
    for case in cases:
        known = {"intent": set(labels), "faq": passage_ids, "document": passage_ids}.get(case.kind)
        if known is not None and case.expected not in known:
            raise DataError(f"{path}: case {case.id} expects {case.kind} {case.expected!r}, which the "
                            f"{'intent model' if case.kind == 'intent' else 'knowledge base'} does not have")


def _warn_if_trained_on(dev: list[ChatCase], service) -> None:
    """The route is learned from how sure the models are, and on their own training texts they are surer (and
    nearer an intent example) than on customers' messages: a routing fitted on such cases sends too little to
    the intents. Banking77 through chat, 5 training texts per intent as the intent cases: 58% of its dev messages
    got their intent's answer; 5 per intent held out of the intent model's training instead: 83%."""
    from nlpsuite.shared.model_repo import read_label_examples

    norm = lambda text: " ".join(text.lower().split())  # noqa: E731
    assert service.intents.model is not None
    trained = {norm(t) for ts in read_label_examples(service.intents.model.version).values() for t in ts}
    seen = [c.id for c in dev if c.kind == "intent" and norm(c.message) in trained]
    if seen:
        log.warning("calibrating on the intent model's own training texts: it is surer of them than of customers' "
                    "messages, so the routing will under-trust it; calibrate on messages it was not trained on",
                    extra={"cases": len(seen), "of": len(dev), "first": ", ".join(seen[:5])})


async def _evaluate(settings, cases_path: Path, split: str, calibrate: bool) -> dict:
    from nlpsuite.services.chat.answers import is_right, judge_with, unclear_with
    from nlpsuite.services.chat.routing import LabelledTurn, calibrate as fit_routing
    from nlpsuite.services.chat.service import ChatService
    from nlpsuite.shared.serving import Timing

    cases = load_cases(cases_path)
    service = ChatService(settings, calibrating=calibrate)
    await service.load()
    try:
        assert service.kb is not None
        labels = service.intents.labels
        _check_targets(cases, labels, {p.id for p in service.kb.passages}, cases_path)
        if calibrate:
            dev = [c for c in cases if c.split == "dev"]
            if not dev:
                raise DataError(f"{cases_path}: no dev cases to calibrate on")
            _warn_if_trained_on(dev, service)
            turns = []
            for case in dev:
                observed, _, _ = await service.observe_turn(case.message, case.previous or None, Timing(0.0), None)
                turns.append(LabelledTurn(case.kind, case.expected, observed[0],
                                          observed[1] if len(observed) > 1 else None))
            judge = judge_with(service.kb, labels, settings.handoff_intents)
            unclear = unclear_with(service.kb, labels, settings.handoff_intents)
            routing, figures = fit_routing(turns, labels, judge, service.search, unclear)
            routing.calibration = {"data": str(cases_path), "split": "dev", **figures,
                                   "models": service.model_versions(),
                                   "knowledge_base": str(settings.knowledge_base or "examples/knowledge_base.yaml")}
            path = service.routing_path()
            routing.save(path)
            service.routing = routing
            log.info("routing calibrated", extra={"path": str(path), **figures})
        chosen = [c for c in cases if c.split == split] if split != "all" else cases
        if not chosen:
            raise DataError(f"{cases_path}: no cases in split {split!r}")
        right: dict[str, list[bool]] = defaultdict(list)
        reasons: list[bool] = []
        latencies, misses = [], []
        for case in chosen:
            started = time.perf_counter()
            turn = await service.route(case.message, case.previous or None, Timing(started), None)
            latencies.append(time.perf_counter() - started)
            ok = is_right(case.kind, case.expected, turn.outcome)
            right[case.kind].append(ok)
            if case.kind == "handoff" and case.expected == "out_of_scope":
                reasons.append(turn.outcome.reason == "out_of_scope")
            if not ok:
                misses.append({"id": case.id, "kind": case.kind, "expected": case.expected,
                               "got": f"{turn.outcome.source}:{turn.outcome.source_id or turn.outcome.reason}",
                               "message": case.message})
        every = [r for rs in right.values() for r in rs]
        return {
            "split": split, "n": len(every), "accuracy": round(float(np.mean(every)), 4),
            "per_kind": {k: {"n": len(right[k]), "accuracy": round(float(np.mean(right[k])), 4)}
                         for k in KINDS if right[k]},
            "out_of_scope_reason_accuracy": round(float(np.mean(reasons)), 4) if reasons else None,
            "p50_ms": round(float(np.median(latencies)) * 1000, 2),
            "routing": json.loads(service.routing.model_dump_json(exclude={"calibration"})),
            "calibration": service.routing.calibration, "models": service.model_versions(), "misses": misses,
        }
    finally:
        await service.close()


def evaluate_chat(settings, cases_path: Path, split: str = "test", calibrate: bool = False) -> dict:
    return asyncio.run(_evaluate(settings, cases_path, split, calibrate))


def print_chat_report(result: dict) -> None:
    for miss in result["misses"]:
        print(f"  miss {miss['id']} {miss['kind']:<8} expected {miss['expected']:<40} got {miss['got']:<40} "
              f"{miss['message']!r}")
    print(f"chat, split {result['split']}: {result['n']} messages, models {result['models']}")
    for kind, figures in result["per_kind"].items():
        print(f"  {kind:<9} {figures['accuracy']:.3f}  (n {figures['n']})")
    if result["out_of_scope_reason_accuracy"] is not None:
        print(f"  out-of-scope hand-offs with reason out_of_scope: {result['out_of_scope_reason_accuracy']:.3f}")
    print(f"overall {result['accuracy']:.3f}  p50 {result['p50_ms']:.1f} ms per message (in-process)")
    print(json.dumps({k: v for k, v in result.items() if k != "misses"}))
