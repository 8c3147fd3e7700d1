"""News validation and DLQ records."""
from __future__ import annotations

import json

import pytest

from nlpsuite.services.monitor.schema import DeadLetter, Rejected, parse_news

GOOD = {"id": "n-1", "headline": "Marrowind Chemicals plant explosion", "source": "Ledgerline Wire",
        "published_at": "2026-03-02T11:30:12Z", "tickers": ["MWCH"]}


def parse(value: bytes):
    return parse_news(value, max_bytes=2048, max_headline_chars=200)


def test_valid_item_parses_with_utc_time_and_optional_fields():
    item = parse(json.dumps(GOOD).encode())
    assert item.published_at.tzinfo is not None and item.event_time == 1772451012.0
    assert item.body is None
    item = parse(json.dumps(GOOD | {"tickers": None, "published_at": "2026-03-02T12:30:12+01:00"}).encode())
    assert item.tickers == [] and item.event_time == 1772451012.0


@pytest.mark.parametrize("value, reason", [
    (b"not json {", "not_json"),
    (b"\xff\xfe", "not_json"),
    (b"[1, 2]", "not_object"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "headline"}).encode(), "missing_headline"),
    (json.dumps(GOOD | {"headline": "   "}).encode(), "missing_headline"),
    (json.dumps(GOOD | {"published_at": "yesterday"}).encode(), "bad_timestamp"),
    (json.dumps(GOOD | {"published_at": "2026-03-02T11:30:12"}).encode(), "bad_timestamp"),
    (json.dumps(GOOD | {"body": "x" * 3000}).encode(), "oversize"),
    (json.dumps(GOOD | {"headline": "x" * 300}).encode(), "oversize"),
    (json.dumps(GOOD | {"source": ""}).encode(), "invalid"),
    (None, "empty"),
])
def test_malformed_input_is_rejected_with_a_reason(value, reason):
    with pytest.raises(Rejected) as info:
        parse(value)
    assert info.value.reason == reason


def test_dead_letter_keeps_the_original_bytes_and_position():
    class Rec:
        topic, partition, offset, timestamp, key, value = "news", 3, 17, 1234, b"k", b"\x00raw\xff"

    letter = DeadLetter.model_validate_json(DeadLetter.of(Rec, "not_json", "x").model_dump_json())
    assert (letter.topic, letter.partition, letter.offset, letter.reason) == ("news", 3, 17, "not_json")
    assert letter.original() == b"\x00raw\xff"
