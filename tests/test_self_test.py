"""The load-time self-test: every build stores golden texts; a load or hot reload whose outputs drift past the
variant's bound is refused (here on the CPU, with a deliberately damaged fp16 variant)."""
from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from nlpsuite.shared.config import BatchSettings, ModelSettings
from nlpsuite.shared.metrics import Metrics
from nlpsuite.shared.model_repo import ModelRepoError, ModelRepository
from nlpsuite.shared.self_test import FLOOR, GOLDEN, drift, golden_indices, read_golden
from nlpsuite.shared.serving import ServedModel, Timing
from tests.support import load_and_close


def served(repo: Path, name: str, metrics: Metrics | None = None, **model) -> ServedModel:
    settings = ModelSettings(name=name, repository=repo, provider="cpu", reload_interval_s=0, **model)
    return ServedModel(settings, BatchSettings(), max_tokens=128, reject_overlong=False, metrics=metrics,
                       task="classify")


def damage_head(version_dir: Path, labels: int, factor: float = 25.0) -> None:
    """Scale the fp16 variant's classifier weights: it still runs and outputs finite scores, one per label."""
    path = version_dir / "model.fp16.onnx"
    model = onnx.load(str(path))
    heads = [t for t in model.graph.initializer if len(t.dims) == 2 and labels in t.dims]
    assert heads, "no classifier weight found"
    for tensor in heads:
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * np.float16(factor), tensor.name))
    onnx.save(model, str(path))


@pytest.fixture()
def copy_of(built_classifier, tmp_path):
    def make(version: str = "1") -> Path:
        target = tmp_path / "repo" / built_classifier.manifest.name / version
        shutil.copytree(built_classifier.path, target)
        return target
    return make


def test_every_build_stores_a_golden_set_with_a_bound_per_variant(built_classifier, built_embedder):
    for version in (built_classifier, built_embedder):
        golden = read_golden(version.path)
        assert golden is not None and 0 < len(golden.texts) == len(golden.ids) == len(golden.reference) <= 32
        assert set(golden.bounds) == set(version.manifest.variants)
        assert golden.bounds["fp32"] == FLOOR[golden.measure]  # the reference itself: no drift at build
        assert all(len(ids) <= version.manifest.max_length for ids in golden.ids)
    assert read_golden(built_classifier.path).measure == "probability"
    assert read_golden(built_embedder.path).measure == "cosine"


def test_drift_measures():
    ref = np.array([[2.0, 0.0, -1.0]])
    assert drift("probability", ref, ref)[0] == 0
    assert drift("probability", ref * 10, ref)[0] > 0.15
    assert drift("cosine", np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]))[0] == pytest.approx(1.0)
    assert golden_indices(["a" * n for n in range(100)], 5) == [0, 25, 50, 74, 99]  # spread over the lengths


def test_healthy_variants_pass_and_report_their_drift_and_placement(built_classifier, copy_of, caplog):
    version_dir = copy_of()
    caplog.set_level(logging.INFO, logger="nlpsuite.shared.serving")
    for variant in built_classifier.manifest.variants:
        metrics = Metrics("test")
        model = served(version_dir.parent.parent, built_classifier.manifest.name, metrics, variant=variant)
        caplog.clear()
        load_and_close(model)
        ready = [r for r in caplog.records if r.getMessage() == "model ready"]
        assert ready and ready[0].self_test["passed"] is True and ready[0].self_test["texts"] > 0
        assert ready[0].placement == {"nodes": {"CPUExecutionProvider": model.model.placement.nodes(
            "CPUExecutionProvider")}}
        ops = model.model.placement.ops["CPUExecutionProvider"]
        assert ("MatMulIntegerToFloat" in ops) == (variant == "int8"), ops
        result = model.model.self_test
        assert result is not None and result.passed and result.variant == variant, result
        assert result.provider == "CPUExecutionProvider" and result.texts > 0
        value = metrics.registry.get_sample_value("nlpsuite_model_self_test_drift", {
            "service": "test", "model": built_classifier.manifest.name, "version": "1", "variant": variant,
            "provider": "CPUExecutionProvider"})
        assert value == pytest.approx(result.drift)


def test_a_damaged_fp16_variant_is_refused_on_the_cpu(built_classifier, copy_of):
    version_dir = copy_of()
    damage_head(version_dir, len(built_classifier.manifest.labels))
    name = built_classifier.manifest.name
    with pytest.raises(ModelRepoError, match=r"self-test failed: variant fp16 on CPUExecutionProvider drifts "
                                             r"[0-9.e-]+ from the fp32 reference on \d+ golden texts \(bound"):
        load_and_close(served(version_dir.parent.parent, name, variant="fp16"))
    # The check is what refuses it: without the self-test the damaged file loads and runs.
    model = served(version_dir.parent.parent, name, variant="fp16", self_test=False)
    load_and_close(model)
    assert model.model.self_test is None
    # The other variants of the same version are unharmed and still load.
    load_and_close(served(version_dir.parent.parent, name, variant="int8"))


def test_hot_reload_refuses_a_damaged_version_and_keeps_serving(built_classifier, copy_of):
    copy_of("1")
    damaged = copy_of("2")
    shutil.rmtree(damaged)  # published later, once version 1 serves
    name = built_classifier.manifest.name

    async def go() -> None:
        model = served(damaged.parent.parent, name, variant="fp16")
        await model.load()
        try:
            assert model.model.manifest.version == "1"
            shutil.copytree(built_classifier.path, damaged)
            damage_head(damaged, len(built_classifier.manifest.labels))
            assert await model.reload() == "refused"
            assert "self-test failed" in model.refused["2"]
            assert model.model.manifest.version == "1"
            out = await model.infer(["still serving"], Timing(started=0.0))
            assert out.model.version == "1" and out.outputs.shape[0] == 1
        finally:
            await model.close()

    asyncio.run(go())


def test_a_version_without_golden_set_still_loads(built_classifier, copy_of):
    version_dir = copy_of()
    (version_dir / GOLDEN).unlink()
    model = served(version_dir.parent.parent, built_classifier.manifest.name)
    load_and_close(model)
    assert model.model.self_test is None


def test_an_unreadable_golden_set_is_a_clear_error(built_classifier, copy_of):
    version_dir = copy_of()
    (version_dir / GOLDEN).write_text("{not json")
    with pytest.raises(ModelRepoError, match="golden.json is not a valid golden set"):
        load_and_close(served(version_dir.parent.parent, built_classifier.manifest.name))
    assert ModelRepository(version_dir.parent.parent).versions(built_classifier.manifest.name) == ["1"]
