"""Hot reload under continuous load: a new version is picked up with zero failed calls; a broken one is refused
while the serving version keeps answering."""
from __future__ import annotations

import shutil
import threading
import time

import grpc

from nlpsuite.services.sentiment.service import SentimentService
from nlpsuite.shared.config import ModelSettings, SentimentSettings
from nlpsuite.shared.model_repo import ModelRepository
from nlpsuite.v1 import sentiment_pb2, sentiment_pb2_grpc
from nlpsuite.shared.local_run import ServerThread
from tests.support import wait_for

NAME = "sentiment"


class Load:
    """Clients calling Analyze back to back until stopped; every outcome is kept."""

    def __init__(self, target: str, clients: int = 3) -> None:
        self.target = target
        self.stop = threading.Event()
        self.versions: list[list[str]] = [[] for _ in range(clients)]
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, index: int) -> None:
        with grpc.insecure_channel(self.target) as channel:
            stub = sentiment_pb2_grpc.SentimentServiceStub(channel)
            while not self.stop.is_set():
                try:
                    reply = stub.Analyze(sentiment_pb2.AnalyzeRequest(texts=["Norvale Mining shares jump",
                                                                             f"call {index}"]), timeout=60)
                    self.versions[index].append(reply.model.version)
                except grpc.RpcError as err:
                    self.failures.append(f"{err.code().name}: {err.details()}")

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(120)

    def latest(self) -> set[str]:
        return {v[-1] for v in self.versions if v}


def truncated_copy(source, into) -> None:
    shutil.copytree(source, into)
    onnx = into / "model.int8.onnx"
    onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])


def test_new_version_is_picked_up_and_a_broken_one_refused_without_a_failed_call(tmp_path, built_classifier):
    repo = ModelRepository(tmp_path / "models")
    assert repo.publish(built_classifier.path, NAME).manifest.version == "1"
    settings = SentimentSettings(host="127.0.0.1", port=0, model=ModelSettings(
        name=NAME, repository=repo.root, reload_interval_s=0.2))
    service = SentimentService(settings)
    with ServerThread(service).start() as srv, Load(srv.target) as load:
        assert wait_for(lambda: all(len(v) >= 3 for v in load.versions))
        assert load.latest() == {"1"}

        repo.publish(built_classifier.path, NAME)  # v2 appears while requests are in flight
        assert wait_for(lambda: load.latest() == {"2"}), load.latest()

        truncated_copy(built_classifier.path, tmp_path / "broken")
        repo.publish(tmp_path / "broken", NAME)  # v3: cannot be opened
        assert wait_for(lambda: "3" in service.model.refused)
        served = [len(v) for v in load.versions]
        assert wait_for(lambda: all(len(v) >= n + 3 for v, n in zip(load.versions, served)))
        time.sleep(1.0)  # several more polls: the refused version is not retried
    assert load.failures == []
    for seen in load.versions:  # each client saw 1s, then 2s, never 3 and never back
        assert seen == sorted(seen) and set(seen) == {"1", "2"}, seen
    assert "model.int8.onnx" in service.model.refused["3"]
    registry = service.metrics.registry

    def reloads(outcome: str) -> float | None:
        return registry.get_sample_value("nlpsuite_model_reloads_total",
                                         {"service": "sentiment", "model": NAME, "outcome": outcome})

    assert reloads("switched") == 1 and reloads("refused") == 1
    assert registry.get_sample_value("nlpsuite_model_version_info", {
        "service": "sentiment", "model": NAME, "version": "2", "variant": "int8",
        "provider": "CPUExecutionProvider"}) == 1


def test_a_version_with_other_labels_is_refused(tmp_path, built_classifier):
    import json

    repo = ModelRepository(tmp_path / "models")
    repo.publish(built_classifier.path, NAME)
    settings = SentimentSettings(host="127.0.0.1", port=0, model=ModelSettings(
        name=NAME, repository=repo.root, reload_interval_s=0))  # 0: no watcher; reload() is called directly
    service = SentimentService(settings)
    with ServerThread(service).start() as srv:
        staged = tmp_path / "renamed"
        shutil.copytree(built_classifier.path, staged)
        manifest = json.loads((staged / "manifest.json").read_text())
        manifest["labels"] = [f"{label}-renamed" for label in manifest["labels"]]
        (staged / "manifest.json").write_text(json.dumps(manifest))
        repo.publish(staged, NAME)
        assert srv.call(service.model.reload()) == "refused"
        assert "labels" in service.model.refused["2"]
        assert srv.call(service.model.reload()) is None  # not retried
        assert service.model.info().version == "1"


def test_disabled_reload_starts_no_watcher(tmp_path, built_classifier):
    repo = ModelRepository(tmp_path / "models")
    repo.publish(built_classifier.path, NAME)
    service = SentimentService(SentimentSettings(host="127.0.0.1", port=0, model=ModelSettings(
        name=NAME, repository=repo.root, reload_interval_s=0)))
    with ServerThread(service).start():
        assert service.model._watcher is None
