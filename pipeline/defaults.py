"""The three default models (sentiment, intent, embedder), from the shipped examples or public data sets; from
public data also a 3-layer "-fast" student of each classifier."""
from __future__ import annotations

import csv
import logging
import tempfile
from dataclasses import replace
from importlib import resources
from pathlib import Path

from nlpsuite.pipeline.build import BuildConfig, build
from nlpsuite.pipeline.data import DataError
from nlpsuite.pipeline.train import Hyperparameters
from nlpsuite.shared.model_repo import ModelRepository, ModelVersion, mkdirs_readable

log = logging.getLogger(__name__)

DEFAULT_NAMES = ("sentiment", "intent", "embedder")
KNOWLEDGE_QUESTIONS = 2  # per passage, beside its title, in the intent model's "knowledge" class


def examples_dir() -> Path:
    return Path(str(resources.files("nlpsuite.examples")))


def default_configs(repository: Path, data_dir: Path | None = None) -> dict[str, BuildConfig]:
    """Example data: small, so more epochs. Public data: Financial PhraseBank and Banking77 layouts."""
    if data_dir is None:
        ex = examples_dir()
        small = Hyperparameters(epochs=8, patience=3, learning_rate=8e-5)
        return {
            "sentiment": BuildConfig(task="classify", name="sentiment", data=ex / "sentiment.csv",
                                     repository=repository, hyperparameters=small),
            # 26 intents from ~20 examples each: the head needs a higher rate and more epochs than sentiment
            # (at 8e-5 it stopped at loss 1.9 with top confidences of 0.04-0.10, so chat handed everything off).
            # The intents, plus one class for "answered by the knowledge collection" (the FAQ questions and the
            # documents' section titles): the classifier then says when a message is about the FAQ or a document
            # rather than confidently picking the nearest intent.
            # Its dev split is 78 texts over 29 labels: one text is 1.28 points of accuracy and ~1.8 of macro-F1, so
            # the usual 1-point gate would refuse any int8 that differs on a single text (chat judges the served
            # variant again on its own cases).
            "intent": BuildConfig(task="classify", name="intent", data=intent_training_data(repository),
                                  label_col="intent", repository=repository, max_drop_points=2.0,
                                  hyperparameters=Hyperparameters(epochs=15, patience=4, learning_rate=2e-4)),
            # Retrieval as well as intents: the knowledge base's FAQ questions with their answers and each document
            # passage's title and sentences are pairs that belong together (chat searches them with this model).
            # Three layers, distilled from a six-layer embedder of this recipe (teacher_configs): chat runs it
            # beside the intent model on every message, and half the layers cost half the time (Reply p50 vs the
            # one-model service before arbitration: 1.60x with six layers, 1.37-1.44x with three). On the chat
            # cases' dev half the distilled L3 routes as well as the L6 (0.935), a plainly trained L3 worse (0.898).
            "embedder": BuildConfig(task="embed", name="embedder", data=retrieval_training_data(repository),
                                    label_col="intent", repository=repository,
                                    hyperparameters=Hyperparameters(epochs=6, learning_rate=1e-4, keep_layers=3)),
        }
    phrasebank, banking = data_dir / "financial_phrasebank", data_dir / "banking77"
    for folder in (phrasebank, banking):
        if not (folder / "train.csv").is_file() or not (folder / "dev.csv").is_file():
            raise DataError(f"{folder}: expected train.csv and dev.csv")
    # The classifiers keep their PyTorch checkpoint: each is where its "-fast" student starts (fast_configs).
    return {
        "sentiment": BuildConfig(task="classify", name="sentiment", data=phrasebank / "train.csv",
                                 dev=phrasebank / "dev.csv", text_col="sentence", repository=repository,
                                 save_checkpoint=True, hyperparameters=Hyperparameters(epochs=5)),
        "intent": BuildConfig(task="classify", name="intent", data=banking / "train.csv", dev=banking / "dev.csv",
                              label_col="category", repository=repository, save_checkpoint=True,
                              hyperparameters=Hyperparameters(epochs=8, learning_rate=1e-4, batch_size=32, patience=2,
                                                              max_length=64)),
        "embedder": BuildConfig(task="embed", name="embedder", data=banking / "train.csv", dev=banking / "dev.csv",
                                label_col="category", repository=repository,
                                hyperparameters=Hyperparameters(epochs=1, learning_rate=2e-5, batch_size=64)),
    }


def teacher_configs(configs: dict[str, BuildConfig]) -> dict[str, BuildConfig]:
    """Per default model, the teacher it is distilled from (built first, kept only for the build): the example
    embedder learns from the six-layer embedder of the same data (2 epochs at 2e-5, the recipe it replaced)."""
    student = configs["embedder"]
    if student.hyperparameters.keep_layers is None:
        return {}
    teacher = student.model_copy(update={
        "name": "embedder-teacher", "variants": ("fp32",), "save_checkpoint": True,
        "hyperparameters": Hyperparameters(epochs=2, learning_rate=2e-5)})
    return {"embedder": teacher}


