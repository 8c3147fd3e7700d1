"""Short, bounded conversation context: a few turns each, a TTL, and a cap on conversations (LRU)."""
from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Turn:
    message: str
    intent: str
    confidence: float


@dataclass
class Conversation:
    turns: deque[Turn]
    last_seen: float
    count: int = 0  # turns ever, not just the kept ones
    handed_off: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def last(self) -> Turn | None:
        return self.turns[-1] if self.turns else None


class ConversationStore:
    def __init__(self, max_turns: int = 5, ttl_s: float = 1800.0, max_conversations: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_turns = max_turns
        self.ttl_s = ttl_s
        self.max_conversations = max_conversations
        self._clock = clock
        self._items: OrderedDict[str, Conversation] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, conversation_id: str) -> Conversation:
        """The live conversation (a fresh one if unknown or expired), marked most recently used."""
        now = self._clock()
        self._expire(now)
        conv = self._items.get(conversation_id)
        if conv is None:
            conv = Conversation(turns=deque(maxlen=self.max_turns), last_seen=now)
            self._items[conversation_id] = conv
            while len(self._items) > self.max_conversations:
                self._items.popitem(last=False)
        self._items.move_to_end(conversation_id)
        conv.last_seen = now
        return conv

    def add(self, conv: Conversation, turn: Turn) -> int:
        conv.turns.append(turn)
        conv.count += 1
        conv.last_seen = self._clock()
        return conv.count

    def _expire(self, now: float) -> None:
        while self._items:
            oldest_id, oldest = next(iter(self._items.items()))
            if now - oldest.last_seen <= self.ttl_s:
                break
            del self._items[oldest_id]
