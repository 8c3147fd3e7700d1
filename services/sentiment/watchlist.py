"""The watchlist: companies (name, ticker, aliases) and topics (keywords), matched on word boundaries."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from nlpsuite.shared.resources import examples_path


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


@dataclass(frozen=True)
class Mention:
    name: str
    ticker: str
    matched: str


def _phrase_pattern(phrases: list[str]) -> str:
    # Longest first so "Altavire Aero" wins over "Altavire"; flexible whitespace; no word char on either side.
    alternatives = sorted({p.strip() for p in phrases if p.strip()}, key=len, reverse=True)
    body = "|".join(r"\s+".join(re.escape(part) for part in p.split()) for p in alternatives)
    return rf"(?<!\w)(?:{body})(?!\w)"


class Watchlist:
    def __init__(self, spec: WatchlistFile) -> None:
        self.spec = spec
        self._companies: list[tuple[Company, re.Pattern | None, re.Pattern | None]] = []
        for company in spec.companies:
            names = re.compile(_phrase_pattern([company.name, *company.aliases]), re.IGNORECASE)
            # Tickers are matched as written (upper case), optionally with a leading $ ("$NVM").
            ticker = (re.compile(rf"(?<![\w$])\$?{re.escape(company.ticker)}(?!\w)") if company.ticker else None)
            self._companies.append((company, names, ticker))
        self._topics = [(topic, re.compile(_phrase_pattern(words), re.IGNORECASE))
                        for topic, words in spec.topics.items()]

    @classmethod
    def load(cls, path: Path | None = None) -> Watchlist:
        path = Path(path) if path is not None else examples_path("watchlist.yaml")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
            return cls(WatchlistFile.model_validate(raw))
        except (OSError, yaml.YAMLError, ValidationError) as exc:
            raise ValueError(f"watchlist {path}: {exc}") from None

    def entities(self, text: str) -> list[Mention]:
        """Each watched company mentioned, once, with the first alias or ticker found (in text order)."""
        found: list[tuple[int, Mention]] = []
        for company, names, ticker in self._companies:
            hits = [m for m in (names.search(text) if names else None, ticker.search(text) if ticker else None) if m]
            if hits:
                first = min(hits, key=lambda m: m.start())
                found.append((first.start(), Mention(company.name, company.ticker, first.group(0))))
        return [mention for _, mention in sorted(found, key=lambda pair: pair[0])]

    def topics(self, text: str) -> list[str]:
        return [topic for topic, pattern in self._topics if pattern.search(text)]
