"""What choosing the route costs per message: retrieval search plus the routing decision, under two routing files
(e.g. thresholds vs a learned route model), over the same observed messages, interleaved rounds.

    python benchmarks/chat_decide_cost.py --repository models --routing A.json --routing B.json \
        [--data examples/chat_cases.csv --split test --rounds 20]

The models' inference is left out (it is the same whichever routing decides). Last line: JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

from nlpsuite.pipeline.chat_eval import load_cases
from nlpsuite.services.chat.routing import Routing, Scores, decide_turn
from nlpsuite.services.chat.service import ChatService
from nlpsuite.shared.config import ChatSettings, ModelSettings
from nlpsuite.shared.serving import Timing


async def measure(args: argparse.Namespace) -> dict:
    settings = ChatSettings(intent_model=ModelSettings(name="intent", repository=args.repository, reload_interval_s=0),
                            embedder=ModelSettings(name="embedder", repository=args.repository, reload_interval_s=0),
                            routing=args.routing[0])
    service = ChatService(settings)
    await service.load()
    try:
        labels = service.intents.labels
        routings = {str(path): Routing.load(path) for path in args.routing}
        observed = []
        for case in load_cases(args.data):
            if args.split in ("all", case.split):
                turn, _, _ = await service.observe_turn(case.message, case.previous or None, Timing(0.0), None)
                observed.append(turn)
        times: dict[str, list[float]] = {name: [] for name in routings}
        for _ in range(args.rounds):
            for name, routing in routings.items():
                for turn in observed:
                    started = time.perf_counter()
                    scores = [Scores(o.probs, service.search(o.text, o.vector, routing.lexical_weight),
                                     o.intent_similarity) for o in turn]
                    decide_turn(scores[0], scores[1] if len(scores) > 1 else None, routing, labels)
                    times[name].append(time.perf_counter() - started)
        return {name: {"p50_us": round(float(np.median(t)) * 1e6, 1),
                       "p90_us": round(float(np.percentile(t, 90)) * 1e6, 1),
                       "learned": routings[name].route_model is not None} for name, t in times.items()}
    finally:
        await service.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, default=Path("models"))
    p.add_argument("--routing", type=Path, action="append", required=True, help="a routing file; give two or more")
    p.add_argument("--data", type=Path, default=Path("examples/chat_cases.csv"))
    p.add_argument("--split", default="test")
    p.add_argument("--rounds", type=int, default=20)
    result = asyncio.run(measure(p.parse_args()))
    for name, figures in result.items():
        print(f"{name}: search + decision p50 {figures['p50_us']} us, p90 {figures['p90_us']} us"
              f"{' (learned route)' if figures['learned'] else ' (thresholds)'}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
