"""Fast tokenization with the Rust `tokenizers` library (importing transformers would pull in torch).

`TextEncoder.tokenize` owns the truncation rule: keep the first `max_length - 1` ids and the final special
token. A long text is tokenized only as far as that rule needs: a 20,000-character text would otherwise cost
~7,000 tokens of work to keep 128.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

# A text longer than max_length x this many characters is first tokenized from its head only. English runs at
# ~4-5 characters per MiniLM token, so the head of a long text nearly always proves it is over the limit.
HEAD_CHARS_PER_TOKEN = 8
INPUT_NAMES = ("input_ids", "attention_mask")  # every model's inputs: int64 [batch, sequence]


class TextTooLongError(ValueError):
    def __init__(self, index: int, tokens: int, limit: int, exact: bool = True) -> None:
        count = f"{tokens}" if exact else f"at least {tokens}"
        super().__init__(f"texts[{index}] has {count} tokens, over the limit of {limit}")
        self.index, self.tokens, self.limit = index, tokens, limit


@dataclass(frozen=True)
class Tokenized:
    ids: list[list[int]]  # per text, at most max_length ids, the final special token kept
    truncated: list[bool]
    counted: list[int]  # ids of the whole text, or (where `exact` is False) a lower bound: only a head was read
    exact: list[bool]

    def check_fits(self, limit: int) -> None:
        """Raise TextTooLongError for the first text that was truncated."""
        if any(self.truncated):
            i = self.truncated.index(True)
            raise TextTooLongError(i, self.counted[i], limit, self.exact[i])


@dataclass(frozen=True)
class Encoded:
    input_ids: np.ndarray  # int64 [batch, seq], padded to the longest text in the batch
    attention_mask: np.ndarray  # int64 [batch, seq]
    lengths: np.ndarray  # int [batch], real tokens per text
    truncated: np.ndarray  # bool [batch]

    def feeds(self) -> dict[str, np.ndarray]:
        return dict(zip(INPUT_NAMES, (self.input_ids, self.attention_mask)))


def head(text: str, chars: int) -> str | None:
    """The text up to the last space within its first `chars` characters, or None when the text is no longer
    than that or has no space there. Words are tokenized independently of the words after them, so the ids of
    such a head are the ids of the whole text's first words (then the closing special token)."""
    if len(text) <= chars:
        return None
    cut = text.rfind(" ", 0, chars + 1)
    return text[:cut] if cut > 0 else None


class TextEncoder:
    def __init__(self, tokenizer_file: Path | str, max_length: int = 128) -> None:
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.max_length = max_length
        self.pad_id = self.tokenizer.token_to_id("[PAD]") or 0

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text, untruncated, special tokens included."""
        if len(texts) == 1:  # encode_batch hands even one text to a thread pool
            return [self.tokenizer.encode(texts[0]).ids]
        return [e.ids for e in self.tokenizer.encode_batch(texts)]

    def tokenize(self, texts: list[str]) -> Tokenized:
        """Ids cut to max_length (keeping the final special token), exactly as if each whole text had been
        tokenized, but reading only as much of a long text as it takes to see that it is over the limit."""
        limit = self.max_length
        chars = [limit * HEAD_CHARS_PER_TOKEN] * len(texts)
        heads = [head(t, c) for t, c in zip(texts, chars)]
        ids = self.token_ids([t if h is None else h for t, h in zip(texts, heads)])
        for i, text in enumerate(texts):
            # A head that is not over the limit proves nothing (e.g. long unknown words): read a longer head.
            while heads[i] is not None and len(ids[i]) <= limit:
                chars[i] *= 4
                heads[i] = head(text, chars[i])
                ids[i] = self.token_ids([text if heads[i] is None else heads[i]])[0]
        counted = [len(x) for x in ids]
        truncated = [n > limit for n in counted]
        kept = [x if n <= limit else x[: limit - 1] + x[-1:] for x, n in zip(ids, counted)]
        return Tokenized(kept, truncated, counted, [h is None for h in heads])

    def pad(self, ids: list[list[int]]) -> Encoded:
        """Pad ids (each within max_length: see tokenize) to the longest."""
        lengths = np.array([len(i) for i in ids], dtype=np.int64)
        if len(ids) and int(lengths.max()) > self.max_length:
            raise ValueError(f"ids of {int(lengths.max())} tokens, over max_length {self.max_length}: tokenize first")
        width = int(lengths.max()) if len(ids) else 0
        input_ids = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = seq
            attention_mask[row, : len(seq)] = 1
        return Encoded(input_ids, attention_mask, lengths, np.zeros(len(ids), dtype=bool))

    def encode(self, texts: list[str], reject_overlong: bool = False) -> Encoded:
        tokens = self.tokenize(texts)
        if reject_overlong:
            tokens.check_fits(self.max_length)
        encoded = self.pad(tokens.ids)
        return Encoded(encoded.input_ids, encoded.attention_mask, encoded.lengths, np.array(tokens.truncated))
