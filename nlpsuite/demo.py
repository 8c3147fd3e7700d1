"""`nlpsuite demo`: the whole suite on this machine, from the shipped example data.

Builds the default models the repository lacks, starts the local broker, every gRPC service and the news
monitor as child processes on free loopback ports, replays examples/news.jsonl so the planted surge raises
its alert, calls each service with example inputs, prints the results, then stops everything. Exit code 1
when the alert did not arrive or any step failed. Children run in their own sessions with a parent-death
signal and are stopped on any exit (SIGTERM, then SIGKILL after a grace period).
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from nlpsuite import examples
from nlpsuite.services.chat.service import ROUTING_FILE
from nlpsuite.services.monitor.broker import LocalBroker
from nlpsuite.shared.local_run import free_port, set_pdeathsig, wait_serving
from nlpsuite.services.monitor.config import KafkaSettings, Topics
from nlpsuite.services.monitor.producer import replay
from nlpsuite.shared.model_repo import ModelRepoError, ModelRepository

EXAMPLES = Path(examples.__file__).parent
MODELS = ("sentiment", "intent", "embedder")  # pipeline.defaults.DEFAULT_NAMES (importing it loads torch)
SERVICES = {"sentiment": "nlpsuite.v1.SentimentService", "chat": "nlpsuite.v1.ChatService",
            "recommend": "nlpsuite.v1.RecommendService"}
# A replay compresses 4 hours of event time into seconds, so the event-time skew between news partitions is
# large: the monitor tests' settings (services/monitor/local_replay.replay_settings) cover it.
REPLAY_ENV = {"NLPSUITE_MONITOR_WINDOWS__ALLOWED_LATENESS_S": "7200", "NLPSUITE_MONITOR_ALIGN_S": "600"}

# What each shows: an intent's answer, a document passage, an FAQ entry, an out-of-scope hand-off, a requested one.
CHAT_MESSAGES = ["I lost my card yesterday", "What time do your branches open on Saturday?",
                 "How much cash can I take out of a cash machine in one day?",
                 "What's the weather like in Lisbon today?", "I want to talk to a real person"]
HEADLINES = ["Norvale Mining shares jump after record copper output",
             "Regulator fines Quillon Bank over money-laundering failures",
             "Glenmoor Utilities keeps its dividend unchanged",
             "Explosion at Marrowind plant forces evacuation of nearby homes"]
# A reader who liked two chip-maker stories and disliked two mining ones; candidates: two later headlines of
# each of these companies, from the example news.
READER = {"CRVN": 5.0, "NVM": 1.0}
CANDIDATE_TICKERS = ("CRVN", "NVM", "HLDP", "QLNB", "ALTV")


class DemoError(RuntimeError):
    pass


class _Stop(BaseException):
    """SIGTERM to the demo: unwind like Ctrl-C so every child is stopped."""


def _raise_stop(*_) -> None:
    raise _Stop()


def say(t0: float, message: str) -> None:
    print(f"[{time.monotonic() - t0:6.1f}s] {message}", flush=True)


class Children:
    """Child processes, each in its own session (process group) and killed if the demo dies."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        """Run `argv` with `env` as its only NLPSUITE_* settings (the caller's would change ports or topics)."""
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("NLPSUITE_")}
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=inherited | env, preexec_fn=set_pdeathsig)
        self.procs[name] = proc
        return proc

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise DemoError(f"{name} exited with code {proc.returncode}: {self.tail(name)}")

    def tail(self, name: str, chars: int = 1500) -> str:
        path = self.log_dir / f"{name}.log"
        return f"(log {path})\n" + path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self, name: str, timeout_s: float = 20.0) -> int | None:
        """SIGTERM to its process group, wait, then SIGKILL. Returns the exit code (None if it was killed)."""
        proc = self.procs.pop(name)
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
                return None
            except ProcessLookupError:
                proc.wait(5)
        return proc.returncode

    def stop_all(self) -> dict[str, int | None]:
        return {name: self.stop(name) for name in list(reversed(self.procs))}


def build_missing(repository: Path, t0: float) -> None:
    repo = ModelRepository(repository)
    missing = [name for name in MODELS if not repo.versions(name)]
    if not missing:
        say(t0, f"models: {', '.join(MODELS)} found in {repository}")
        if not (repository / ROUTING_FILE).is_file():  # a repository built before chat's routing was calibrated
            from nlpsuite.pipeline.defaults import calibrate_default_chat

            say(t0, "chat: calibrating the routing on examples/chat_cases.csv (dev half)")
            calibrate_default_chat(repository)
        return
    say(t0, f"models: building {', '.join(missing)} from {EXAMPLES} into {repository} (minutes on 2 cores)")
    from nlpsuite.pipeline.defaults import build_defaults

    for version in build_defaults(repository, only=missing, progress=False):
        say(t0, f"  published {version.manifest.name} version {version.manifest.version}")


def has_recommender(repository: Path) -> bool:
    try:
        return ModelRepository(repository).resolve("recommender").manifest.task == "recommend"
    except ModelRepoError:
        return False


