"""Priority lanes on the wire: gRPC metadata `x-nlpsuite-priority: interactive | bulk` (absent: interactive).

A person waiting (chat, a trader's screen) sends nothing; back-fills and the news monitor send `bulk`, which the
batcher runs on the capacity interactive work leaves (shared/batcher.py).
"""
from __future__ import annotations

from typing import get_args

from nlpsuite.shared.batcher import Lane
from nlpsuite.shared.errors import InvalidArgument

PRIORITY_KEY = "x-nlpsuite-priority"
DEFAULT_LANE: Lane = "interactive"


def priority_metadata(lane: Lane) -> tuple[str, str]:
    """The metadata pair a client sends to put its calls in `lane`."""
    if lane not in get_args(Lane):
        raise ValueError(f"priority {lane!r} is not one of {', '.join(get_args(Lane))}")
    return PRIORITY_KEY, lane


def lane_of(context) -> Lane:
    """The lane a call asked for in its metadata; INVALID_ARGUMENT for a value that names none."""
    for key, value in context.invocation_metadata() or ():
        if key == PRIORITY_KEY:
            if value not in get_args(Lane):
                shown = value if isinstance(value, str) else repr(value)
                raise InvalidArgument(f"metadata {PRIORITY_KEY}: {shown[:64]!r} is not one of "
                                      f"{', '.join(get_args(Lane))}")
            return value
    return DEFAULT_LANE
