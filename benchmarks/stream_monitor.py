"""Benchmark (not a test) of the news monitor on this machine: a real Tansu broker, the real sentiment server
(subprocess) and the real monitor (both stages in one process).

It builds a longer stream from examples/news.jsonl: COPIES back-to-back copies of the 4-hour file, each
shifted by 4 simulated hours with its ids suffixed, so each copy carries one planted surge (one alert).

Phase 1, throughput: the whole stream is loaded into `news` first, then the monitor starts and drains it;
sustained throughput = items / (last scored - first scored), from the scored records' timestamps.
Phase 2, latency: with the monitor running and caught up, the stream is produced at --rate news/s;
publish-to-alert latency = alert record timestamp - timestamp of the news record that triggered it.

CPU budget (load-independent): CPU seconds of each process (sentiment server, broker, the monitor's threads,
the producer) over the drain, per news item, and the implied ceiling on a machine with --cores cores:
cores / (total CPU seconds per news). On a loaded machine wall-clock figures mean little; the budget does not.
The sentiment server's own metrics give its batch count and mean batch size; the scoring thread's phase
timers show where it waits (poll, wait_sentiment, confirm, commit) and where it works (validate, publish).

    python benchmarks/stream_monitor.py --models models [--copies 12] [--rate 200] [--drain-only]

Needs a built sentiment model (`nlpsuite build-defaults --only sentiment --repository models`).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import urllib.request
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nlpsuite.services.monitor.app import Monitor  # noqa: E402
from nlpsuite.services.monitor.broker import LocalBroker  # noqa: E402
from nlpsuite.shared.local_run import ServeProcess  # noqa: E402
from nlpsuite.services.monitor.producer import replay  # noqa: E402
from nlpsuite.services.monitor.local_replay import read_topic, replay_settings, unique_topics  # noqa: E402

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


TARGET_NEWS_S, TARGET_P95_S = 200.0, 1.5


def cpu_s(stat_path: str) -> float:
    """user+system CPU seconds from a /proc/<pid>/stat or /proc/<pid>/task/<tid>/stat file (Linux)."""
    try:
        fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def process_cpu(pid: int) -> float:
    """CPU seconds of a whole process, its reaped children included (fields 14-17)."""
    return cpu_s(f"/proc/{pid}/stat")


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each live Python thread of this process, summed by name (group ids stripped)."""
    out: dict[str, float] = {}
    for t in threading.enumerate():
        if t.native_id is None:
            continue
        name = re.sub(r" \| .*$|-\d+$", "", t.name)
        out[name] = out.get(name, 0.0) + cpu_s(f"/proc/self/task/{t.native_id}/stat")
    return out


class CpuMeter:
    """CPU seconds per process (and per monitor thread) between start() and stop()."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids

    def snapshot(self) -> dict[str, float]:
        snap = {name: process_cpu(pid) for name, pid in self.pids.items()}
        snap["this process (all threads)"] = process_cpu(os.getpid())
        snap |= {f"  thread {k}": v for k, v in thread_cpu().items()}
        return snap

    def start(self) -> "CpuMeter":
        self.before = self.snapshot()
        return self

    def stop(self) -> dict[str, float]:
        after = self.snapshot()
        # a thread that started during the run counts from zero
        return {k: v - self.before.get(k, 0.0) for k, v in after.items()}


def print_cpu_table(title: str, used: dict[str, float], n: int, cores: float) -> float:
    """Print CPU-ms per news per process; return the implied ceiling (news/s on `cores` cores)."""
    print(f"{title} ({n} news)")
    print(f"  {'process / thread':44s} {'CPU s':>8s} {'CPU ms/news':>12s}")
    total = 0.0
    for name, sec in used.items():
        if name.startswith("  thread") and sec < 0.05:
            continue
        print(f"  {name:44s} {sec:8.2f} {sec / n * 1000:12.3f}")
        if not name.startswith("  thread"):
            total += sec
    ceiling = cores * n / total if total > 0 else float("nan")
    print(f"  {'TOTAL (processes)':44s} {total:8.2f} {total / n * 1000:12.3f}"
          f"   -> implied ceiling on {cores:g} cores: {ceiling:.0f} news/s")
    return ceiling


def scrape(url: str) -> dict[str, float]:
    """Prometheus text from the sentiment server: the batch-size and stage histograms' sums and counts."""
    out: dict[str, float] = {}
    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith(("nlpsuite_batch_size_", "nlpsuite_stage_seconds_")) and \
                ("_sum" in line or "_count" in line):
            name, value = line.rsplit(" ", 1)
            out[name] = out.get(name, 0.0) + float(value)
    return out