def serve_env(repository: Path, ports: dict[str, int] | None = None) -> dict[str, str]:
    """Environment for `nlpsuite serve all` on this repository (and on the given loopback ports)."""
    env = {}
    if repository != Path("models"):  # a nested model setting is replaced as a whole: name it too
        models = {"SENTIMENT__MODEL": "sentiment", "CHAT__INTENT_MODEL": "intent", "CHAT__EMBEDDER": "embedder",
                  "RECOMMEND__EMBEDDER": "embedder"}
        if has_recommender(repository):
            models["RECOMMEND__RANKER"] = "recommender"
        for key, name in models.items():
            env[f"NLPSUITE_{key}__NAME"] = name
            env[f"NLPSUITE_{key}__REPOSITORY"] = str(repository)
    if not has_recommender(repository):
        env["NLPSUITE_RECOMMEND__RANKER"] = "null"  # text match only
    for name, port in (ports or {}).items():
        env[f"NLPSUITE_{name.upper()}__HOST"] = "127.0.0.1"
        env[f"NLPSUITE_{name.upper()}__PORT"] = str(port)
    return env


def stream_args(bootstrap: str, sentiment: str) -> list[str]:
    return ["stream", "--local-broker", "--bootstrap-servers", bootstrap, "--sentiment", sentiment,
            "--watchlist", _shown(EXAMPLES / "watchlist.yaml")]


