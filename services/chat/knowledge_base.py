"""The user-edited knowledge base: an answer per intent (with a hand-off flag), FAQ entries, and documents.

Documents are Markdown or YAML files named (as paths or globs, relative to the knowledge base file) under
`documents:`. Each becomes passages that chat retrieval searches beside the FAQ: a Markdown file one passage per
`##` section (its id `<file stem>#<section slug>`), a YAML file a list of `{id, title, text}` entries.

Any passage may list `questions`: other ways customers ask for it (inline on an FAQ entry or a YAML passage, or by
passage id under the knowledge base's `questions:`, e.g. for a Markdown section). Retrieval matches a message
against them too, and the default models learn from them.
"""
from __future__ import annotations

import glob
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints, ValidationError, model_validator,
)

from nlpsuite.shared.resources import examples_path

MAX_PASSAGE_CHARS = 2000  # a passage is an answer: past this it is a document to split, not a reply
MAX_DOCUMENT_BYTES = 1 << 20
MAX_QUESTION_CHARS = 300
Question = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_QUESTION_CHARS)]


class KnowledgeBaseError(ValueError):
    """A knowledge base that cannot be served; the message names the file and the entry."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not an ignored section


class IntentAnswer(_Strict):
    answer: str = Field(min_length=1)
    handoff: bool = False
    handoff_reason: Literal["customer_asked", "out_of_scope"] = "customer_asked"  # reported when handoff is true


class FaqEntry(_Strict):
    id: str = Field(min_length=1)
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    questions: list[Question] = Field(default_factory=list)  # other ways customers ask it
    handoff: bool = False  # answering it also hands the conversation to a person (e.g. complaints)


class DocumentPassage(_Strict):
    id: str = Field(min_length=1)
    title: str = ""
    text: str = Field(min_length=1, max_length=MAX_PASSAGE_CHARS)
    questions: list[Question] = Field(default_factory=list)
    handoff: bool = False


@dataclass(frozen=True)
class Passage:
    """One answerable unit of the knowledge collection: an FAQ entry or a document passage."""

    id: str
    source: str  # "faq" or "document"
    title: str  # the FAQ question, or the section title
    answer: str  # what the customer is told: the FAQ answer, or the passage text
    handoff: bool = False
    questions: tuple[str, ...] = ()  # other ways customers ask for it

    @property
    def search_text(self) -> str:
        return f"{self.title}. {self.answer}" if self.title else self.answer


class KnowledgeBase(_Strict):
    intents: dict[str, IntentAnswer] = Field(default_factory=dict)
    faq: list[FaqEntry] = Field(default_factory=list)
    documents: list[str] = Field(default_factory=list, description="Markdown/YAML files or globs, absolute or "
                                 "relative to the knowledge base file")
    questions: dict[str, list[Question]] = Field(default_factory=dict, description="other ways customers ask, "
                                                 "by passage id (FAQ id or <document stem>#<section slug>)")
    _passages: list[Passage] = PrivateAttr(default_factory=list)

    @property
    def passages(self) -> list[Passage]:
        """FAQ entries and document passages: what retrieval searches (filled by load())."""
        return self._passages

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
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise KnowledgeBaseError(f"knowledge base {path}: {exc}") from None
        if raw is None:
            raise KnowledgeBaseError(f"knowledge base {path} is empty: give intents, faq or documents")
        if not isinstance(raw, dict):
            raise KnowledgeBaseError(f"knowledge base {path}: expected a mapping with intents, faq and documents, "
                                     f"got {type(raw).__name__}")
        try:
            kb = cls.model_validate(raw)
        except ValidationError as exc:
            raise KnowledgeBaseError(f"knowledge base {path}: {_describe(exc, raw)}") from None
        passages = [Passage(id=e.id, source="faq", title=e.question, answer=e.answer, handoff=e.handoff,
                            questions=tuple(e.questions)) for e in kb.faq]
        for file in _document_files(path, kb.documents):
            passages.extend(read_document(file))
        seen: dict[str, str] = {}
        for p in passages:
            if p.id in seen:
                raise KnowledgeBaseError(f"knowledge base {path}: passage id {p.id!r} is used twice ({seen[p.id]} "
                                         f"and {p.source}); ids must be unique across FAQ and documents")
            seen[p.id] = p.source
        if not kb.intents and not passages:
            raise KnowledgeBaseError(f"knowledge base {path} is empty: give intents, faq or documents")
        unknown = sorted(set(kb.questions) - set(seen))
        if unknown:
            raise KnowledgeBaseError(f"knowledge base {path}: questions given for {', '.join(map(repr, unknown))}, "
                                     "which no FAQ entry or document passage has as its id")
        kb._passages = [replace(p, questions=tuple(dict.fromkeys(p.questions + tuple(kb.questions.get(p.id, ())))))
                        for p in passages]
        return kb


def _describe(exc: ValidationError, raw: dict) -> str:
    """Pydantic's errors, with each FAQ entry named by its id as well as its position."""
    parts = []
    for error in exc.errors():
        loc = list(error["loc"])
        where = ".".join(str(x) for x in loc)
        if len(loc) >= 2 and loc[0] == "faq" and isinstance(loc[1], int):
            entries = raw.get("faq") or []
            entry = entries[loc[1]] if loc[1] < len(entries) and isinstance(entries[loc[1]], dict) else {}
            field = ".".join(str(x) for x in loc[2:]) or "entry"
            where = f"faq entry {loc[1] + 1} (id {entry.get('id', '?')!r}): {field}"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def _document_files(kb_path: Path, patterns: list[str]) -> list[Path]:
    files: list[Path] = []
    for pattern in patterns:
        full = Path(pattern) if Path(pattern).is_absolute() else kb_path.parent / pattern
        matched = [Path(p) for p in sorted(glob.glob(str(full)))] if any(c in pattern for c in "*?[") else [full]
        if not matched or not all(p.is_file() for p in matched):
            raise KnowledgeBaseError(f"knowledge base {kb_path}: documents entry {pattern!r} names no readable file "
                                     f"(relative to {kb_path.parent})")
        files.extend(matched)
    return files


