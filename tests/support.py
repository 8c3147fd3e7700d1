"""Helpers the tests share: settings for a test server, reading its metrics, waiting for a condition, reflection,
loading a model once. Servers themselves start through nlpsuite.shared.local_run (ServerThread, ServeProcess)."""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import grpc

from nlpsuite.examples import __file__ as _examples_init
from nlpsuite.services.monitor.local_replay import read_topic, unique_topics
from nlpsuite.shared.config import BatchSettings, ModelSettings, SentimentSettings
from nlpsuite.shared.local_run import ServeProcess
from nlpsuite.shared.resources import examples_path

ROOT = Path(__file__).resolve().parents[1]
NEWS = Path(_examples_init).parent / "news.jsonl"  # the example news stream the monitor tests replay
ITEMS = [json.loads(line) for line in NEWS.read_text().splitlines() if line.strip()]


def settings_for(version, **overrides) -> SentimentSettings:
    """Sentiment settings serving `version` (a published ModelVersion) on a free port."""
    batch = overrides.pop("batch", BatchSettings(max_delay_ms=2.0))
    return SentimentSettings(
        host="127.0.0.1", port=0, metrics_port=0,
        model=ModelSettings(name=version.manifest.name, repository=version.path.parent.parent),
        watchlist=examples_path("watchlist.yaml"), batch=batch, **overrides,
    )


def sentiment_process(repository: Path, workdir: Path) -> ServeProcess:
    """A real `nlpsuite serve sentiment` of `repository`'s sentiment model (not started yet), draining for 2 s."""
    section = {"model": {"name": "sentiment", "repository": str(repository)}, "grace_s": 2}
    return ServeProcess("sentiment", section, workdir, service_name="nlpsuite.v1.SentimentService")


def new_topics(broker, prefix: str):
    """Fresh monitor topics (4 partitions each) on the local broker."""
    topics = unique_topics(prefix)
    broker.create_topics(topics.all(), partitions=4)
    return topics


def scored_ids(records) -> set[str]:
    """The news ids in `news.scored` records."""
    return {json.loads(r.value)["item"]["id"] for r in records}


def wait_for_ids(broker, topic, ids, timeout_s=180):
    """The records of `topic` once every id in `ids` is among them (or after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = read_topic(broker.bootstrap, topic, timeout_s=5, idle_s=0.3)
        if ids <= scored_ids(records) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def metric(service, name: str, /, **labels: str) -> float:
    """The sum of an in-process service's metric samples named `name` with these labels (one may be `service`)."""
    return sum(s.value for m in service.metrics.registry.collect() for s in m.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def wait_for(condition, timeout_s: float = 120.0, interval_s: float = 0.02) -> bool:
    """Until `condition()` is true (True) or `timeout_s` passed (False)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
    return True


def reflected_services(target: str) -> set[str]:
    """Service names the server lists through gRPC reflection."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        return {s.name for r in responses for s in r.list_services_response.service}


def load_and_close(model) -> None:
    """Load a ServedModel (open, warm up, self-test) and close it again, on a fresh event loop."""
    async def go() -> None:
        try:
            await model.load()
        finally:
            await model.close()

    asyncio.run(go())
