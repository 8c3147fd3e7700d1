"""A scored news item as `news.scored` records: one per matched entity and one per topic (keyed by it, so one
entity's news stays ordered in one partition), or a single `none` record keyed by the item's id."""
from __future__ import annotations

from pathlib import Path

from nlpsuite.shared.watchlist_file import read_watchlist

from .schema import Entity, ModelRef, NewsItem, ScoredItem, Score


def ticker_names(path: Path | None) -> dict[str, str]:
    """Upper-case ticker -> company name from the watchlist file (validated as the sentiment service reads it)."""
    if path is None:
        return {}
    return {c.ticker.upper(): c.name for c in read_watchlist(Path(path)).companies if c.ticker}


def scored_records(item: NewsItem, record, result, model: ModelRef, elapsed: float, now_ms: int,
                   tickers: dict[str, str], watch_topics: bool) -> list[ScoredItem]:
    """`result` is the service's SentimentResult for `item`; `record` the `news` record it came in."""
    entities: dict[str, Entity] = {}
    for m in result.entities:
        e = Entity(name=m.name, ticker=m.ticker.upper(), matched=m.matched)
        entities.setdefault(e.key, e)
    for t in item.tickers:
        t = t.strip().upper()
        if t and t not in entities:
            entities[t] = Entity(name=tickers.get(t, t), ticker=t, matched="tickers")
    topics = sorted(set(result.topics))
    base = dict(
        item=item, label=result.label, confidence=result.confidence,
        scores=[Score(label=s.label, score=s.score) for s in result.scores], topics=topics,
        entities=list(entities.values()), model=model, truncated=result.truncated,
        source_topic=record.topic, source_partition=record.partition, source_offset=record.offset,
        published_ms=record.timestamp, sentiment_ms=round(elapsed * 1000, 3), scored_at_ms=now_ms,
    )
    out = [ScoredItem(key_kind="entity", key=key, **base) for key in entities]
    if watch_topics:
        out += [ScoredItem(key_kind="topic", key=t, **base) for t in topics]
    if not out:
        out.append(ScoredItem(key_kind="none", key=item.id, **base))
    return out
