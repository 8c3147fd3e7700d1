"""Message schemas for the monitor's topics and the validation that routes bad input to the DLQ."""
from __future__ import annotations

import base64
import hashlib
import json
import time
from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SCHEMA_VERSION = 1
MAX_TICKERS = 32
MAX_TICKER_CHARS = 32


class NewsItem(BaseModel):
    """One message on the `news` topic."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    id: str = Field(min_length=1, max_length=200)
    headline: str = Field(min_length=1)
    body: str | None = None
    source: str = Field(min_length=1, max_length=200)
    published_at: datetime
    # Bounded: each ticker fans out to one news.scored record carrying the whole item.
    tickers: list[Annotated[str, Field(max_length=MAX_TICKER_CHARS)]] = Field(default_factory=list,
                                                                           max_length=MAX_TICKERS)

    @field_validator("published_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("published_at needs a timezone (ISO-8601 with Z or an offset)")
        return value.astimezone(timezone.utc)

    @field_validator("tickers", mode="before")
    @classmethod
    def _tickers(cls, value):
        return [] if value is None else value

    @property
    def event_time(self) -> float:
        return self.published_at.timestamp()


class Rejected(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


EARLIEST_PUBLISHED_AT = datetime(1990, 1, 1, tzinfo=timezone.utc)


def parse_news(raw: bytes | None, *, max_bytes: int, max_headline_chars: int, received_ms: int | None = None,
               max_future_s: float = 86400.0, earliest: datetime = EARLIEST_PUBLISHED_AT) -> NewsItem:
    """Validate one raw `news` value; raise Rejected with a short machine-readable reason.

    `published_at` must lie between `earliest` and `max_future_s` after `received_ms` (the record's Kafka
    timestamp, so a replay of the topic decides the same way; wall clock when it has none)."""
    if raw is None:
        raise Rejected("empty", "tombstone or null value")
    if len(raw) > max_bytes:
        raise Rejected("oversize", f"{len(raw)} bytes > {max_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected("not_utf8", str(exc)[:200]) from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise Rejected("not_json", str(exc)[:200]) from None
    except RecursionError:
        raise Rejected("not_json", "nested too deeply") from None
    if not isinstance(data, dict):
        raise Rejected("not_object", type(data).__name__)
    for name in ("id", "headline"):
        value = data.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise Rejected(f"missing_{name}")
    try:
        item = NewsItem.model_validate(data)
    except ValidationError as exc:
        fields = {str(err["loc"][0]) if err["loc"] else "" for err in exc.errors()}
        reason = "bad_timestamp" if "published_at" in fields else "invalid"
        raise Rejected(reason, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                         for e in exc.errors())[:500]) from None
    except OverflowError as exc:  # a time zone offset pushed the date past year 1..9999 (raised by astimezone)
        raise Rejected("bad_timestamp", str(exc)[:200]) from None
    if len(item.headline) > max_headline_chars:
        raise Rejected("oversize", f"headline of {len(item.headline)} chars > {max_headline_chars}")
    now_s = received_ms / 1000 if received_ms and received_ms > 0 else time.time()
    if item.published_at < earliest or item.event_time > now_s + max_future_s:
        raise Rejected("bad_timestamp", f"published_at {item.published_at.isoformat()} is before "
                                        f"{earliest.date()} or more than {max_future_s:g}s after the record")
    return item


DLQ_KEY_BYTES = 4096  # a key longer than this is kept cut (its length and hash in full)


class DeadLetter(BaseModel):
    """A `news.dlq` record: the original bytes (base64), why, and where they came from.

    A dead letter must itself fit in its topic (Kafka's default message limit is ~1 MB, and base64 grows the
    bytes by a third), so a value over `max_value_bytes` is kept cut to that many bytes, with its full length
    and SHA-256: the whole original stays in the source topic at `topic`/`partition`/`offset`."""

    schema_version: int = SCHEMA_VERSION
    reason: str
    detail: str = ""
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None
    key_b64: str | None = None
    value_b64: str | None = None
    key_bytes: int | None = None  # length of the original key
    value_bytes: int | None = None  # length of the original value
    value_sha256: str | None = None  # of the whole original value
    truncated: bool = False  # key_b64 or value_b64 holds only the first bytes of the original

    @classmethod
    def of(cls, record, reason: str, detail: str = "", max_value_bytes: int = 256 * 1024) -> "DeadLetter":
        enc = lambda b, n: None if b is None else base64.b64encode(b[:n]).decode("ascii")  # noqa: E731
        key, value = record.key, record.value
        return cls(reason=reason, detail=detail, topic=record.topic, partition=record.partition,
                   offset=record.offset, timestamp_ms=record.timestamp, key_b64=enc(key, DLQ_KEY_BYTES),
                   value_b64=enc(value, max_value_bytes), key_bytes=None if key is None else len(key),
                   value_bytes=None if value is None else len(value),
                   value_sha256=None if value is None else hashlib.sha256(value).hexdigest(),
                   truncated=(key is not None and len(key) > DLQ_KEY_BYTES)
                   or (value is not None and len(value) > max_value_bytes))

    def original(self) -> bytes | None:
        """The original value; only its first bytes when `truncated`."""
        return None if self.value_b64 is None else base64.b64decode(self.value_b64)


class Score(BaseModel):
    label: str
    score: float


class Entity(BaseModel):
    name: str
    ticker: str = ""
    matched: str = ""

    @property
    def key(self) -> str:
        return self.ticker or self.name


class ModelRef(BaseModel):
    """The sentiment model version that scored an item (the service's ModelInfo). Records written before this was
    typed may lack the variant and provider."""

    name: str
    version: str
    variant: str = ""
    provider: str = ""


class ScoredItem(BaseModel):
    """A `news.scored` record. One news item gives one record per matched entity and per topic (keyed by
    it, so one entity's news stays ordered in one partition), or a single `none` record."""

    schema_version: int = SCHEMA_VERSION
    key_kind: Literal["entity", "topic", "none"]
    key: str
    item: NewsItem
    label: str
    confidence: float
    scores: list[Score]
    topics: list[str]
    entities: list[Entity]
    model: ModelRef
    truncated: bool = False
    source_topic: str
    source_partition: int
    source_offset: int
    published_ms: int | None = None  # Kafka timestamp of the news record (publish time)
    sentiment_ms: float = 0.0  # wall time of the sentiment call this item rode in
    scored_at_ms: int = 0


class Headline(BaseModel):
    """One of an alert's most negative headlines."""

    id: str
    headline: str
    negative: float  # the item's negative score
    published_at: str  # ISO 8601, UTC


class Alert(BaseModel):
    """An `alerts` record. `id` is derived from (key_kind, key, rule, window start), so a replay produces the
    same id; consumers drop repeats by id."""

    schema_version: int = SCHEMA_VERSION
    id: str
    rule: str
    key_kind: Literal["entity", "topic"]
    key: str
    name: str
    window_start: datetime
    window_end: datetime
    negatives: int
    total: int
    share: float
    baseline: float
    ratio: float
    severity: Literal["low", "medium", "high"]
    triggered_by: str  # id of the news item whose arrival made the window pass
    triggered_event_time: datetime
    headlines: list[Headline]  # the most negative, most negative first

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()
