"""Intent accuracy through ChatService (real server, real channel) vs the intent model's own, on a labelled CSV.

    python benchmarks/chat_intent_accuracy.py --repository /tmp/serve-models \
        --data /work/shared/data/banking77/dev.csv --label-col category

Every message goes to Reply in a fresh conversation (and all texts to ClassifyIntent in batches); the
model's own predictions come from the same ONNX variant run in-process. `reply_accuracy` counts Reply's `intent`
field; `answered_by_gold_intent` counts replies that gave the gold intent's own answer (not a retrieved passage,
not a hand-off), the stricter figure.

`--calibrate-on HELDOUT.csv` first fits chat's routing for this deployment, as a user would with
`nlpsuite evaluate --task chat --calibrate`: on `--per-label` messages per label of HELDOUT (never the evaluated
data, and not texts the intent model trained on: the routing would then under-trust it) as intent cases, beside
the example cases file's dev FAQ, document and out-of-scope messages (the example FAQ and documents stay in the
knowledge base). For Banking77: hold 5 texts per intent out of train.csv, build the intent model on the rest, and
calibrate on the held-out ones. Last line: JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
import threading
from pathlib import Path

import numpy as np

from nlpsuite.services.chat.client import ChatClient
from nlpsuite.services.chat.service import ChatService
from nlpsuite.shared.config import ChatSettings, ModelSettings
from nlpsuite.shared.model import open_model, softmax
from nlpsuite.shared.local_run import free_port
from nlpsuite.shared.model_repo import ModelRepository
from nlpsuite.shared.server import GrpcServer


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, default=Path("models"))
    p.add_argument("--intent-model", default="intent")
    p.add_argument("--embedder", default="embedder")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--text-col", default="text")
    p.add_argument("--label-col", default="intent")
    p.add_argument("--knowledge-base", type=Path)
    p.add_argument("--answer-every-label", action="store_true", help="serve a knowledge base that gives every label "
                   "of the intent model an answer, beside the example FAQ and documents (written to a temp dir)")
    p.add_argument("--calibrate-on", type=Path, help="labelled CSV, held out of the intent model's training, to "
                   "calibrate the routing on first")
    p.add_argument("--per-label", type=int, default=5)
    args = p.parse_args()

    rows = list(csv.DictReader(open(args.data, newline="", encoding="utf-8")))
    texts, gold = [r[args.text_col] for r in rows], [r[args.label_col] for r in rows]
    version = ModelRepository(args.repository).resolve(args.intent_model)
    model = open_model(version)
    labels = version.manifest.labels
    own = np.concatenate([softmax(model.predict(texts[i:i + 32])) for i in range(0, len(texts), 32)])
    own_pred = [labels[i] for i in own.argmax(1)]

    if args.answer_every_label:
        import tempfile

        import yaml

        from nlpsuite.shared.resources import examples_path

        example = examples_path("knowledge_base.yaml")
        kb = yaml.safe_load(example.read_text())
        kb["intents"] = {label: {"answer": f"(the answer for {label})"} for label in labels}
        kb["documents"] = [str(example.parent / pattern) for pattern in kb.get("documents", [])]
        args.knowledge_base = Path(tempfile.mkdtemp()) / "knowledge_base.yaml"
        args.knowledge_base.write_text(yaml.safe_dump(kb))

    routing = None
    if args.calibrate_on is not None:
        routing = calibrate_routing(args, labels)

    port = free_port()
    settings = ChatSettings(host="127.0.0.1", port=port, max_items=64, knowledge_base=args.knowledge_base,
                            routing=routing,
                            intent_model=ModelSettings(name=args.intent_model, repository=args.repository),
                            embedder=ModelSettings(name=args.embedder, repository=args.repository))
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    server = GrpcServer(ChatService(settings))
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(120)
    asyncio.run_coroutine_threadsafe(server.wait_ready(), loop).result(300)
    try:
        with ChatClient(f"127.0.0.1:{port}") as client:
            batched = [p.intent for i in range(0, len(texts), 64)
                       for p in client.classify_intent(texts[i:i + 64]).predictions]
            replies = [client.reply(f"eval-{i}", t) for i, t in enumerate(texts)]
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(5), loop).result(60)
    reply_pred = [r.intent for r in replies]
    acc = lambda pred: float(np.mean([a == b for a, b in zip(pred, gold)]))  # noqa: E731
    handoffs = [r for r in replies if r.handoff]
    summary = {
        "n": len(texts), "model_accuracy": round(acc(own_pred), 4),
        "classify_intent_accuracy": round(acc(batched), 4), "reply_accuracy": round(acc(reply_pred), 4),
        "reply_agrees_with_model": round(float(np.mean([a == b for a, b in zip(reply_pred, own_pred)])), 4),
        "handoff_rate": round(len(handoffs) / len(texts), 4),
        "handoff_low_confidence": sum(r.handoff_reason == "low_confidence" for r in handoffs),
        "handoff_no_answer": sum(r.handoff_reason == "no_answer" for r in handoffs),
        "handoff_out_of_scope": sum(r.handoff_reason == "out_of_scope" for r in handoffs),
        "handoff_ambiguous": sum(r.handoff_reason == "ambiguous" for r in handoffs),
        "faq_answers": sum(r.source == 2 for r in replies), "document_answers": sum(r.source == 4 for r in replies),
        # answered with the gold intent's own answer (not retrieval, not a hand-off)
        "answered_by_gold_intent": round(float(np.mean([r.source == 1 and r.source_id == g
                                                         for r, g in zip(replies, gold)])), 4),
    }
    if routing is not None:
        summary["routing"] = json.loads(routing.read_text())
    print(json.dumps(summary))
    return 0


def calibrate_routing(args, labels: list[str]) -> Path:
    """A cases file for this deployment (see the module doc), calibrated on; returns the routing file."""
    import tempfile

    from nlpsuite.pipeline.chat_eval import evaluate_chat, load_cases
    from nlpsuite.shared.resources import examples_path

    folder = Path(tempfile.mkdtemp(prefix="chat-routing-"))
    rows = list(csv.DictReader(open(args.calibrate_on, newline="", encoding="utf-8")))
    taken: dict[str, int] = {}
    cases = []
    for i, row in enumerate(rows):
        label = row[args.label_col]
        if label in labels and taken.get(label, 0) < args.per_label:
            taken[label] = taken.get(label, 0) + 1
            cases.append({"id": f"t{i}", "split": "dev", "kind": "intent", "expected": label, "previous": "",
                          "message": row[args.text_col]})
    for case in load_cases(examples_path("chat_cases.csv")):
        if case.split == "dev" and (case.kind in ("faq", "document") or case.expected == "out_of_scope"):
            cases.append(case.model_dump())
    path = folder / "cases.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(cases[0]))
        writer.writeheader()
        writer.writerows(cases)
    routing = folder / "chat-routing.json"
    settings = ChatSettings(knowledge_base=args.knowledge_base, routing=routing,
                            intent_model=ModelSettings(name=args.intent_model, repository=args.repository),
                            embedder=ModelSettings(name=args.embedder, repository=args.repository))
    evaluate_chat(settings, path, split="dev", calibrate=True)
    return routing


if __name__ == "__main__":
    sys.exit(main())
