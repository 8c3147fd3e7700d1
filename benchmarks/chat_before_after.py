"""The chat service as it was at a git commit against the current one, in one interleaved run over gRPC:
accuracy per kind on a split of a chat cases file, and `Reply` p50/p90 at concurrency 1.

    python benchmarks/chat_before_after.py --commit 9b5eeec --before-repository models-old \
        --repository models [--data examples/chat_cases.csv --split test]

The earlier service's module and knowledge base loader are taken from the commit with `git show` (into a temp
dir); everything else is today's code. It must have read `intent_threshold`, `faq_threshold` and
`handoff_threshold` (as chat did until the routing was calibrated). Last line: JSON.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nlpsuite.services.chat.client import ChatClient  # noqa: E402
from nlpsuite.services.chat.service import ChatService  # noqa: E402
from nlpsuite.shared.config import ChatSettings, ModelSettings  # noqa: E402
from nlpsuite.v1 import chat_pb2  # noqa: E402
from nlpsuite.shared.local_run import ServerThread  # noqa: E402


class EarlierSettings(ChatSettings):
    intent_threshold: float = 0.5
    faq_threshold: float = 0.6
    handoff_threshold: float = 0.2


def earlier_service(commit: str):
    folder = Path(tempfile.mkdtemp(prefix="chat-before-"))
    for name in ("service", "knowledge_base"):
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:services/chat/{name}.py"],
                              check=True, capture_output=True, text=True).stdout
        text = text.replace("from nlpsuite.services.chat.knowledge_base import", "from earlier_knowledge_base import")
        # The wire helpers moved to shared/rpc.py since (same functions): the earlier code calls them there.
        text = text.replace("from nlpsuite.shared.serving import ServedModel, Timing, deadline_of",
                            "from nlpsuite.shared.rpc import deadline_of, model_info, timing_proto\n"
                            "from nlpsuite.shared.serving import ServedModel, Timing")
        text = text.replace("timing.proto()", "timing_proto(timing)").replace("model=result.model",
                                                                                "model=model_info(result.model)")
        (folder / f"earlier_{name}.py").write_text(text)
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location("earlier_service", folder / "earlier_service.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ChatService


def right(case: dict, reply) -> bool:
    if case["kind"] == "handoff":
        return reply.handoff
    if case["kind"] == "intent":
        return reply.source == chat_pb2.ANSWER_SOURCE_INTENT and reply.intent == case["expected"]
    return (reply.source in (chat_pb2.ANSWER_SOURCE_FAQ, chat_pb2.ANSWER_SOURCE_DOCUMENT)
            and case["expected"] in (reply.faq_id, reply.source_id))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--commit", required=True)
    p.add_argument("--before-repository", type=Path, required=True)
    p.add_argument("--repository", type=Path, required=True)
    p.add_argument("--data", type=Path, default=ROOT / "examples" / "chat_cases.csv")
    p.add_argument("--split", default="test")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()

    def settings(cls, repo: Path):
        return cls(host="127.0.0.1", port=0,
                   intent_model=ModelSettings(name="intent", repository=repo, reload_interval_s=0),
                   embedder=ModelSettings(name="embedder", repository=repo, reload_interval_s=0))

    cases = [r for r in csv.DictReader(open(args.data, newline="")) if r["split"] == args.split]
    Earlier = earlier_service(args.commit)
    with ServerThread(Earlier(settings(EarlierSettings, args.before_repository))).start() as before, \
            ServerThread(ChatService(settings(ChatSettings, args.repository))).start() as now, \
            ChatClient(before.target) as cb, ChatClient(now.target) as cn:
        clients = {"before": cb, "now": cn}
        for client in clients.values():
            for case in cases[:20]:
                client.reply("warm-up", case["message"])
        times: dict[str, list[float]] = {"before": [], "now": []}
        ok: dict[str, dict[str, list[bool]]] = {"before": {}, "now": {}}
        for rnd in range(args.rounds):
            for i, case in enumerate(cases):
                order = ["before", "now"] if (i + rnd) % 2 == 0 else ["now", "before"]
                for name in order:
                    conversation = f"{name}-{rnd}-{i}"
                    if case["previous"]:
                        clients[name].reply(conversation, case["previous"])
                    started = time.perf_counter()
                    reply = clients[name].reply(conversation, case["message"])
                    times[name].append(time.perf_counter() - started)
                    if rnd == 0:
                        ok[name].setdefault(case["kind"], []).append(right(case, reply))
    out: dict[str, object] = {"split": args.split, "cases": len(cases), "commit": args.commit}
    for name in ("before", "now"):
        every = [x for v in ok[name].values() for x in v]
        out[name] = {"accuracy": round(sum(every) / len(every), 3),
                     "per_kind": {k: round(sum(v) / len(v), 3) for k, v in ok[name].items()},
                     "p50_ms": round(statistics.median(times[name]) * 1000, 2),
                     "p90_ms": round(sorted(times[name])[int(len(times[name]) * 0.9)] * 1000, 2)}
    out["p50_ratio"] = round(out["now"]["p50_ms"] / out["before"]["p50_ms"], 3)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
