"""Benchmark (not a test) of the news monitor on this machine: a real Tansu broker, the real sentiment server
(subprocess) and the real monitor (both stages in one process).

It builds a longer stream from examples/news.jsonl: COPIES back-to-back copies of the 4-hour file, each
shifted by 4 simulated hours with its ids suffixed, so each copy carries one planted surge (one alert).

Phase 1, throughput: the whole stream is loaded into `news` first, then the monitor starts and drains it;
sustained throughput = items / (last scored - first scored), from the scored records' timestamps.
Phase 2, latency: with the monitor running and caught up, the stream is produced at --rate news/s;
publish-to-alert latency = alert record timestamp - timestamp of the news record that triggered it.

    python benchmarks/stream_monitor.py --models models [--copies 12] [--rate 200]

Needs a built sentiment model (`nlpsuite build-defaults --only sentiment --repository models`).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nlpsuite.services.monitor.app import Monitor  # noqa: E402
from nlpsuite.services.monitor.broker import LocalBroker, free_port  # noqa: E402
from nlpsuite.services.monitor.producer import replay  # noqa: E402
from tests.monitor_support import SentimentProcess, monitor_settings, read_topic, unique_topics  # noqa: E402

NEWS = ROOT / "examples" / "news.jsonl"


def make_stream(copies: int, path: Path) -> int:
    items = [json.loads(line) for line in NEWS.read_text().splitlines() if line.strip()]
    n = 0
    with open(path, "w") as out:
        for c in range(copies):
            for item in items:
                t = datetime.fromisoformat(item["published_at"].replace("Z", "+00:00")) + timedelta(hours=4 * c)
                out.write(json.dumps(item | {"id": f"{item['id']}-{c}",
                                             "published_at": t.isoformat().replace("+00:00", "Z")}) + "\n")
                n += 1
    return n


def sentiment_cpu(proc) -> float:
    """user+system CPU seconds of the sentiment server process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{proc.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        import os

        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, AttributeError):
        return float("nan")


def pct(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


def distinct_scored(bootstrap, topic) -> dict[str, int]:
    out = {}
    for r in read_topic(bootstrap, topic, timeout_s=5, idle_s=0.3):
        v = json.loads(r.value)
        out.setdefault(v["item"]["id"], r.timestamp)
    return out


def wait_all(bootstrap, topic, n, timeout_s, monitor):
    """Wait on the monitor's own counter (cheap), then read the scored topic once."""
    deadline = time.monotonic() + timeout_s
    while monitor.metrics.scored._value.get() < n and time.monotonic() < deadline and not monitor.errors:
        time.sleep(0.2)
    return distinct_scored(bootstrap, topic)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, required=True, help="model repository with sentiment/")
    ap.add_argument("--copies", type=int, default=12)
    ap.add_argument("--rate", type=float, default=200.0, help="news/s in the latency phase")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--batch-max", type=int, default=256, help="most news per poll and sentiment call")
    ap.add_argument("--align-s", type=float, default=3600.0,
                    help="event-time alignment between news partitions (the replay compresses time ~2000x)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="stream-bench-"))
    stream = tmp / "news.jsonl"
    n = make_stream(args.copies, stream)
    with LocalBroker() as broker:
        sentiment = SentimentProcess(args.models, free_port(), log_file=tmp / "sentiment.log").start()
        try:
            # Phase 1: drain a preloaded backlog.
            topics = unique_topics("bench-tp")
            broker.create_topics(topics.all(), args.partitions)
            settings = monitor_settings(broker.bootstrap, topics, sentiment.target, batch_max=args.batch_max,
                                        align_s=args.align_s)
            replay(stream, topics.news, settings.kafka)
            cpu0, sent_cpu0 = time.process_time(), sentiment_cpu(sentiment)
            monitor = Monitor(settings).start()
            try:
                got = wait_all(broker.bootstrap, topics.scored, n, timeout_s=600, monitor=monitor)
            finally:
                monitor.stop()
            cpu_monitor, cpu_sentiment = time.process_time() - cpu0, sentiment_cpu(sentiment) - sent_cpu0
            stamps = sorted(got.values())
            span = (stamps[-1] - stamps[0]) / 1000 if len(stamps) > 1 else float("nan")
            throughput = len(got) / span if span else float("nan")
            print(f"throughput: {len(got)}/{n} news scored in {span:.2f} s of draining -> {throughput:.0f} news/s")
            print(f"  CPU seconds while draining: monitor process {cpu_monitor:.1f} (includes this script's readers), "
                  f"sentiment server {cpu_sentiment:.1f}")

            # Phase 2: produce at a fixed rate into a running, caught-up monitor.
            topics = unique_topics("bench-lat")
            broker.create_topics(topics.all(), args.partitions)
            settings = monitor_settings(broker.bootstrap, topics, sentiment.target, batch_max=args.batch_max,
                                        align_s=args.align_s)
            monitor = Monitor(settings).start()
            sent_at: dict[str, float] = {}
            try:
                deadline = time.monotonic() + 30
                while not (monitor.scorer.consumer.assignment() and monitor.aggregator.consumer.assignment()):
                    if time.monotonic() > deadline:
                        raise RuntimeError("monitor did not join its groups")
                    time.sleep(0.1)
                time.sleep(1.0)
                t0 = time.perf_counter()
                replay(stream, topics.news, settings.kafka, rate=args.rate,
                       on_sent=lambda line, ts: sent_at.__setitem__(json.loads(line)["id"], ts))
                produce_s = time.perf_counter() - t0
                got = wait_all(broker.bootstrap, topics.scored, n, timeout_s=600, monitor=monitor)
                time.sleep(2)
                alerts = [(json.loads(r.value), r.timestamp) for r in read_topic(broker.bootstrap, topics.alerts)]
                news_ts = {json.loads(r.value)["id"]: r.timestamp
                           for r in read_topic(broker.bootstrap, topics.news, min_count=n)}
            finally:
                monitor.stop()
            lat = [(ts - news_ts[a["triggered_by"]]) / 1000 for a, ts in alerts if a["triggered_by"] in news_ts]
            scored_lat = [v for v in monitor.metrics.publish_to_scored.collect()[0].samples if v.name.endswith("_sum")]
            count = monitor.metrics.publish_to_scored._count.get() if hasattr(monitor.metrics.publish_to_scored, "_count") else 0
            print(f"latency phase: {n} news at {args.rate:.0f}/s (produced in {produce_s:.1f} s), {len(got)} scored, "
                  f"{len(alerts)} alerts ({sum(1 for a, _ in alerts if a['key'] == 'MWCH')} for MWCH)")
            if lat:
                print(f"publish-to-alert latency over {len(lat)} alerts: p50 {pct(lat, 50) * 1000:.0f} ms, "
                      f"p95 {pct(lat, 95) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms")
            if count:
                print(f"publish-to-scored latency: mean {scored_lat[0].value / count * 1000:.0f} ms over {count:.0f} items")
        finally:
            sentiment.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
