"""The watchlist: companies (name, ticker, aliases) and topics (keywords), matched on word boundaries."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from nlpsuite.shared.resources import examples_path
from nlpsuite.shared.watchlist_file import Company, WatchlistFile, read_watchlist


@dataclass(frozen=True)
class Mention:
    name: str
    ticker: str
    matched: str


def _alternation(phrases: list[str]) -> str:
    # Longest first so "Altavire Aero" wins over "Altavire"; flexible whitespace.
    alternatives = sorted({p.strip() for p in phrases if p.strip()}, key=len, reverse=True)
    return "|".join(r"\s+".join(re.escape(part) for part in p.split()) for p in alternatives)


_WORD = re.compile(r"\w+")
# The only non-ASCII characters that re.IGNORECASE matches to an ASCII word character (tests check the list).
FOLDS_TO_ASCII = frozenset("\u0130\u0131\u017f\u212a")  # İ ı ſ K (Kelvin sign)


def _phrase_pattern(phrases: list[str]) -> str:
    """Any of the phrases, with no word character on either side."""
    return rf"(?<!\w)(?:{_alternation(phrases)})(?!\w)"


def _ticker_pattern(ticker: str) -> str:
    """A ticker as written (upper case), optionally with a leading $ ("$NVM")."""
    return rf"(?<![\w$])\$?{re.escape(ticker)}(?!\w)"


class _FirstWordIndex:
    """Which owners (companies, topics) can match a text at all, so only their patterns are searched.

    A phrase can only match where the text has, as a whole word, the phrase's first word: the phrase's pattern
    puts no word character before it, and whitespace, a non-word character or a word boundary after it. So an
    owner none of whose phrases' first words occur in the text is skipped without running its pattern. Phrases
    that do not start with an ASCII word, and texts with a character that case-folds to ASCII, fall back to
    searching every owner, so the result is always that of searching them all.
    """

    def __init__(self, phrases_by_owner: list[list[str]], ignore_case: bool) -> None:
        self._ignore_case = ignore_case
        self._all = list(range(len(phrases_by_owner)))
        self._by_word: dict[str, set[int]] = {}
        self._always: set[int] = set()
        for owner, phrases in enumerate(phrases_by_owner):
            for phrase in phrases:
                first = _WORD.match(phrase.strip())
                if first is None or not first.group(0).isascii():
                    self._always.add(owner)
                else:
                    word = first.group(0).lower() if ignore_case else first.group(0)
                    self._by_word.setdefault(word, set()).add(owner)

    def candidates(self, text: str) -> list[int]:
        if not text.isascii() and not FOLDS_TO_ASCII.isdisjoint(text):
            return self._all
        words = _WORD.findall(text.lower() if self._ignore_case else text)
        owners = set(self._always)
        for word in words:
            owners.update(self._by_word.get(word, ()))
        return sorted(owners)


class Watchlist:
    def __init__(self, spec: WatchlistFile) -> None:
        self.spec = spec
        self._companies: list[tuple[Company, re.Pattern, re.Pattern | None]] = []
        for company in spec.companies:
            names = re.compile(_phrase_pattern([company.name, *company.aliases]), re.IGNORECASE)
            ticker = re.compile(_ticker_pattern(company.ticker)) if company.ticker else None
            self._companies.append((company, names, ticker))
        self._topics = [(topic, re.compile(_phrase_pattern(words), re.IGNORECASE))
                        for topic, words in spec.topics.items()]
        self._name_index = _FirstWordIndex([[c.name, *c.aliases] for c in spec.companies], ignore_case=True)
        self._ticker_index = _FirstWordIndex([[c.ticker] if c.ticker else [] for c in spec.companies],
                                             ignore_case=False)
        self._topic_index = _FirstWordIndex(list(spec.topics.values()), ignore_case=True)

    @classmethod
    def load(cls, path: Path | None = None) -> Watchlist:
        return cls(read_watchlist(Path(path) if path is not None else examples_path("watchlist.yaml")))

    def entities(self, text: str) -> list[Mention]:
        """Each watched company mentioned, once, with the first alias or ticker found (in text order)."""
        first: dict[int, re.Match] = {}
        for i in self._name_index.candidates(text):
            match = self._companies[i][1].search(text)
            if match is not None:
                first[i] = match
        for i in self._ticker_index.candidates(text):
            ticker = self._companies[i][2]
            match = ticker.search(text) if ticker is not None else None
            if match is not None and (i not in first or match.start() < first[i].start()):
                first[i] = match
        ordered = sorted(first.items(), key=lambda pair: (pair[1].start(), pair[0]))
        return [Mention(self._companies[i][0].name, self._companies[i][0].ticker, match.group(0))
                for i, match in ordered]

    def topics(self, text: str) -> list[str]:
        return [self._topics[i][0] for i in self._topic_index.candidates(text) if self._topics[i][1].search(text)]
