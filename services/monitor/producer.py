"""`nlpsuite produce`: replay a JSONL file into the news topic (each line as is), optionally rate limited."""
from __future__ import annotations

import json
import time
from pathlib import Path

from kafka import KafkaProducer

from .config import KafkaSettings


def replay(path: Path, topic: str, kafka: KafkaSettings, rate: float | None = None, key_field: str = "id",
           on_sent=None) -> int:
    """Send every non-empty line of `path` to `topic` keyed by its `key_field` (when it parses). Returns the
    count. `rate` is messages per second (None: as fast as possible). Waits for every acknowledgement."""
    producer = KafkaProducer(**kafka.producer())
    sent = 0
    t0 = time.perf_counter()
    futures = []
    try:
        with open(path, "rb") as handle:
            for line in handle:
                line = line.rstrip(b"\r\n")
                if not line.strip():
                    continue
                key = None
                try:
                    value = json.loads(line)
                    if isinstance(value, dict) and value.get(key_field) is not None:
                        key = str(value[key_field]).encode()
                except ValueError:
                    pass
                if rate:
                    wait = t0 + sent / rate - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                futures.append(producer.send(topic, key=key, value=line))
                if on_sent is not None:
                    on_sent(line, time.time())
                sent += 1
        producer.flush()
        failed = [f for f in futures if f.failed()]
        if failed:
            raise RuntimeError(f"{len(failed)} of {sent} sends failed: {failed[0].exception!r}")
    finally:
        producer.close(timeout=10)
    return sent
