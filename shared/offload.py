"""CPU work of a request (tokenizing, matching) on the event loop when it is small, on a thread when it is not.

The event loop also answers health checks and admits every other call: a request carrying megabytes of text must
not hold it for seconds (Kubernetes probes time out after 1 s by default). A hop to a thread costs tens of
microseconds, which small requests, the common case, do not pay.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

OFFLOAD_CHARS = 16_384  # characters of text in one request above which its CPU work leaves the event loop
# Two threads: big requests queue here rather than all competing with inference for the cores at once.
_executor = ThreadPoolExecutor(2, thread_name_prefix="request-cpu")


async def run_cpu(chars: int, fn: Callable[..., T], *args) -> T:
    """`fn(*args)` inline when the request holds fewer than OFFLOAD_CHARS characters, else on a worker thread."""
    if chars < OFFLOAD_CHARS:
        return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(_executor, fn, *args)


def text_chars(texts) -> int:
    return sum(len(t) for t in texts)
