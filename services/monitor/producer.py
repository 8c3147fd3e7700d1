"""`nlpsuite produce`: replay a JSONL file into the news topic (each line as is), optionally rate limited.

A broker fault does not end the replay: sends that fail or are not acknowledged in time are sent again
with a fresh producer (kafka-python's idempotent producer can stay broken after a broker fault) after a
backoff, until `give_up_s` passes without progress. A line whose first send reached the broker before the
fault may therefore appear twice in the topic, with the same key and content (the monitor scores repeats
of the same content again and dead-letters an id reused with different content).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from .config import KafkaSettings
from .delivery import Backoff, PublishFailed, Publisher

log = logging.getLogger(__name__)

WINDOW = 500  # sends confirmed together


class ReplayFailed(RuntimeError):
    pass


def replay(path: Path, topic: str, kafka: KafkaSettings, rate: float | None = None, key_field: str = "id",
           on_sent=None, give_up_s: float = 120.0) -> int:
    """Send every non-empty line of `path` to `topic` keyed by its `key_field` (when it parses). Returns the
    count. `rate` is messages per second (None: as fast as possible). Waits for every acknowledgement."""
    publisher = Publisher(kafka.producer())
    confirm_s = kafka.confirm_timeout_s
    sent = 0
    t0 = time.perf_counter()
    window: list[tuple[bytes | None, bytes, object]] = []
    try:
        for key, value in _lines(path, key_field):
            if rate:
                wait = t0 + sent / rate - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            window.append((key, value, publisher.send(topic, key=key, value=value)))
            if on_sent is not None:
                on_sent(value, time.time())
            sent += 1
            if len(window) >= WINDOW:
                _settle(publisher, topic, window, confirm_s, give_up_s)
                window = []
        _settle(publisher, topic, window, confirm_s, give_up_s)
    finally:
        publisher.close(timeout_s=10)
    return sent


def _lines(path: Path, key_field: str):
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
            yield key, line


def _settle(publisher: Publisher, topic: str, window: list, confirm_s: float, give_up_s: float) -> None:
    """Wait until every send of the window is acknowledged, resending the rest with a fresh producer."""
    backoff = Backoff(0.2, 5.0)
    deadline = time.monotonic() + give_up_s
    while window:
        try:
            publisher.confirm([f for _, _, f in window], timeout_s=confirm_s)
            return
        except PublishFailed as exc:
            left = [(k, v, f) for k, v, f in window if not f.succeeded()]
            if not left:
                return
            if len(left) < len(window):
                deadline = time.monotonic() + give_up_s  # progress
            elif time.monotonic() > deadline:
                raise ReplayFailed(f"{len(left)} sends still failing after {give_up_s:g}s: {exc}") from None
            log.warning("%d sends failed or timed out (%s); resending them with a new producer", len(left), exc)
            publisher.replace()
            time.sleep(backoff.next())
            window = [(k, v, publisher.send(topic, key=k, value=v)) for k, v, _ in left]
