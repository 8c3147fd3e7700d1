"""Optional webhook sink: POSTs each published alert as JSON, with retries, off the processing path.

Best effort on top of Kafka: alerts are posted after the broker acknowledged them; a post that still fails
after the retries is counted and logged, and the `alerts` topic remains the record. Receivers should drop
repeats by the alert `id` (after a restart the same alert may be posted again).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import urllib.request

from .metrics import MonitorMetrics
from .schema import Alert

log = logging.getLogger(__name__)


class WebhookSink:
    def __init__(self, url: str, metrics: MonitorMetrics, retries: int = 5, timeout_s: float = 5.0,
                 initial_backoff_s: float = 0.5, capacity: int = 10_000):
        self.url, self.metrics, self.retries, self.timeout_s = url, metrics, retries, timeout_s
        self.initial_backoff_s = initial_backoff_s
        self.queue: queue.Queue = queue.Queue(maxsize=capacity)
        self.thread = threading.Thread(target=self._run, name="webhook", daemon=True)
        self.thread.start()

    def __call__(self, alert: Alert) -> None:
        try:
            self.queue.put_nowait(alert)
        except queue.Full:
            self.metrics.webhook_failures.inc()
            log.error("webhook queue full; alert %s not posted (it is on the alerts topic)", alert.id)

    def _post(self, body: bytes) -> None:
        req = urllib.request.Request(self.url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            if resp.status >= 300:
                raise OSError(f"HTTP {resp.status}")

    def _run(self) -> None:
        while True:
            alert = self.queue.get()
            if alert is None:
                return
            body = alert.to_bytes()
            delay = self.initial_backoff_s
            for attempt in range(self.retries + 1):
                try:
                    self._post(body)
                    break
                except Exception as exc:  # noqa: BLE001
                    if attempt == self.retries:
                        self.metrics.webhook_failures.inc()
                        log.error("webhook post of alert %s failed after %d tries: %s", alert.id, attempt + 1, exc)
                    else:
                        time.sleep(delay)
                        delay = min(delay * 2, 30.0)

    def close(self, timeout_s: float = 10.0) -> None:
        self.queue.put(None)
        self.thread.join(timeout_s)