def read_document(path: Path) -> list[Passage]:
    """The passages of one Markdown (`##` sections) or YAML (`[{id, title, text}]`) document."""
    try:
        if path.stat().st_size > MAX_DOCUMENT_BYTES:
            raise KnowledgeBaseError(f"document {path} is larger than {MAX_DOCUMENT_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KnowledgeBaseError(f"document {path}: {exc}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        return _yaml_passages(path, text)
    if path.suffix.lower() in (".md", ".markdown"):
        return _markdown_passages(path, text)
    raise KnowledgeBaseError(f"document {path}: only Markdown (.md) and YAML (.yaml) documents are read")


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"


def _markdown_passages(path: Path, text: str) -> list[Passage]:
    passages: list[Passage] = []
    title, lines = None, []

    def close() -> None:
        body = " ".join(" ".join(lines).split())
        if title is None or not body:
            return
        if len(body) > MAX_PASSAGE_CHARS:
            raise KnowledgeBaseError(f"document {path}: section {title!r} has {len(body)} characters, over the "
                                     f"{MAX_PASSAGE_CHARS} a passage may have; split it into smaller sections")
        passages.append(Passage(id=f"{path.stem}#{slug(title)}", source="document", title=title, answer=body))

    for line in text.splitlines():
        heading = re.match(r"^(#{2,6})\s+(.*\S)\s*$", line)
        if heading:
            close()
            title, lines = heading.group(2), []
        elif not line.startswith("# "):
            lines.append(line)
    close()
    if not passages:
        raise KnowledgeBaseError(f"document {path} has no `## ` sections with text: nothing to answer from")
    return passages


def _yaml_passages(path: Path, text: str) -> list[Passage]:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KnowledgeBaseError(f"document {path}: {exc}") from None
    if not isinstance(raw, list) or not raw:
        raise KnowledgeBaseError(f"document {path}: expected a list of {{id, title, text}} passages")
    passages = []
    for i, item in enumerate(raw):
        try:
            entry = DocumentPassage.model_validate(item)
        except ValidationError as exc:
            name = item.get("id", "?") if isinstance(item, dict) else "?"
            errors = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise KnowledgeBaseError(f"document {path}: passage {i + 1} (id {name!r}): {errors}") from None
        passages.append(Passage(id=entry.id, source="document", title=entry.title, answer=entry.text,
                                handoff=entry.handoff, questions=tuple(entry.questions)))
    return passages
