"""Fast tokenization with the Rust `tokenizers` library (importing transformers would pull in torch)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer


class TextTooLongError(ValueError):
    def __init__(self, index: int, tokens: int, limit: int) -> None:
        super().__init__(f"texts[{index}] has {tokens} tokens, over the limit of {limit}")
        self.index, self.tokens, self.limit = index, tokens, limit


@dataclass(frozen=True)
class Encoded:
    input_ids: np.ndarray  # int64 [batch, seq], padded to the longest text in the batch
    attention_mask: np.ndarray  # int64 [batch, seq]
    lengths: np.ndarray  # int [batch], real tokens per text
    truncated: np.ndarray  # bool [batch]

    def feeds(self) -> dict[str, np.ndarray]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


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

    def pad(self, ids: list[list[int]], reject_overlong: bool = False) -> Encoded:
        """Truncate to max_length (keeping the final [SEP]) or reject, then pad to the longest."""
        lengths = np.array([len(i) for i in ids], dtype=np.int64)
        truncated = lengths > self.max_length
        if reject_overlong and truncated.any():
            index = int(np.argmax(truncated))
            raise TextTooLongError(index, int(lengths[index]), self.max_length)
        kept = [i if len(i) <= self.max_length else i[: self.max_length - 1] + i[-1:] for i in ids]
        lengths = np.minimum(lengths, self.max_length)
        width = int(lengths.max()) if len(kept) else 0
        input_ids = np.full((len(kept), width), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(kept), width), dtype=np.int64)
        for row, seq in enumerate(kept):
            input_ids[row, : len(seq)] = seq
            attention_mask[row, : len(seq)] = 1
        return Encoded(input_ids, attention_mask, lengths, truncated)

    def encode(self, texts: list[str], reject_overlong: bool = False) -> Encoded:
        return self.pad(self.token_ids(texts), reject_overlong)
