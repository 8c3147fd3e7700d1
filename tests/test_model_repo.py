"""Model repository: version resolution, variant choice by device, atomic publish."""
from __future__ import annotations

import pytest

from nlpsuite.shared.model_repo import Manifest, ModelRepoError, ModelRepository, VariantInfo, choose_variant, write_manifest


def _manifest(variants=("fp32", "int8", "fp16")) -> Manifest:
    return Manifest(name="m", task="classify", labels=["a", "b"], base_checkpoint="/base", base_checkpoint_sha256="0" * 64,
                    variants={v: VariantInfo(file=f"model.{v}.onnx", size_bytes=1) for v in variants})


def _stage(tmp_path, name="stage"):
    staged = tmp_path / name
    staged.mkdir()
    write_manifest(staged, _manifest())
    for v in ("fp32", "int8", "fp16"):
        (staged / f"model.{v}.onnx").write_bytes(b"x")
    return staged


def test_variant_choice_follows_the_device():
    m = _manifest()
    assert choose_variant(m, "CPUExecutionProvider") == "int8"
    assert choose_variant(m, "CUDAExecutionProvider") == "fp16"
    assert choose_variant(m, "TensorrtExecutionProvider") == "fp16"
    assert choose_variant(m, "CPUExecutionProvider", override="fp32") == "fp32"
    assert choose_variant(_manifest(("fp32",)), "CUDAExecutionProvider") == "fp32"
    assert choose_variant(_manifest(("fp32", "fp16")), "CPUExecutionProvider") == "fp32"
    with pytest.raises(ModelRepoError, match="variant 'int8' requested"):
        choose_variant(_manifest(("fp32",)), "CPUExecutionProvider", override="int8")


def test_versions_sort_numerically_and_ignore_incomplete_dirs(tmp_path):
    repo = ModelRepository(tmp_path / "repo")
    for _ in range(11):
        repo.publish(_stage(tmp_path, f"s{_}"), "m")
    (tmp_path / "repo" / "m" / ".publishing-abc").mkdir()
    (tmp_path / "repo" / "m" / "99").mkdir()  # no manifest: half-written by hand, never served
    assert repo.versions("m") == [str(i) for i in range(1, 12)]
    newest = repo.resolve("m")
    assert newest.manifest.version == "11" and newest.manifest.name == "m"
    assert repo.resolve("m", "2").manifest.version == "2"
    with pytest.raises(ModelRepoError, match="no version '12'"):
        repo.resolve("m", "12")
    with pytest.raises(ModelRepoError, match="no published versions"):
        repo.resolve("other")


def test_publish_failure_leaves_nothing_behind(tmp_path):
    staged = tmp_path / "stage"
    staged.mkdir()
    (staged / "manifest.json").write_text("{not json")
    repo = ModelRepository(tmp_path / "repo")
    with pytest.raises(ModelRepoError, match="not a valid manifest"):
        repo.publish(staged, "m")
    assert list((tmp_path / "repo" / "m").iterdir()) == []


def test_missing_variant_file_is_a_clear_error(tmp_path):
    repo = ModelRepository(tmp_path / "repo")
    version = repo.publish(_stage(tmp_path), "m")
    (version.path / "model.int8.onnx").unlink()
    with pytest.raises(ModelRepoError, match="model file missing"):
        version.variant_path("int8")