def server_batches(before: dict[str, float], after: dict[str, float]) -> str:
    def delta(prefix: str, suffix: str) -> float:
        return sum(v - before.get(k, 0.0) for k, v in after.items() if k.startswith(prefix) and
                   k.split("{")[0].endswith(suffix))
    count, size = delta("nlpsuite_batch_size", "_count"), delta("nlpsuite_batch_size", "_sum")
    infer = sum(v - before.get(k, 0.0) for k, v in after.items()
                if k.startswith("nlpsuite_stage_seconds_sum") and 'stage="inference"' in k)
    if not count:
        return "sentiment server: no batch metrics"
    return (f"sentiment server: {count:.0f} model batches, mean {size / count:.1f} texts per batch; "
            f"inference time summed over requests {infer:.1f} s")


def score_phases(monitor) -> str:
    samples = {s.labels["phase"]: s.value for s in monitor.metrics.score_loop.collect()[0].samples
               if s.name.endswith("_total")}
    calls = monitor.metrics.sentiment_seconds._sum.get(), sum(
        b.get() for b in monitor.metrics.sentiment_seconds._buckets)
    consumed = monitor.metrics.consumed.labels(monitor.s.topics.news)._value.get()
    return (f"monitor: {calls[1]:.0f} sentiment calls for {consumed:.0f} news consumed (mean "
            f"{consumed / max(calls[1], 1):.0f} per call, mean call {calls[0] / max(calls[1], 1) * 1000:.0f} ms); "
            "scoring thread wall time by phase: ") + ", ".join(f"{k} {v:.1f}s" for k, v in sorted(samples.items()))


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
    ap.add_argument("--cores", type=float, default=2.0, help="cores of the target machine, for the CPU ceiling")
    ap.add_argument("--max-inflight", type=int, default=None, help="sentiment calls in flight (default: settings)")
    ap.add_argument("--drain-only", action="store_true", help="skip the latency phase")
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()}; {os.cpu_count()} CPUs visible")

    tuning = {} if args.max_inflight is None else {"max_inflight": args.max_inflight}
    tmp = Path(tempfile.mkdtemp(prefix="stream-bench-"))
    stream = tmp / "news.jsonl"
    n = make_stream(args.copies, stream)
    with LocalBroker() as broker:
        sentiment = ServeProcess("sentiment", {"model": {"name": "sentiment", "repository": str(args.models.resolve())},
                                               "grace_s": 2}, tmp, log_level="WARNING").start()
        metrics_url = sentiment.metrics_url
        print(f"pids: this process (monitor + producer) {os.getpid()}, sentiment server {sentiment.proc.pid}, "
              f"broker {broker.proc.pid}")
        pids = {"sentiment server": sentiment.proc.pid, "broker (tansu)": broker.proc.pid}
        verdict: list[str] = []
        try:
            # Phase 1: drain a preloaded backlog.
            topics = unique_topics("bench-tp")
            broker.create_topics(topics.all(), args.partitions)
            settings = replay_settings(broker.bootstrap, topics, sentiment.target, batch_max=args.batch_max,
                                        align_s=args.align_s, **tuning)
            meter = CpuMeter(pids).start()
            replay(stream, topics.news, settings.kafka)
            produce_cpu = meter.stop()
            print_cpu_table("CPU to produce the backlog (producer = this process)",
                            {"producer (this process)": produce_cpu["this process (all threads)"],
                             "broker (tansu)": produce_cpu["broker (tansu)"]}, n, args.cores)
            monitor = Monitor(settings)
            batches0 = scrape(metrics_url)
            meter = CpuMeter(pids).start()
            load0 = os.getloadavg()[0]
            monitor.start()
            try:
                deadline = time.monotonic() + 600
                while monitor.metrics.scored._value.get() < n and time.monotonic() < deadline and not monitor.errors:
                    time.sleep(0.2)
                drain_cpu = meter.stop()  # before this script reads the topic back
                batches1 = scrape(metrics_url)
                load1 = os.getloadavg()[0]
                phases = score_phases(monitor)
                got = distinct_scored(broker.bootstrap, topics.scored)
            finally:
                monitor.stop()
            stamps = sorted(got.values())
            span = (stamps[-1] - stamps[0]) / 1000 if len(stamps) > 1 else float("nan")
            throughput = len(got) / span if span else float("nan")
            print(f"throughput: {len(got)}/{n} news scored in {span:.2f} s of draining -> {throughput:.0f} news/s "
                  f"(load average {load0:.1f} -> {load1:.1f}); {len(monitor.aggregator.published)} alerts, "
                  f"{monitor.metrics.late._value.get():.0f} late items dropped")
            drain_cpu["monitor (this process)"] = drain_cpu.pop("this process (all threads)")
            ceiling = print_cpu_table("CPU budget while draining", drain_cpu, n, args.cores)
            print(f"  {server_batches(batches0, batches1)}")
            print(f"  {phases}")
            verdict.append(f"drain throughput {throughput:.0f} news/s (target {TARGET_NEWS_S:.0f}): "
                           f"{'PASS' if throughput >= TARGET_NEWS_S else 'FAIL'}; CPU ceiling {ceiling:.0f} news/s")
            if args.drain_only:
                print("\n".join(verdict))
                return 0

            # Phase 2: produce at a fixed rate into a running, caught-up monitor.
            topics = unique_topics("bench-lat")
            broker.create_topics(topics.all(), args.partitions)
            settings = replay_settings(broker.bootstrap, topics, sentiment.target, batch_max=args.batch_max,
                                        align_s=args.align_s, **tuning)
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
                meter = CpuMeter(pids).start()
                replay(stream, topics.news, settings.kafka, rate=args.rate,
                       on_sent=lambda line, ts: sent_at.__setitem__(json.loads(line)["id"], ts))
                produce_s = time.perf_counter() - t0
                deadline = time.monotonic() + 600
                while monitor.metrics.scored._value.get() < n and time.monotonic() < deadline and not monitor.errors:
                    time.sleep(0.2)
                live_cpu = meter.stop()
                live_cpu["monitor + producer (this process)"] = live_cpu.pop("this process (all threads)")
                got = wait_all(broker.bootstrap, topics.scored, n, timeout_s=600, monitor=monitor)
                time.sleep(2)
                alerts = [(json.loads(r.value), r.timestamp) for r in read_topic(broker.bootstrap, topics.alerts)]
                news_ts = {json.loads(r.value)["id"]: r.timestamp
                           for r in read_topic(broker.bootstrap, topics.news, min_count=n)}
            finally:
                monitor.stop()
            print_cpu_table(f"CPU budget in the latency phase (live stream at {args.rate:.0f}/s)", live_cpu, n, args.cores)
            print(f"  {score_phases(monitor)}")
            lat = [(ts - news_ts[a["triggered_by"]]) / 1000 for a, ts in alerts if a["triggered_by"] in news_ts]
            scored_lat = [v for v in monitor.metrics.publish_to_scored.collect()[0].samples if v.name.endswith("_sum")]
            count = monitor.metrics.publish_to_scored._count.get() if hasattr(monitor.metrics.publish_to_scored, "_count") else 0
            print(f"latency phase: {n} news at {args.rate:.0f}/s (produced in {produce_s:.1f} s), {len(got)} scored, "
                  f"{len(alerts)} alerts ({sum(1 for a, _ in alerts if a['key'] == 'MWCH')} for MWCH), "
                  f"{monitor.metrics.late._value.get():.0f} late items dropped")
            if lat:
                print(f"publish-to-alert latency over {len(lat)} alerts: p50 {pct(lat, 50) * 1000:.0f} ms, "
                      f"p95 {pct(lat, 95) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms "
                      f"(load average {os.getloadavg()[0]:.1f})")
                p95 = pct(lat, 95)
                verdict.append(f"publish-to-alert p95 {p95:.2f} s at {args.rate:.0f} news/s (target <= "
                               f"{TARGET_P95_S} s at {TARGET_NEWS_S:.0f}/s): "
                               f"{'PASS' if p95 <= TARGET_P95_S and args.rate >= TARGET_NEWS_S else 'FAIL'}")
            else:
                verdict.append("publish-to-alert: no alerts measured: FAIL")
            if count:
                print(f"publish-to-scored latency: mean {scored_lat[0].value / count * 1000:.0f} ms over {count:.0f} items")
            print("\n".join(verdict))
        finally:
            sentiment.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
