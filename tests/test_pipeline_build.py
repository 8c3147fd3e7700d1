"""The model pipeline end to end on a tiny checkpoint: manifest, variants, gate, publish, batch invariance."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from nlpsuite.pipeline.build import BuildError, build
from nlpsuite.shared.model import open_model
from nlpsuite.shared.model_repo import ModelRepository
from tests.conftest import quick_config


def test_manifest_records_how_the_model_was_made(built_classifier, tiny_checkpoint, sentiment_csv):
    m = built_classifier.manifest
    assert m.task == "classify" and m.name == "tiny" and m.version == "1"
    assert m.labels == ["negative", "neutral", "positive"]
    assert set(m.variants) == {"fp32", "int8", "fp16"}
    for info in m.variants.values():
        path = built_classifier.path / info.file
        assert path.is_file() and path.stat().st_size == info.size_bytes
        assert {"accuracy", "macro_f1", "drop_points"} <= set(info.metrics)
        assert info.passed_gate and not info.forced
    assert m.base_checkpoint == str(tiny_checkpoint) and len(m.base_checkpoint_sha256) == 64
    assert m.dataset["train_size"] + m.dataset["dev_size"] == 120
    assert len(m.dataset["train_sha256"]) == 64
    assert m.hyperparameters["max_steps"] == 16 and m.hyperparameters["seed"] == 13
    assert {"torch", "transformers", "onnx", "tokenizers"} <= set(m.libraries)
    assert (built_classifier.path / "tokenizer.json").is_file()
    assert not [p for p in built_classifier.path.parent.iterdir() if p.name.startswith(".")], "temp dirs left"


def test_fp32_onnx_matches_pytorch(built_classifier):
    fp32 = built_classifier.manifest.variants["fp32"].metrics
    assert fp32["max_abs_logit_diff"] < 1e-4
    assert fp32["label_agreement"] == 1.0


def test_int8_is_smaller_and_batch_invariant(built_classifier, sentiment_csv):
    variants = built_classifier.manifest.variants
    assert variants["int8"].size_bytes < variants["fp32"].size_bytes / 3
    model = open_model(built_classifier, provider="cpu", variant="int8")
    texts = [row["text"] for row in csv.DictReader(open(sentiment_csv, newline=""))]
    fillers = texts[40:71]
    for text in texts[:12]:
        alone = model.predict([text])[0]
        mixed = model.predict([*fillers[:15], text, *fillers[15:]])[15]
        assert np.abs(alone - mixed).max() <= 1e-5
        assert alone.argmax() == mixed.argmax()


def test_new_build_is_a_new_version_and_newest_wins(tmp_path, tiny_checkpoint, sentiment_csv):
    config = quick_config(data=sentiment_csv, base=tiny_checkpoint, repository=tmp_path,
                          variants=("fp32", "int8"))
    first, second = build(config), build(config)
    assert (first.manifest.version, second.manifest.version) == ("1", "2")
    repo = ModelRepository(tmp_path)
    assert repo.versions("tiny") == ["1", "2"]
    assert repo.resolve("tiny").manifest.version == "2"
    assert repo.resolve("tiny", "1").path == first.path
    assert set(repo.resolve("tiny").manifest.variants) == {"fp32", "int8"}


def test_gate_refuses_and_publishes_nothing(tmp_path, tiny_checkpoint, sentiment_csv):
    config = quick_config(data=sentiment_csv, base=tiny_checkpoint, repository=tmp_path, max_drop_points=-100.0,
                          variants=("fp32", "int8"))
    with pytest.raises(BuildError, match="accuracy gate"):
        build(config)
    assert ModelRepository(tmp_path).versions("tiny") == []
    assert [p.name for p in tmp_path.rglob("*") if p.suffix == ".onnx"] == []


def test_force_publishes_past_the_gate_and_marks_it(tmp_path, tiny_checkpoint, sentiment_csv):
    config = quick_config(data=sentiment_csv, base=tiny_checkpoint, repository=tmp_path, max_drop_points=-100.0,
                          force=True, variants=("fp32", "int8"))
    version = build(config)
    assert all(info.forced and not info.passed_gate for info in version.manifest.variants.values())


def test_embedder_outputs_unit_vectors_and_is_gated(built_embedder, sentiment_csv):
    m = built_embedder.manifest
    assert m.task == "embed" and m.embedding_dim == 64 and m.labels == []
    for name in ("fp32", "int8", "fp16"):
        assert {"cosine_mean", "cosine_min", "nn_agreement"} <= set(m.variants[name].metrics)
    assert m.variants["fp32"].metrics["cosine_min"] > 0.99999
    model = open_model(built_embedder, provider="cpu")
    assert model.variant == "int8"
    emb = model.predict(["Profit rose sharply.", "The company cut 300 jobs after a weak quarter."])
    assert emb.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_manifest_json_is_plain_json(built_classifier):
    data = json.loads((built_classifier.path / "manifest.json").read_text())
    assert data["variants"]["int8"]["file"] == "model.int8.onnx"
    assert "per-token" in data["quantization"]
