"""The user-edited knowledge base: an answer per intent (with a hand-off flag) and FAQ entries."""
from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from nlpsuite.shared.resources import examples_path


class IntentAnswer(BaseModel):
    answer: str = Field(min_length=1)
    handoff: bool = False


class FaqEntry(BaseModel):
    id: str = Field(min_length=1)
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)


class KnowledgeBase(BaseModel):
    intents: dict[str, IntentAnswer] = Field(default_factory=dict)
    faq: list[FaqEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_faq_ids(self) -> KnowledgeBase:
        seen: set[str] = set()
        for entry in self.faq:
            if entry.id in seen:
                raise ValueError(f"duplicate FAQ id {entry.id!r}")
            seen.add(entry.id)
        return self

    @classmethod
    def load(cls, path: Path | None = None) -> KnowledgeBase:
        path = Path(path) if path is not None else examples_path("knowledge_base.yaml")
        try:
            return cls.model_validate(yaml.safe_load(path.read_text()) or {})
        except (OSError, yaml.YAMLError, ValidationError) as exc:
            raise ValueError(f"knowledge base {path}: {exc}") from None
