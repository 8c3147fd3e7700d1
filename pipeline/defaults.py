"""The three default models (sentiment, intent, embedder), from the shipped examples or public data sets."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from nlpsuite.pipeline.build import BuildConfig, build
from nlpsuite.pipeline.data import DataError
from nlpsuite.pipeline.train import Hyperparameters
from nlpsuite.shared.model_repo import ModelVersion

DEFAULT_NAMES = ("sentiment", "intent", "embedder")


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
            "intent": BuildConfig(task="classify", name="intent", data=ex / "intents.csv", label_col="intent",
                                  repository=repository,
                                  hyperparameters=Hyperparameters(epochs=15, patience=4, learning_rate=2e-4)),
            "embedder": BuildConfig(task="embed", name="embedder", data=ex / "intents.csv", label_col="intent",
                                    repository=repository, hyperparameters=Hyperparameters(epochs=2, learning_rate=2e-5)),
        }
    phrasebank, banking = data_dir / "financial_phrasebank", data_dir / "banking77"
    for folder in (phrasebank, banking):
        if not (folder / "train.csv").is_file() or not (folder / "dev.csv").is_file():
            raise DataError(f"{folder}: expected train.csv and dev.csv")
    return {
        "sentiment": BuildConfig(task="classify", name="sentiment", data=phrasebank / "train.csv",
                                 dev=phrasebank / "dev.csv", text_col="sentence", repository=repository,
                                 hyperparameters=Hyperparameters(epochs=5)),
        "intent": BuildConfig(task="classify", name="intent", data=banking / "train.csv", dev=banking / "dev.csv",
                              label_col="category", repository=repository,
                              hyperparameters=Hyperparameters(epochs=8, learning_rate=1e-4, batch_size=32, patience=2)),
        "embedder": BuildConfig(task="embed", name="embedder", data=banking / "train.csv", dev=banking / "dev.csv",
                                label_col="category", repository=repository,
                                hyperparameters=Hyperparameters(epochs=1, learning_rate=2e-5, batch_size=64)),
    }


def build_defaults(repository: Path, data_dir: Path | None = None, only: list[str] | None = None,
                   progress: bool = True) -> list[ModelVersion]:
    configs = default_configs(repository, data_dir)
    built = []
    for name in only or DEFAULT_NAMES:
        config = configs[name].model_copy(update={"progress": progress})
        built.append(build(config))
    return built
