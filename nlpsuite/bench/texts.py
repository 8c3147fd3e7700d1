"""Benchmark texts: real Financial PhraseBank sentences, alone or joined, cut into token-length bands.

A band is a range of token counts (special tokens included) under the model's own tokenizer. Short texts
are single sentences; medium and long ones join consecutive sentences of a seeded shuffle until the text
falls in its band, so every text is real prose from the data set, never padding or repeated words.
"""
from __future__ import annotations

import csv
import random
from pathlib import Path

from pydantic import BaseModel

from nlpsuite.shared.tokenization import TextEncoder

BANDS: dict[str, tuple[int, int]] = {"short": (12, 20), "probe": (28, 36), "medium": (52, 76), "long": (112, 128)}
MIXES: dict[str, dict[str, float]] = {
    "short": {"short": 1.0},
    "sentence": {"probe": 1.0},  # ~32 tokens: one typical headline or sentence
    "medium": {"medium": 1.0},
    "long": {"long": 1.0},
    "mixed": {"short": 1 / 3, "medium": 1 / 3, "long": 1 / 3},
}
PHRASEBANK = ("financial_phrasebank", ("train.csv", "dev.csv"), "sentence")


class TextsError(ValueError):
    """The data the benchmark needs is missing or too small."""


class TextSet(BaseModel):
    mix: str
    texts: list[str]  # the load texts, in a seeded order (clients cycle through them)
    tokens: list[int]  # token count of each text
    probe: list[str]  # ~32-token texts for the concurrency-1 latency check
    probe_tokens: list[int]

    @property
    def mean_tokens(self) -> float:
        return sum(self.tokens) / len(self.tokens)

    def summary(self) -> dict[str, object]:
        def stats(values: list[int]) -> dict[str, float]:
            return {"n": len(values), "min": min(values), "mean": round(sum(values) / len(values), 1),
                    "max": max(values)}

        return {"mix": self.mix, "bands": {k: BANDS[k] for k in MIXES[self.mix]}, "texts": stats(self.tokens),
                "probe": stats(self.probe_tokens), "source": "financial_phrasebank sentences (train + dev)"}


def load_sentences(data_dir: Path) -> list[str]:
    folder, files, column = PHRASEBANK
    sentences: list[str] = []
    for name in files:
        path = data_dir / folder / name
        if not path.is_file():
            raise TextsError(f"{path} not found: --data-dir must hold {folder}/{'/'.join(files)} "
                             f"(the shared data sets, e.g. ../shared/data)")
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        if rows and column not in rows[0]:
            raise TextsError(f"{path} has no {column!r} column")
        sentences.extend(row[column].strip() for row in rows if row[column].strip())
    return list(dict.fromkeys(sentences))  # a few sentences occur twice in the release


def band_texts(sentences: list[str], lengths: list[int], band: tuple[int, int], n: int, seed: int) -> list[str]:
    """Up to n texts in the band: each a run of consecutive sentences of a seeded shuffle."""
    lo, hi = band
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    texts: list[str] = []
    parts: list[int] = []
    current = 2  # [CLS] and [SEP]
    for i in order:
        if len(texts) >= n:
            break
        body = lengths[i] - 2
        if body + 2 > hi:  # a sentence longer than the band on its own
            parts, current = [], 2
            continue
        if current + body > hi:
            parts, current = [], 2
        parts.append(i)
        current += body
        if current >= lo:
            texts.append(" ".join(sentences[j] for j in parts))
            parts, current = [], 2
    return texts


def _pick(encoder: TextEncoder, sentences: list[str], lengths: list[int], band_name: str, n: int,
          seed: int) -> tuple[list[str], list[int]]:
    band = BANDS[band_name]
    candidates = band_texts(sentences, lengths, band, n, seed)
    measured = [len(ids) for ids in encoder.token_ids(candidates)] if candidates else []
    kept = [(t, k) for t, k in zip(candidates, measured) if band[0] <= k <= band[1]]
    if len(kept) < max(8, n // 4):
        raise TextsError(f"only {len(kept)} texts of {band[0]}-{band[1]} tokens could be made (wanted {n})")
    return [t for t, _ in kept], [k for _, k in kept]


def make_textset(data_dir: Path, tokenizer: Path, mix: str, n: int, n_probe: int, seed: int = 0) -> TextSet:
    """The load texts for a mix (proportions of bands) and the ~32-token probe texts."""
    if mix not in MIXES:
        raise TextsError(f"unknown mix {mix!r}; choose from {', '.join(MIXES)}")
    encoder = TextEncoder(tokenizer, max_length=10_000)  # count real lengths: no truncation here
    sentences = load_sentences(data_dir)
    lengths = [len(ids) for ids in encoder.token_ids(sentences)]
    texts: list[str] = []
    tokens: list[int] = []
    for k, (band_name, share) in enumerate(MIXES[mix].items()):
        t, l = _pick(encoder, sentences, lengths, band_name, round(n * share), seed + k)
        texts += t
        tokens += l
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    probe, probe_tokens = _pick(encoder, sentences, lengths, "probe", n_probe, seed + 100)
    return TextSet(mix=mix, texts=[texts[i] for i in order], tokens=[tokens[i] for i in order],
                   probe=probe, probe_tokens=probe_tokens)
