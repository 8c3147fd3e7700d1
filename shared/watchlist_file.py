"""The watchlist file (YAML): companies (name, ticker, aliases) and topics (keywords). Read by the sentiment service
(which matches them in text) and by the news monitor (which names the companies behind message tickers)."""
from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from nlpsuite.shared.config import ConfigError


class Company(BaseModel):
    name: str = Field(min_length=1)
    ticker: str = ""
    aliases: list[str] = Field(default_factory=list)


class WatchlistFile(BaseModel):
    companies: list[Company] = Field(default_factory=list)
    topics: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("topics")
    @classmethod
    def _keywords(cls, topics: dict[str, list[str]]) -> dict[str, list[str]]:
        for topic, words in topics.items():
            if not words or any(not w.strip() for w in words):
                raise ValueError(f"topic {topic!r} needs non-empty keywords")
        return topics


def read_watchlist(path: Path) -> WatchlistFile:
    """The validated file; ConfigError naming the file and the problem."""
    try:
        return WatchlistFile.model_validate(yaml.safe_load(path.read_text()) or {})
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"watchlist {path}: {exc}") from None
