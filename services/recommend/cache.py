"""The recommender's item embeddings, in a bounded LRU keyed by item id and a hash of its text (a changed text is a
new entry)."""
from __future__ import annotations

import hashlib

import numpy as np

from nlpsuite.shared.lru import LruCache

Key = tuple[str, str]


def item_key(item_id: str, text: str) -> Key:
    return item_id, hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


class EmbeddingCache(LruCache[tuple[str, ...], np.ndarray]):
    pass
