"""Request checks every service shares; each raises InvalidArgument naming the field."""
from __future__ import annotations

from collections.abc import Sequence

from nlpsuite.shared.config import ServiceSettings
from nlpsuite.shared.errors import InvalidArgument


def check_text(text: str, settings: ServiceSettings, field: str) -> None:
    if not text.strip():
        raise InvalidArgument(f"{field} is empty")
    if len(text) > settings.max_text_chars:
        raise InvalidArgument(f"{field} has {len(text)} characters, over the limit of {settings.max_text_chars}")


def check_items(items: Sequence, settings: ServiceSettings, field: str) -> None:
    if len(items) == 0:
        raise InvalidArgument(f"{field} is empty: send at least one")
    if len(items) > settings.max_items:
        raise InvalidArgument(f"{field} has {len(items)} items, over the limit of {settings.max_items} (max_items)")


def check_texts(texts: Sequence[str], settings: ServiceSettings, field: str = "texts") -> None:
    check_items(texts, settings, field)
    for i, text in enumerate(texts):
        check_text(text, settings, f"{field}[{i}]")
