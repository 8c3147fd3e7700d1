"""News validation and DLQ records."""
from __future__ import annotations

import json

import pytest

from nlpsuite.services.monitor.schema import DeadLetter, Rejected, parse_news

GOOD = {"id": "n-1", "headline": "Marrowind Chemicals plant explosion", "source": "Ledgerline Wire",
        "published_at": "2026-03-02T11:30:12Z", "tickers": ["MWCH"]}


RECEIVED_MS = 1772451012000 + 3600_000  # the record's Kafka timestamp: an hour after GOOD's published_at


def parse(value: bytes):
    return parse_news(value, max_bytes=2048, max_headline_chars=200, received_ms=RECEIVED_MS)


def test_valid_item_parses_with_utc_time_and_optional_fields():
    item = parse(json.dumps(GOOD).encode())
    assert item.published_at.tzinfo is not None and item.event_time == 1772451012.0
    assert item.body is None
    item = parse(json.dumps(GOOD | {"tickers": None, "published_at": "2026-03-02T12:30:12+01:00"}).encode())
    assert item.tickers == [] and item.event_time == 1772451012.0


@pytest.mark.parametrize("value, reason", [
    (b"not json {", "not_json"),
    (b"[1, 2]", "not_object"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "headline"}).encode(), "missing_headline"),
    (json.dumps(GOOD | {"headline": "   "}).encode(), "missing_headline"),
    (json.dumps(GOOD | {"published_at": "yesterday"}).encode(), "bad_timestamp"),
    (json.dumps(GOOD | {"published_at": "2026-03-02T11:30:12"}).encode(), "bad_timestamp"),
    (json.dumps(GOOD | {"body": "x" * 3000}).encode(), "oversize"),
    (json.dumps(GOOD | {"headline": "x" * 300}).encode(), "oversize"),
    (json.dumps(GOOD | {"source": ""}).encode(), "invalid"),
    (None, "empty"),
    (b"\xff\xfe", "not_utf8"),
    (json.dumps(GOOD).encode().replace(b"plant", b"pl\xe9nt"), "not_utf8"),
    (b"", "not_json"),
    (b"null", "not_object"),
    (b'"a string"', "not_object"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "id"}).encode(), "missing_id"),
    (json.dumps(GOOD | {"id": " "}).encode(), "missing_id"),
    (json.dumps(GOOD | {"headline": None}).encode(), "missing_headline"),
    (json.dumps(GOOD | {"id": 17}).encode(), "invalid"),
    (json.dumps(GOOD | {"headline": ["a", "list"]}).encode(), "invalid"),
    (json.dumps(GOOD | {"tickers": "MWCH"}).encode(), "invalid"),
    (json.dumps(GOOD | {"tickers": [1, 2]}).encode(), "invalid"),
    (json.dumps(GOOD | {"tickers": [f"T{i}" for i in range(33)]}).encode(), "invalid"),  # fan-out bomb
    (json.dumps(GOOD | {"tickers": ["X" * 33]}).encode(), "invalid"),
    (json.dumps(GOOD).encode().replace(b"plant", b"pl\\ud800nt"), "invalid"),  # a lone surrogate escape
    (json.dumps(GOOD | {"published_at": "0001-01-01T00:00:00+01:00"}).encode(), "bad_timestamp"),  # overflow
    (json.dumps(GOOD | {"published_at": "9999-12-31T23:59:59-05:00"}).encode(), "bad_timestamp"),
    (json.dumps(GOOD | {"published_at": "1970-01-01T00:00:00Z"}).encode(), "bad_timestamp"),
    (json.dumps(GOOD | {"published_at": "2126-03-02T11:30:12Z"}).encode(), "bad_timestamp"),
    (json.dumps(GOOD | {"published_at": 1e300}).encode(), "bad_timestamp"),
])
def test_malformed_input_is_rejected_with_a_reason(value, reason):
    with pytest.raises(Rejected) as info:
        parse(value)
    assert info.value.reason == reason


def test_json_nested_beyond_the_recursion_limit_is_rejected_not_raised():
    deep = b"[" * 30_000 + b"]" * 30_000  # 60 KB: under the default 64 KiB message limit
    with pytest.raises(Rejected) as info:
        parse_news(deep, max_bytes=64 * 1024, max_headline_chars=200)
    assert info.value.reason == "not_json"


def test_published_at_may_lead_the_record_timestamp_by_at_most_max_future_s():
    ahead = json.dumps(GOOD | {"published_at": "2026-03-02T13:30:00Z"}).encode()  # 1 h after the record
    assert parse_news(ahead, max_bytes=2048, max_headline_chars=200, received_ms=RECEIVED_MS,
                      max_future_s=7200).id == "n-1"
    with pytest.raises(Rejected) as info:
        parse_news(ahead, max_bytes=2048, max_headline_chars=200, received_ms=RECEIVED_MS, max_future_s=600)
    assert info.value.reason == "bad_timestamp"


def test_dead_letter_keeps_the_original_bytes_and_position():
    class Rec:
        topic, partition, offset, timestamp, key, value = "news", 3, 17, 1234, b"k", b"\x00raw\xff"

    letter = DeadLetter.model_validate_json(DeadLetter.of(Rec, "not_json", "x").model_dump_json())
    assert (letter.topic, letter.partition, letter.offset, letter.reason) == ("news", 3, 17, "not_json")
    assert letter.original() == b"\x00raw\xff"
