"""A bounded LRU of item embeddings keyed by item id and a hash of its text (a changed text is a new entry)."""
from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

Key = tuple[str, str]


def item_key(item_id: str, text: str) -> Key:
    return item_id, hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


class EmbeddingCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Key, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Key) -> np.ndarray | None:
        vector = self._items.get(key)
        if vector is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return vector

    def put(self, key: Key, vector: np.ndarray) -> None:
        self._items[key] = vector
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
