"""Short, bounded conversation context: a few turns each, a TTL, a cap on conversations, and a memory budget.

Only the last turn's message is ever used (a follow-up is read together with it, cut to the token limit), so
only it is kept, and only its head (`keep_chars`, cut at a space: the tokens of the kept head are those of the
whole message's first words). Older turns keep their intent and confidence. The store counts what it holds and
drops least recently used conversations to stay within `max_bytes`.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from nlpsuite.shared.tokenization import head

# What a conversation costs besides its message text, measured with tracemalloc for a 5-turn conversation with
# a 128-character id (the dataclass, its deque and Turns, the OrderedDict entry and the id string).
CONVERSATION_OVERHEAD_BYTES = 2048


@dataclass(frozen=True)
class Turn:
    message: str  # "" once a later turn follows
    intent: str
    confidence: float


@dataclass
class Conversation:
    turns: deque[Turn]
    last_seen: float
    count: int = 0  # turns ever, not just the kept ones
    handed_off: bool = False
    extra: dict = field(default_factory=dict)
    size: int = 0  # bytes counted against the store's budget
    stored: bool = True  # False once dropped from the store (a request may still hold it)

    @property
    def last(self) -> Turn | None:
        return self.turns[-1] if self.turns else None


def text_bytes(text: str) -> int:
    """Bytes a str holds (CPython stores 1, 2 or 4 bytes a character, by its widest character)."""
    return sys.getsizeof(text)


class ConversationStore:
    def __init__(self, max_turns: int = 5, ttl_s: float = 1800.0, max_conversations: int = 10_000,
                 clock: Callable[[], float] = time.monotonic, keep_chars: int = 1024,
                 max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_turns = max_turns
        self.ttl_s = ttl_s
        self.max_conversations = max_conversations
        self.keep_chars = keep_chars
        self.max_bytes = max_bytes
        self.bytes = 0  # what the kept conversations hold, by the same count as `max_bytes`
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
            self._resize(conv, CONVERSATION_OVERHEAD_BYTES + text_bytes(conversation_id))
            self._items[conversation_id] = conv
            while len(self._items) > self.max_conversations:
                self._drop_oldest()
        self._items.move_to_end(conversation_id)
        conv.last_seen = now
        return conv

    def add(self, conv: Conversation, turn: Turn) -> int:
        previous = conv.last
        if previous is not None and previous.message:
            conv.turns[-1] = dataclasses.replace(previous, message="")
            self._resize(conv, -text_bytes(previous.message))
        kept = head(turn.message, self.keep_chars)
        if kept is None and len(turn.message) > self.keep_chars:  # no space to cut at (CJK, a URL)
            kept = turn.message[: self.keep_chars]
        turn = dataclasses.replace(turn, message=turn.message if kept is None else kept)
        conv.turns.append(turn)
        conv.count += 1
        conv.last_seen = self._clock()
        self._resize(conv, text_bytes(turn.message))
        while self.bytes > self.max_bytes and len(self._items) > 1:
            self._drop_oldest()
        return conv.count

    def _resize(self, conv: Conversation, delta: int) -> None:
        conv.size += delta
        if conv.stored:
            self.bytes += delta

    def _drop(self, conv: Conversation) -> None:
        conv.stored = False
        self.bytes -= conv.size

    def _drop_oldest(self) -> None:
        self._drop(self._items.popitem(last=False)[1])

    def _expire(self, now: float) -> None:
        while self._items:
            oldest_id, oldest = next(iter(self._items.items()))
            if now - oldest.last_seen <= self.ttl_s:
                break
            del self._items[oldest_id]
            self._drop(oldest)