def wait_for_alerts(kafka: KafkaSettings, topic: str, alive: Callable[[], None], timeout_s: float,
                    settle_s: float = 3.0) -> list[dict]:
    """Every alert on `topic`, read from the start until `settle_s` after the first one (or the timeout)."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    consumer = KafkaConsumer(**kafka.consumer(None, client_id="nlpsuite-demo"))
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        alerts: list[dict] = []
        deadline, first = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline and (first is None or time.monotonic() - first < settle_s):
            for records in consumer.poll(timeout_ms=500).values():
                alerts.extend(json.loads(r.value) for r in records)
            if alerts and first is None:
                first = time.monotonic()
            alive()
        return alerts
    finally:
        consumer.close()


def print_alert(a: dict) -> None:
    start, end = a["window_start"], a["window_end"]
    print(f"  ALERT {a['severity'].upper()}: {a['name']} ({a['key_kind']} {a['key']}), rule {a['rule']}")
    print(f"    window {start[:10]} {start[11:16]}-{end[11:16]} UTC: {a['negatives']} negative of {a['total']} "
          f"items (share {a['share']:.0%}), baseline {a['baseline']:.2f}/window, ratio {a['ratio']:.1f}")
    for h in a["headlines"]:
        print(f"    {h['published_at'][11:16]}  negative {h['negative']:.2f}  {h['headline']}")


def call_chat(target: str) -> None:
    from nlpsuite.services.chat.client import ChatClient
    from nlpsuite.v1.chat_pb2 import AnswerSource

    with ChatClient(target) as client:
        for i, message in enumerate(CHAT_MESSAGES):
            r = client.reply(f"demo-{i}", message)
            source = AnswerSource.Name(r.source).removeprefix("ANSWER_SOURCE_").lower()
            found = f" {r.source_id} (retrieval {r.retrieval_confidence:.2f})" if source in ("faq", "document") else ""
            handoff = f"yes ({r.handoff_reason})" if r.handoff else "no"
            print(f"  > {message}\n    intent {r.intent} ({r.confidence:.2f}), source {source}{found}, "
                  f"handoff {handoff}\n    answer: {r.answer}")


def call_sentiment(target: str) -> None:
    from nlpsuite.services.sentiment.client import SentimentClient

    with SentimentClient(target) as client:
        response = client.analyze(HEADLINES)
    for text, r in zip(HEADLINES, response.results):
        entities = ", ".join(f"{e.name} ({e.ticker})" for e in r.entities) or "-"
        print(f"  {r.label:8s} {r.confidence:.2f}  {text}\n"
              f"           topics: {', '.join(r.topics) or '-'}; entities: {entities}")
    m = response.model
    print(f"  (model {m.name} v{m.version} {m.variant} on {m.provider})")


def reader_example() -> tuple[list[tuple[str, float]], list[tuple[str, str]]]:
    """History: the first two headlines of each READER company, rated. Candidates: the next two of each
    CANDIDATE_TICKERS company."""
    items = [json.loads(line) for line in (EXAMPLES / "news.jsonl").read_text().splitlines() if line.strip()]
    by_ticker: dict[str, list[dict]] = {}
    for item in items:
        if len(item["tickers"]) == 1:
            by_ticker.setdefault(item["tickers"][0], []).append(item)
    history = [(i["headline"], rating) for ticker, rating in READER.items() for i in by_ticker[ticker][:2]]
    candidates = [(i["id"], i["headline"]) for ticker in CANDIDATE_TICKERS
                  for i in by_ticker[ticker][2 if ticker in READER else 0:][:2]]
    return history, candidates


def call_recommend(target: str, ranker: bool) -> None:
    from nlpsuite.services.recommend.client import RecommendClient

    history, candidates = reader_example()
    text = dict(candidates)
    with RecommendClient(target) as client:
        response = client.rank(client.user(history=history, user_id="demo-reader"), candidates, k=len(candidates))
    print("  reader's history:")
    for headline, rating in history:
        print(f"    rated {rating:.0f}/5  {headline}")
    how = "learned ranker" if ranker else "text match only: no `recommender` model (needs MovieLens-style data)"
    print(f"  ranked {len(candidates)} unread headlines ({how}):")
    for rank, item in enumerate(response.items, 1):
        print(f"    {rank:2d}. score {item.score:+.3f} (text match {item.text_match:+.3f})  {text[item.id]}")


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it is inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def keep_running_help(repository: Path) -> str:
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in serve_env(repository).items())
    stream_env = " ".join(f"{k}={v}" for k, v in REPLAY_ENV.items())
    stream = shlex.join(["nlpsuite", *stream_args("127.0.0.1:9092", "127.0.0.1:50051")])
    news = _shown(EXAMPLES / "news.jsonl")
    return "\n".join([
        "To keep it running: `nlpsuite demo --keep-running` (stops on Ctrl-C), or start each part in its own",
        "terminal (default ports; the broker keeps data in memory only):",
        "  nlpsuite broker --port 9092",
        f"  {env} nlpsuite serve all    # sentiment :50051, chat :50052, recommend :50053",
        f"  {stream_env} {stream}",
        f"  nlpsuite produce --local-broker --bootstrap-servers 127.0.0.1:9092 --file {news}",
        "  # alerts: the `alerts` topic; clients: nlpsuite.services.{chat,sentiment,recommend}.client",
    ])


def run_demo(repository: Path, alert_timeout_s: float = 120.0, serve_timeout_s: float = 300.0,
             keep_running: bool = False) -> int:
    t0 = time.monotonic()
    repository = Path(repository)
    log_dir = Path(tempfile.mkdtemp(prefix="nlpsuite-demo-"))
    children = Children(log_dir)
    broker = LocalBroker(log_file=log_dir / "broker.log")
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    ok = False
    try:
        build_missing(repository, t0)
        ranker = has_recommender(repository)
        broker.start()
        topics = Topics()
        broker.create_topics(topics.all(), partitions=4)
        say(t0, f"broker: Tansu (memory only) on {broker.bootstrap}, topics {', '.join(topics.all())}")

        ports = {name: free_port() for name in SERVICES}
        targets = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
        cli = [sys.executable, "-m", "nlpsuite.cli"]
        children.start("serve", [*cli, "serve", "all"], serve_env(repository, ports))
        say(t0, "services: `nlpsuite serve all` loading models ("
                + ", ".join(f"{n} {t}" for n, t in targets.items()) + ")")
        for name, target in targets.items():
            wait_serving(target, SERVICES[name], children.check, serve_timeout_s)
        say(t0, "services: all SERVING")

        children.start("stream", [*cli, *stream_args(broker.bootstrap, targets["sentiment"])],
                       REPLAY_ENV)
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, client_id="nlpsuite-demo").local()
        sent = replay(EXAMPLES / "news.jsonl", topics.news, kafka)
        say(t0, f"monitor: started; replayed {sent} news items into `{topics.news}`; waiting for alerts "
                f"(up to {alert_timeout_s:.0f} s)")
        alerts = wait_for_alerts(kafka, topics.alerts, children.check, alert_timeout_s)
        if not alerts:
            raise DemoError(f"no alert within {alert_timeout_s:.0f} s: {children.tail('stream')}")
        say(t0, f"monitor: {len(alerts)} alert(s) on `{topics.alerts}`")
        for alert in alerts:
            print_alert(alert)

        say(t0, "chat: Reply")
        call_chat(targets["chat"])
        say(t0, "sentiment: Analyze")
        call_sentiment(targets["sentiment"])
        say(t0, "recommend: Rank")
        call_recommend(targets["recommend"], ranker)
        ok = True
        if keep_running:
            say(t0, f"running until Ctrl-C: {broker.bootstrap}, " + ", ".join(f"{n} {t}" for n, t in targets.items()))
            while True:
                children.check()
                time.sleep(1)
    except (KeyboardInterrupt, _Stop):
        say(t0, "interrupted")
    except (DemoError, grpc.RpcError, RuntimeError, OSError) as exc:
        ok = False
        detail = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.RpcError) else str(exc)
        print(f"nlpsuite demo: FAILED: {detail}\n  logs: {log_dir}", file=sys.stderr, flush=True)
    finally:
        codes = children.stop_all()
        broker.stop()
        signal.signal(signal.SIGTERM, previous)
    unclean = {name: code for name, code in codes.items() if code != 0}
    say(t0, "stopped: " + ", ".join(f"{n} exit {c}" for n, c in codes.items()) + ", broker"
        + (f"; not clean: {unclean}" if unclean else ""))
    say(t0, f"total {time.monotonic() - t0:.1f} s; logs in {log_dir}")
    print(keep_running_help(repository), flush=True)
    return 0 if ok and not unclean else 1