def fast_configs(configs: dict[str, BuildConfig], data_dir: Path | None) -> dict[str, BuildConfig]:
    """Per default classifier, a 3-layer "<name>-fast" published beside it (public data only): the served model's
    own layers 1, 3 and 5 and its head, fine-tuned again on the same data (fast_student sets the start). On both
    public data sets it scored at least the served model's dev accuracy at about twice its texts/s; taught by the
    served model's soft targets as well, it scored no better (docs/performance.md)."""
    if data_dir is None:
        return {}
    fast = {}
    for name in ("sentiment", "intent"):
        served = configs[name]
        fast[name] = served.model_copy(update={
            "name": f"{name}-fast", "save_checkpoint": False,
            "hyperparameters": replace(served.hyperparameters, keep_layers=3, layer_choice="spread")})
    return fast


def fast_student(config: BuildConfig, served: ModelVersion) -> BuildConfig:
    """`config` started from the published `served` model's checkpoint, and tabled beside it at the build's end."""
    if served.checkpoint_path is None:
        raise DataError(f"{served.path}: a fast student starts from the served model's checkpoint; build it with "
                        f"--save-checkpoint")
    return config.model_copy(update={"base": served.checkpoint_path, "compare_with": [served.path]})


def retrieval_training_data(repository: Path) -> Path:
    """examples/intents.csv plus the example knowledge base as labelled groups (one label per FAQ entry or document
    passage: its question or title, its answer and its sentences), for the contrastive embedder objective. Written
    under <repository>/.data/ (hidden: never read as a model)."""
    from nlpsuite.services.chat.knowledge_base import KnowledgeBase
    from nlpsuite.services.chat.retrieval import units

    kb = KnowledgeBase.load(examples_dir() / "knowledge_base.yaml")
    with open(examples_dir() / "intents.csv", newline="", encoding="utf-8") as handle:
        rows = [(r["text"], r["intent"]) for r in csv.DictReader(handle)]
    for passage in kb.passages:
        texts = units(passage) + ([passage.answer] if passage.source == "faq" else [])
        rows += [(text, f"passage:{passage.id}") for text in dict.fromkeys(texts)]
    return _write_rows(repository / ".data" / "embedder-train.csv", rows)


def intent_training_data(repository: Path) -> Path:
    """examples/intents.csv plus a KNOWLEDGE_LABEL class: the example knowledge base's FAQ questions, document
    section titles and a few of the other ways each is asked. Written under <repository>/.data/."""
    from nlpsuite.services.chat.knowledge_base import KnowledgeBase
    from nlpsuite.services.chat.routing import KNOWLEDGE_LABEL

    kb = KnowledgeBase.load(examples_dir() / "knowledge_base.yaml")
    with open(examples_dir() / "intents.csv", newline="", encoding="utf-8") as handle:
        rows = [(r["text"], r["intent"]) for r in csv.DictReader(handle)]
    for passage in kb.passages:
        if not passage.handoff:
            # A few of the other ways of asking: all of them would make this one class outweigh every intent.
            asked = [passage.title, *passage.questions[:KNOWLEDGE_QUESTIONS]]
            rows += [(text, KNOWLEDGE_LABEL) for text in asked if text]
    return _write_rows(repository / ".data" / "intent-train.csv", rows)


def _write_rows(out: Path, rows: list[tuple[str, str]]) -> Path:
    mkdirs_readable(out.parent.parent)  # the repository: created here first, it must still be readable by all
    out.parent.mkdir(exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "intent"])
        writer.writerows(rows)
    return out


def build_defaults(repository: Path, data_dir: Path | None = None, only: list[str] | None = None,
                   progress: bool = True) -> list[ModelVersion]:
    """Build the default models; on the example data, a new intent model or embedder also recalibrates chat."""
    configs = default_configs(repository, data_dir)
    teachers, fast = teacher_configs(configs), fast_configs(configs, data_dir)
    built = []
    for name in only or DEFAULT_NAMES:
        config = configs[name].model_copy(update={"progress": progress})
        if name in teachers:
            mkdirs_readable(repository)
            with tempfile.TemporaryDirectory(prefix=".teacher-", dir=repository) as scratch:
                teacher = build(teachers[name].model_copy(update={"repository": Path(scratch), "progress": progress}))
                log.info("teacher built", extra={"model": name, **teacher.manifest.reference_metrics})
                built.append(build(config.model_copy(update={"teachers": [teacher.path]})))
        else:
            built.append(build(config))
        if name in fast:
            built.append(build(fast_student(fast[name].model_copy(update={"progress": progress}), built[-1])))
    chat_models = {v.manifest.name for v in built} & {"intent", "embedder"}
    repo = ModelRepository(repository)
    if data_dir is None and chat_models and all(repo.versions(n) for n in ("intent", "embedder")):
        calibrate_default_chat(repository)
    return built


def calibrate_default_chat(repository: Path) -> dict:
    """Fit chat's routing on the dev half of examples/chat_cases.csv (for the example knowledge base) and save it
    in the repository; returns the test half's figures."""
    from nlpsuite.pipeline.chat_eval import evaluate_chat
    from nlpsuite.shared.config import ChatSettings, ModelSettings

    settings = ChatSettings(intent_model=ModelSettings(name="intent", repository=repository, reload_interval_s=0),
                            embedder=ModelSettings(name="embedder", repository=repository, reload_interval_s=0))
    result = evaluate_chat(settings, examples_dir() / "chat_cases.csv", split="test", calibrate=True)
    log.info("chat routing calibrated on examples/chat_cases.csv (dev)",
             extra={"test_accuracy": result["accuracy"], "per_kind": result["per_kind"]})
    return result
