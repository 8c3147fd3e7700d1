"""Window and surge logic, driven directly with crafted events (no Kafka)."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from nlpsuite.services.monitor.config import SurgeRule, WindowSettings
from nlpsuite.services.monitor.windows import Event, SurgeDetector, alert_id

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc).timestamp()
MIN = 60.0


def ev(i: int, minute: float, negative: bool = True, score: float = 0.9) -> Event:
    return Event(id=f"n-{i}", time=T0 + minute * MIN, negative=negative, negative_score=score if negative else 0.05,
                 headline=f"headline {i}")


def detector(**rule) -> SurgeDetector:
    return SurgeDetector("entity", WindowSettings(length_s=1800, slide_s=300, allowed_lateness_s=600,
                                                  baseline_windows=4),
                         SurgeRule(**({"min_negatives": 3, "min_share": 0.5, "min_ratio": 2.0,
                                       "cooldown_s": 3600} | rule)))


def feed(det, events, key="MWCH", partition=0):
    return [a for e in events if (a := det.add(partition, key, "Marrowind Chemicals", e)) is not None]


def test_fires_once_when_all_thresholds_pass_and_cooldown_holds_the_rest():
    det = detector()
    alerts = feed(det, [ev(1, 0, False), ev(2, 40), ev(3, 42), ev(4, 44), ev(5, 46), ev(6, 48)])
    assert len(alerts) == 1
    a = alerts[0]
    assert a.triggered_by == "n-4" and a.negatives == 3 and a.total == 3 and a.share == 1.0
    # The window that passes with the most negatives, latest start on ties: [09:40, 10:10).
    assert a.window_start == datetime(2026, 3, 2, 9, 40, tzinfo=timezone.utc)
    assert a.id == alert_id("entity", "MWCH", "negative-surge", int(a.window_start.timestamp()))
    assert [h.id for h in a.headlines] == ["n-2", "n-3", "n-4"]


def test_below_count_share_or_ratio_does_not_fire():
    assert feed(detector(), [ev(1, 10), ev(2, 12)]) == []  # count
    assert feed(detector(), [ev(i, 10 + i * 0.1, False) for i in range(10)] + [ev(20, 12), ev(21, 13), ev(22, 14)]) == []  # share
    # ratio: a steady 3 negatives per window length. It fires while there is no history yet; once the
    # baseline (4 window lengths) has filled, 3 / 3 is under the ratio of 2 and nothing fires.
    steady = [ev(100 + i, m) for i, m in enumerate(range(0, 300, 10))]
    fired = feed(detector(cooldown_s=0), steady)
    assert fired and all(a.window_start.timestamp() < T0 + 120 * MIN for a in fired)


def test_duplicates_are_ignored_and_replay_gives_the_same_alert():
    events = [ev(2, 40), ev(3, 42), ev(2, 40), ev(3, 42), ev(4, 44)]
    first = feed(detector(), events)
    second = feed(detector(), events)
    assert len(first) == 1 and first == second
    assert first[0].negatives == 3


def test_late_events_after_the_watermark_are_dropped():
    det = detector()
    feed(det, [ev(1, 100, False)])  # watermark = 100 - 10 = 90 min
    assert feed(det, [ev(2, 20), ev(3, 21), ev(4, 22)]) == []  # windows containing minute 20 ended by 50
    assert det.late == 3


def test_cooldown_is_restored_from_an_emitted_alert_and_the_same_id_is_not_re_emitted():
    events = [ev(2, 40), ev(3, 42), ev(4, 44)]
    original = feed(detector(), events)[0]
    det = detector()
    det.mark_emitted(0, original)
    assert feed(det, events + [ev(5, 50), ev(6, 52)]) == []
    # after the cooldown a new surge fires again with a new id
    later = feed(det, [ev(10, 200), ev(11, 201), ev(12, 202)])
    assert len(later) == 1 and later[0].id != original.id


def test_keys_and_partitions_are_independent_and_revocation_drops_state():
    det = detector()
    assert feed(det, [ev(1, 40), ev(2, 41)], key="A") == []
    assert feed(det, [ev(3, 42)], key="B") == []
    det.drop_partition(0)
    assert feed(det, [ev(4, 43)], key="A") == []  # state for A was dropped with its partition


def test_old_buckets_are_evicted():
    det = detector()
    feed(det, [ev(i, i * 5, False) for i in range(200)])
    ks = det.partitions[0].keys["MWCH"]
    # window (6 buckets) + baseline (4 windows = 24 buckets) + lateness margin
    assert len(ks.buckets) <= 6 + 24 + 3
    assert len(ks.seen) <= 6 + 24 + 3


def test_window_settings_are_validated():
    with pytest.raises(ValueError):
        WindowSettings(length_s=1000, slide_s=300)
