"""Hybrid retrieval over the knowledge collection: BM25 on words plus embedding similarity.

Each passage is embedded as several units (an FAQ entry: its question; a document passage: its title, each
sentence, and the whole; either: the other ways customers ask for it), and its similarity to a message is the
best of its units': a customer's question usually matches one sentence of a section, or one way of asking, not
the section's average. BM25 adds the exact words embeddings blur ("cheque", "CHAPS", "Saturday"), normalised by
the most the query's words could score.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from nlpsuite.services.chat.knowledge_base import Passage

K1, B = 1.2, 0.75
_STOPWORDS = frozenset("""a an and are as at be been but by can could do does did for from had has have how i i'm if in
into is it its just me my of on or our please should so than that the their them then there these they this to
us was we were what when where which who why will with would you your yours im ive id dont cant""".split())


def words(text: str) -> list[str]:
    """Lower-case word stems for BM25: stop words dropped, a plural or -ing ending removed."""
    out = []
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        if word in _STOPWORDS:
            continue
        if len(word) > 5 and word.endswith("ing"):
            word = word[:-3]
        elif len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        out.append(word)
    return out


def units(passage: Passage) -> list[str]:
    """The texts embedded for one passage."""
    if passage.source == "faq":
        return list(dict.fromkeys([passage.title, *passage.questions]))
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", passage.answer) if s.strip()]
    return list(dict.fromkeys(([passage.title] if passage.title else []) + sentences + [passage.search_text]
                              + list(passage.questions)))


def lexical_text(passage: Passage) -> str:
    """What BM25 indexes for a passage: its title, its text and the other ways customers ask for it."""
    return " ".join([passage.search_text, *passage.questions])


class BM25:
    def __init__(self, documents: list[list[str]]) -> None:
        self.docs = [Counter(d) for d in documents]
        self.lengths = np.array([len(d) for d in documents], np.float64)
        self.avg = float(self.lengths.mean()) if len(documents) else 0.0
        frequency = Counter(w for d in self.docs for w in d)
        n = len(documents)
        self.idf = {w: math.log(1 + (n - f + 0.5) / (f + 0.5)) for w, f in frequency.items()}

    def normalized(self, query: list[str]) -> np.ndarray:
        """Per document, its BM25 score over the best any document could get for these words (0..1)."""
        scores = np.zeros(len(self.docs))
        terms = [w for w in set(query) if w in self.idf]
        if not terms or not self.docs:
            return scores
        norm = K1 * (1 - B + B * self.lengths / max(self.avg, 1e-9))
        for w in terms:
            tf = np.array([d.get(w, 0) for d in self.docs], np.float64)
            scores += self.idf[w] * tf * (K1 + 1) / (tf + norm)
        ceiling = sum(self.idf[w] for w in terms) * (K1 + 1)
        return scores / ceiling


@dataclass(frozen=True)
class Hit:
    passage: Passage
    score: float  # (1 - lexical_weight) x cosine + lexical_weight x BM25 (normalised)
    cosine: float  # the best of the passage's units
    lexical: float


class RetrievalIndex:
    """Passages with their unit embeddings (rows of `vectors`, unit-norm) and a BM25 index."""

    def __init__(self, passages: list[Passage], vectors: np.ndarray, owners: list[int]) -> None:
        self.passages = passages
        self.vectors = vectors
        self.owners = np.asarray(owners, np.int64)  # unit row -> passage index
        self.bm25 = BM25([words(lexical_text(p)) for p in passages])

    @staticmethod
    def unit_texts(passages: list[Passage]) -> tuple[list[str], list[int]]:
        texts, owners = [], []
        for i, passage in enumerate(passages):
            for text in units(passage):
                texts.append(text)
                owners.append(i)
        return texts, owners

    def search(self, message: str, vector: np.ndarray, lexical_weight: float, top: int = 3) -> list[Hit]:
        if not self.passages:
            return []
        sims = self.vectors @ vector
        best = np.full(len(self.passages), -1.0)
        np.maximum.at(best, self.owners, sims)
        lexical = self.bm25.normalized(words(message))
        scores = (1 - lexical_weight) * best + lexical_weight * lexical
        order = np.argsort(-scores)[:top]
        return [Hit(self.passages[i], float(scores[i]), float(best[i]), float(lexical[i])) for i in order]
