"""The watchlist's one-pass scanner finds exactly what searching every company's and topic's own pattern finds."""
from __future__ import annotations

import re
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nlpsuite.services.sentiment.watchlist import FOLDS_TO_ASCII, Mention, Watchlist, _phrase_pattern, _ticker_pattern
from nlpsuite.shared.watchlist_file import Company, WatchlistFile

SPEC = WatchlistFile(
    companies=[
        Company(name="Altavire Aerospace", ticker="ALTV", aliases=["Altavire", "Altavire Aero"]),
        Company(name="Altavire Aero Systems", ticker="AAS", aliases=["Aero Systems"]),  # overlaps the first
        Company(name="Norvale Mining", ticker="NVM", aliases=["Norvale"]),
        Company(name="Nor", ticker="NO"),  # a prefix of another company's name and ticker
        Company(name="Glenmoor Utilities"),
    ],
    topics={
        "earnings": ["profit", "profit warning", "net income"],
        "guidance": ["profit warning", "outlook"],
        "rates": ["rate", "rate cut"],
        "cuts": ["cut", "job cuts"],
        "net": ["net"],  # a prefix of another topic's keyword
    },
)
PIECES = ["Altavire", "Aero", "Systems", "Aerospace", "Norvale", "Mining", "Nor", "NO", "NVM", "$NVM", "ALTV",
          "AAS", "$AAS", "Glenmoor", "Utilities", "profit", "warning", "net", "income", "outlook", "rate", "cut",
          "cuts", "job", "the", "x", "-", ",", ".", "'s", "$", "altavire", "PROFIT", "Rate",
          # whole phrases, so that overlaps at one position are common
          "Altavire Aero Systems", "ALTAVIRE aero", "net income", "profit warning", "rate cut", "job cuts",
          # non-ASCII: plain, and characters that IGNORECASE folds to ASCII
          "Café", "€", "’s", "ſ", "\u212a", "NORVALE\u0130", "Altavıre", "profıt"]


def reference_entities(spec: WatchlistFile, text: str) -> list[Mention]:
    """The plain way: every company's own name and ticker patterns searched one by one."""
    found = []
    for company in spec.companies:
        names = re.compile(_phrase_pattern([company.name, *company.aliases]), re.IGNORECASE)
        ticker = re.compile(_ticker_pattern(company.ticker)) if company.ticker else None
        hits = [m for m in (names.search(text), ticker.search(text) if ticker else None) if m]
        if hits:
            first = min(hits, key=lambda m: m.start())
            found.append((first.start(), Mention(company.name, company.ticker, first.group(0))))
    return [mention for _, mention in sorted(found, key=lambda pair: pair[0])]


def reference_topics(spec: WatchlistFile, text: str) -> list[str]:
    return [topic for topic, words in spec.topics.items()
            if re.search(_phrase_pattern(words), text, re.IGNORECASE)]


texts = st.lists(st.sampled_from(PIECES), max_size=14).flatmap(
    lambda words: st.lists(st.sampled_from([" ", "  ", "", "\n"]), min_size=len(words), max_size=len(words))
    .map(lambda seps: "".join(w + s for w, s in zip(words, seps))))


@settings(max_examples=400, deadline=None)
@given(texts)
def test_scanner_agrees_with_searching_each_pattern(text):
    watchlist = Watchlist(SPEC)
    assert watchlist.entities(text) == reference_entities(SPEC, text)
    assert watchlist.topics(text) == reference_topics(SPEC, text)


def test_overlapping_names_and_prefix_topics():
    watchlist = Watchlist(SPEC)
    text = "Altavire Aero Systems issued a profit warning and a rate cut; $NVM fell"
    assert [(m.name, m.matched) for m in watchlist.entities(text)] == [
        ("Altavire Aerospace", "Altavire Aero"), ("Altavire Aero Systems", "Altavire Aero Systems"),
        ("Norvale Mining", "$NVM")]
    assert watchlist.topics(text) == ["earnings", "guidance", "rates", "cuts"]
    assert watchlist.entities("Nordic NOK, nothing here") == []


def test_the_shipped_watchlist_loads_and_matches():
    watchlist = Watchlist.load()
    assert watchlist.entities("Norvale shares fell") == [Mention("Norvale Mining", "NVM", "Norvale")]


def test_folds_to_ascii_lists_every_non_ascii_character_that_matches_ascii_ignoring_case():
    word = re.compile("[A-Za-z0-9_]", re.IGNORECASE)
    found = {c for c in map(chr, range(128, sys.maxunicode + 1)) if word.fullmatch(c)}
    assert found == FOLDS_TO_ASCII


def test_the_monitor_reads_the_watchlist_file_as_the_service_does(tmp_path):
    """Tickers map to company names; a file the sentiment service would refuse is refused, naming it."""
    from nlpsuite.services.monitor.scored import ticker_names
    from nlpsuite.shared.config import ConfigError

    good = tmp_path / "good.yaml"
    good.write_text("companies:\n  - {name: Norvale Mining, ticker: nvm}\n  - {name: Glenmoor Utilities}\n")
    assert ticker_names(good) == {"NVM": "Norvale Mining"} and ticker_names(None) == {}
    bad = tmp_path / "bad.yaml"
    bad.write_text("companies:\n  - {ticker: NVM}\ntopics:\n  mining: []\n")
    with pytest.raises(ConfigError, match=f"(?s)watchlist {bad}:.*companies.0.name.*Field required.*needs non-empty keywords"):
        ticker_names(bad)
    with pytest.raises(ValueError, match=f"watchlist {bad}"):
        Watchlist.load(bad)
