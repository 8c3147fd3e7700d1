"""Event-time sliding windows and surge detection. Pure logic: no Kafka, no clocks, no I/O.

Time is event time (the news item's `published_at`, in epoch seconds). Windows have length L and slide S
(L a multiple of S) and are aligned to multiples of S; an item at time t belongs to the L/S windows that
contain it. State is kept per slide-sized bucket, so a window is the sum of L/S buckets.

Watermark: per source partition, the largest event time seen minus the allowed lateness. A window is
closed once the watermark reaches its end; an item whose windows are all closed is late and is dropped
(counted). Items are de-duplicated by news id, so at-least-once redelivery does not inflate counts.

Firing is eager: when an item arrives, every still-open window that contains it is evaluated; if some pass
the rule, the one with the most negatives (then the latest start) fires, unless the key is in cooldown
(event time since the last alert) or that alert id was already emitted. The alert id is a hash of
(key kind, key, rule, window start), so replaying the same input yields the same id.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .config import SurgeRule, WindowSettings
from .schema import Alert, Headline


@dataclass(frozen=True)
class Event:
    id: str
    time: float  # event time, epoch seconds
    negative: bool
    negative_score: float
    headline: str


@dataclass
class Bucket:
    total: int = 0
    negatives: list[Event] = field(default_factory=list)


@dataclass
class KeyState:
    name: str
    buckets: dict[int, Bucket] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)  # news id -> bucket
    last_alert_time: float | None = None


@dataclass
class PartitionState:
    max_time: float = -math.inf
    keys: dict[str, KeyState] = field(default_factory=dict)
    added: int = 0


def alert_id(kind: str, key: str, rule: str, window_start: int) -> str:
    digest = hashlib.sha256(f"{kind}\x1f{key}\x1f{rule}\x1f{window_start}".encode()).hexdigest()
    return f"alert-{digest[:32]}"


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


class SurgeDetector:
    """Windows and surge rule for one key kind ("entity" or "topic") across the partitions this instance owns."""

    def __init__(self, kind: str, windows: WindowSettings, rule: SurgeRule):
        self.kind = kind
        self.w = windows
        self.rule = rule
        self.k = windows.length_s // windows.slide_s  # buckets per window
        self.partitions: dict[int, PartitionState] = {}
        self.emitted: set[str] = set()
        self.late = 0
        self.duplicates = 0

    # -- state ownership -------------------------------------------------------------------------------
    def drop_partition(self, partition: int) -> None:
        self.partitions.pop(partition, None)

    def watermark(self, partition: int) -> float:
        state = self.partitions.get(partition)
        return -math.inf if state is None else state.max_time - self.w.allowed_lateness_s

    def mark_emitted(self, partition: int, alert: Alert) -> None:
        """Record an alert already on the `alerts` log (restores the cooldown and suppresses re-emission)."""
        self.emitted.add(alert.id)
        ks = self._key(partition, alert.key, alert.name)
        t = alert.triggered_event_time.timestamp()
        if ks.last_alert_time is None or t > ks.last_alert_time:
            ks.last_alert_time = t

    def _key(self, partition: int, key: str, name: str) -> KeyState:
        pstate = self.partitions.setdefault(partition, PartitionState())
        ks = pstate.keys.get(key)
        if ks is None:
            ks = pstate.keys[key] = KeyState(name=name)
        return ks

    # -- the hot path ----------------------------------------------------------------------------------
    def add(self, partition: int, key: str, name: str, event: Event, *, evaluate: bool = True) -> Alert | None:
        """Apply one event; return the alert it fires, if any (None when `evaluate` is False)."""
        slide = self.w.slide_s
        b = math.floor(event.time / slide)
        wm = self.watermark(partition)
        # Newest window containing the event starts at bucket b; it is closed if its end <= watermark.
        if (b + self.k) * slide <= wm:
            self.late += 1
            return None
        ks = self._key(partition, key, name)
        if event.id in ks.seen:
            self.duplicates += 1
            return None
        bucket = ks.buckets.setdefault(b, Bucket())
        bucket.total += 1
        if event.negative:
            bucket.negatives.append(event)
        ks.seen[event.id] = b
        pstate = self.partitions[partition]
        if event.time > pstate.max_time:
            pstate.max_time = event.time
        pstate.added += 1
        alert = self._evaluate(key, ks, b, event, self.watermark(partition)) if evaluate else None
        self._evict(ks, self.watermark(partition))
        if pstate.added % 1000 == 0:
            for other in pstate.keys.values():
                self._evict(other, self.watermark(partition))
        return alert

    def _sum(self, ks: KeyState, first: int, last: int) -> tuple[int, int]:
        """(total, negatives) over buckets first..last-1."""
        total = neg = 0
        if last - first <= len(ks.buckets):
            for i in range(first, last):
                bucket = ks.buckets.get(i)
                if bucket is not None:
                    total += bucket.total
                    neg += len(bucket.negatives)
        else:
            for i, bucket in ks.buckets.items():
                if first <= i < last:
                    total += bucket.total
                    neg += len(bucket.negatives)
        return total, neg

    def _evaluate(self, key: str, ks: KeyState, b: int, event: Event, wm: float) -> Alert | None:
        if not event.negative:
            return None  # a non-negative item only lowers shares; it cannot make a window pass
        rule, slide, k = self.rule, self.w.slide_s, self.k
        if ks.last_alert_time is not None and event.time < ks.last_alert_time + rule.cooldown_s:
            return None
        best = None
        for start_b in range(b - k + 1, b + 1):
            if (start_b + k) * slide <= wm:
                continue  # closed
            total, neg = self._sum(ks, start_b, start_b + k)
            if neg < rule.min_negatives:
                continue
            share = neg / total if total else 0.0
            if share < rule.min_share:
                continue
            base_n = self.w.baseline_windows
            baseline = self._sum(ks, start_b - base_n * k, start_b)[1] / base_n if base_n else 0.0
            ratio = neg / max(baseline, rule.baseline_floor)
            if ratio < rule.min_ratio:
                continue
            cand = (neg, start_b, total, share, baseline, ratio)
            if best is None or (cand[0], cand[1]) > (best[0], best[1]):
                best = cand
        if best is None:
            return None
        neg, start_b, total, share, baseline, ratio = best
        start = start_b * slide
        aid = alert_id(self.kind, key, rule.name, start)
        ks.last_alert_time = event.time
        if aid in self.emitted:
            return None
        self.emitted.add(aid)
        negatives = [e for i in range(start_b, start_b + k) if (bk := ks.buckets.get(i)) for e in bk.negatives]
        negatives.sort(key=lambda e: (-e.negative_score, e.time, e.id))
        return Alert(
            id=aid, rule=rule.name, key_kind=self.kind, key=key, name=ks.name,
            window_start=_utc(start), window_end=_utc(start + self.w.length_s),
            negatives=neg, total=total, share=round(share, 4), baseline=round(baseline, 4),
            ratio=round(ratio, 3), severity=self._severity(neg, share, ratio),
            triggered_by=event.id, triggered_event_time=_utc(event.time),
            headlines=[Headline(id=e.id, headline=e.headline, negative=round(e.negative_score, 4),
                                published_at=_utc(e.time).isoformat()) for e in negatives[: self.w.top_headlines]],
        )

    def _severity(self, neg: int, share: float, ratio: float) -> str:
        rule = self.rule
        if neg >= 2 * rule.min_negatives and share >= 0.75 and ratio >= 2 * rule.min_ratio:
            return "high"
        if neg >= 1.5 * rule.min_negatives or ratio >= 2 * rule.min_ratio:
            return "medium"
        return "low"

    def _evict(self, ks: KeyState, wm: float) -> None:
        """Drop buckets no open window or baseline can still need."""
        if wm == -math.inf or not ks.buckets:
            return
        slide, k = self.w.slide_s, self.k
        oldest_open_start = math.floor(wm / slide) - k + 1
        horizon = oldest_open_start - self.w.baseline_windows * k
        stale = [i for i in ks.buckets if i < horizon]
        for i in stale:
            del ks.buckets[i]
        if stale:
            ks.seen = {nid: i for nid, i in ks.seen.items() if i >= horizon}
