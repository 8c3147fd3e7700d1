"""`nlpsuite stream`: both stages in one process (two consumer groups), metrics, graceful shutdown."""
from __future__ import annotations

import logging
import signal
import threading

from nlpsuite.shared import tracing
from nlpsuite.shared.logs import failure

from .aggregator import Aggregator
from .config import MonitorSettings
from .delivery import UnreadableRecords
from .metrics import MonitorMetrics
from .scorer import Scorer
from .webhook import WebhookSink

log = logging.getLogger(__name__)


class Monitor:
    """Run with `start()`/`stop()` (tests, embedding) or `run_forever()` (the CLI: SIGTERM/SIGINT stop it).

    Shutdown: each stage finishes the batch in hand, commits, and leaves its group (consumer close).
    """

    def __init__(self, settings: MonitorSettings, stages: tuple[str, ...] = ("score", "aggregate")):
        self.s = settings
        self.metrics = MonitorMetrics()
        self.stop_event = threading.Event()
        self.sink = WebhookSink(settings.webhook_url, self.metrics, settings.webhook_retries,
                                settings.webhook_timeout_s, capacity=settings.webhook_queue) \
            if settings.webhook_url else None
        self.scorer = Scorer(settings, self.metrics, self.stop_event) if "score" in stages else None
        self.aggregator = Aggregator(settings, self.metrics, self.stop_event, self.sink) \
            if "aggregate" in stages else None
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []
        self._http = None

    def start(self) -> "Monitor":
        if self.s.tracing:
            tracing.enable("monitor")
        if self.s.metrics_port:
            self._http = self.metrics.serve(self.s.metrics_port)
        for name, stage in (("score", self.scorer), ("aggregate", self.aggregator)):
            if stage is None:
                continue
            stage.open()
            t = threading.Thread(target=self._run, args=(stage,), name=f"monitor-{name}", daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def _run(self, stage) -> None:
        try:
            stage.run()
        except UnreadableRecords as exc:  # our own message: names the codec and partitions, quotes no news
            log.error("stage %s stopped: %s", type(stage).__name__, exc)
            self.errors.append(exc)
            self.stop_event.set()
        except BaseException as exc:  # noqa: BLE001 - reported by stop()/run_forever
            log.error("stage %s failed", type(stage).__name__, extra=failure(exc))
            log.debug("stage failure detail", exc_info=True)  # the message may quote a news item
            self.errors.append(exc)
            self.stop_event.set()
        finally:
            try:
                stage.close()
            except Exception as exc:  # noqa: BLE001
                log.error("closing %s failed", type(stage).__name__, extra=failure(exc))

    def stop(self, timeout_s: float = 90.0) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout_s)
        if self.sink is not None:
            self.sink.close()
        if self._http is not None:
            self._http[0].shutdown()

    def run_forever(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())
        self.start()
        while not self.stop_event.is_set():
            self.stop_event.wait(0.5)
        self.stop()
        return 1 if self.errors else 0
