"""Shared fixtures: a tiny random BERT checkpoint and tiny models built from it with the real pipeline."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from nlpsuite.pipeline.defaults import examples_dir

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A 2-layer, 64-wide BERT with MiniLM's real tokenizer: builds and trains in seconds."""
    torch = pytest.importorskip("torch")
    from transformers import BertConfig, BertModel

    from nlpsuite.pipeline.build import default_base_checkpoint

    out = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=128)
    BertModel(config).save_pretrained(out)
    minilm = default_base_checkpoint()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy2(minilm / name, out / name)
    return out


@pytest.fixture(scope="session")
def sentiment_csv(tmp_path_factory) -> Path:
    """120 rows of the shipped example sentiment data (3 labels)."""
    rows = list(csv.DictReader(open(examples_dir() / "sentiment.csv", newline="")))
    by_label: dict[str, list[dict]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    picked = [row for label in sorted(by_label) for row in by_label[label][:40]]
    path = tmp_path_factory.mktemp("data") / "sentiment.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(picked)
    return path


def quick_config(**overrides):
    from nlpsuite.pipeline.build import BuildConfig
    from nlpsuite.pipeline.train import Hyperparameters

    hp = Hyperparameters(epochs=2, max_steps=16, batch_size=16, learning_rate=1e-3, max_length=64)
    defaults = dict(task="classify", name="tiny", hyperparameters=hp, progress=False)
    defaults.update(overrides)
    return BuildConfig(**defaults)


@pytest.fixture(scope="session")
def built_classifier(tmp_path_factory, tiny_checkpoint, sentiment_csv):
    from nlpsuite.pipeline.build import build

    repo = tmp_path_factory.mktemp("repo")
    return build(quick_config(data=sentiment_csv, base=tiny_checkpoint, repository=repo))


@pytest.fixture(scope="session")
def built_embedder(tmp_path_factory, tiny_checkpoint, sentiment_csv):
    from nlpsuite.pipeline.build import build

    repo = tmp_path_factory.mktemp("repo-embed")
    return build(quick_config(task="embed", name="tiny-embed", data=sentiment_csv, base=tiny_checkpoint,
                              repository=repo))


@pytest.fixture(scope="session")
def built_intent(tmp_path_factory, tiny_checkpoint):
    """A tiny intent classifier on the shipped examples/intents.csv (26 intents)."""
    from nlpsuite.pipeline.build import build
    from nlpsuite.pipeline.train import Hyperparameters

    repo = tmp_path_factory.mktemp("repo-intent")
    hp = Hyperparameters(epochs=8, max_steps=240, batch_size=16, learning_rate=3e-3, max_length=64)
    return build(quick_config(name="tiny-intent", data=examples_dir() / "intents.csv", label_col="intent",
                              base=tiny_checkpoint, repository=repo, hyperparameters=hp, force=True,
                              variants=("fp32", "int8")))


@pytest.fixture(scope="session")
def sentiment_repository(tmp_path_factory) -> Path:
    """A real sentiment model built from examples/sentiment.csv (minutes on 2 cores), or a prebuilt
    repository given as NLPSUITE_TEST_MODELS (a directory holding sentiment/<version>/)."""
    import os
    import subprocess
    import sys

    prebuilt = os.environ.get("NLPSUITE_TEST_MODELS")
    if prebuilt:
        path = Path(prebuilt)
        if not (path / "sentiment").is_dir():
            pytest.fail(f"NLPSUITE_TEST_MODELS={prebuilt} has no sentiment model")
        return path
    repo = tmp_path_factory.mktemp("models")
    subprocess.run([sys.executable, "-m", "nlpsuite.cli", "build-defaults", "--only", "sentiment",
                    "--repository", str(repo), "--no-progress"], check=True)
    return repo


@pytest.fixture(scope="module")
def broker():
    """A local Tansu broker for one test module."""
    from nlpsuite.services.monitor.broker import LocalBroker

    with LocalBroker() as b:
        yield b


@pytest.fixture(scope="module")
def sentiment(sentiment_repository, tmp_path_factory):
    """A real `nlpsuite serve sentiment` process for one test module (tests may kill and restart it)."""
    from tests.support import sentiment_process

    proc = sentiment_process(sentiment_repository, tmp_path_factory.mktemp("logs")).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(request, server):
    """A client of the module's `server` fixture, of the class the module names as CLIENT."""
    with request.module.CLIENT(server.target) as c:
        yield c
