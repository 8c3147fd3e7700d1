"""The versioned model repository: `<root>/<name>/<version>/` with variants, tokenizer and a manifest.

Layout of one version (written by `nlpsuite build`, read by every service):

    manifest.json        what it is and how it was made (see Manifest)
    tokenizer.json       the fast tokenizer, loaded with `tokenizers` (no transformers at serve time)
    model.fp32.onnx      fused reference
    model.int8.onnx      batch-invariant int8, for CPUs
    model.fp16.onnx      for GPUs
    examples.json        classifiers: up to 20 training texts per label (chat compares messages with them)
    golden.json          a few dev texts with the fp32 outputs and a drift bound per variant: the load-time
                         self-test (shared/self_test.py) runs them on the provider each load gets
    checkpoint/          optional (`nlpsuite build --save-checkpoint`): the fine-tuned Hugging Face checkpoint,
                         for PyTorch comparisons (`nlpsuite bench`) and re-export; serving never reads it

Publishing is atomic: a version is assembled in a hidden temp dir beside its final place and renamed
into place, so a reader sees either no version or a complete one. A published version is readable by every
user (directories 0755, files 0644), whatever the publisher's umask: the images serve as uid 10001 what a
root build baked in, and a build job may fill a volume as yet another user.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

Task = Literal["classify", "embed", "recommend"]
Variant = Literal["fp32", "int8", "fp16"]
VARIANTS: tuple[Variant, ...] = ("fp32", "int8", "fp16")
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"


class ModelRepoError(RuntimeError):
    """A model name, version or variant that cannot be loaded."""


class VariantInfo(BaseModel):
    file: str
    size_bytes: int
    metrics: dict[str, float] = Field(default_factory=dict)
    passed_gate: bool = True
    forced: bool = False


class Manifest(BaseModel):
    name: str
    version: str = ""
    task: Task
    labels: list[str] = Field(default_factory=list)
    max_length: int = 128
    embedding_dim: int | None = None
    base_checkpoint: str
    base_checkpoint_sha256: str
    layers_kept: int | None = None
    dataset: dict[str, object] = Field(default_factory=dict)
    hyperparameters: dict[str, object] = Field(default_factory=dict)
    reference_metrics: dict[str, float] = Field(default_factory=dict)
    variants: dict[str, VariantInfo] = Field(default_factory=dict)
    quantization: str = ""
    libraries: dict[str, str] = Field(default_factory=dict)
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    extra: dict[str, object] = Field(default_factory=dict)
    checkpoint: str | None = None  # dir of the fine-tuned Hugging Face checkpoint, relative to the version


class ModelVersion(BaseModel):
    """One published version on disk."""

    path: Path
    manifest: Manifest

    def variant_path(self, variant: str) -> Path:
        info = self.manifest.variants.get(variant)
        if info is None:
            raise ModelRepoError(
                f"model {self.manifest.name} version {self.manifest.version} has no {variant!r} variant "
                f"(it has: {', '.join(sorted(self.manifest.variants)) or 'none'})"
            )
        path = self.path / info.file
        if not path.is_file():
            raise ModelRepoError(f"model file missing: {path}")
        return path

    @property
    def tokenizer_path(self) -> Path:
        return self.path / TOKENIZER

    @property
    def checkpoint_path(self) -> Path | None:
        """The saved fine-tuned checkpoint, or None when the version was built without one."""
        if self.manifest.checkpoint is None:
            return None
        path = self.path / self.manifest.checkpoint
        if not (path / "config.json").is_file():
            raise ModelRepoError(f"model {self.manifest.name} version {self.manifest.version}: its manifest "
                                 f"names checkpoint {self.manifest.checkpoint!r} but {path} holds no config.json")
        return path


def read_manifest(version_dir: Path) -> Manifest:
    path = version_dir / MANIFEST
    if not path.is_file():
        raise ModelRepoError(f"{version_dir} is not a model version: no {MANIFEST}")
    try:
        return Manifest.model_validate_json(path.read_text())
    except ValueError as exc:
        raise ModelRepoError(f"{path} is not a valid manifest: {exc}") from exc


READABLE_DIR, READABLE_FILE = 0o755, 0o644


def make_readable(root: Path) -> None:
    """Let every user read `root` and everything under it (not write): dirs 0755, files 0644."""
    os.chmod(root, READABLE_DIR)
    for parent, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(parent, name), READABLE_DIR)
        for name in files:
            os.chmod(os.path.join(parent, name), READABLE_FILE)


def mkdirs_readable(path: Path) -> None:
    """mkdir -p whose new directories every user may enter, whatever the umask (existing ones are left alone)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            continue
        os.chmod(directory, READABLE_DIR)


def _unreadable(path: Path) -> str | None:
    """Why this process cannot read a version directory, or None."""
    if os.access(path, os.R_OK | os.X_OK):
        return None
    st = path.stat()
    return (f"{path} is not readable by uid {os.getuid()} (mode {st.st_mode & 0o7777:04o}, owner uid {st.st_uid}); "
            f"it was published private to its publisher (as nlpsuite did before 2026-12); let every user read "
            f"it with `chmod -R a+rX {path.parent}`")


def _version_key(name: str) -> tuple[int, str]:
    return (int(name), name) if name.isdigit() else (-1, name)


class ModelRepository:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def versions(self, name: str) -> list[str]:
        """Published versions of a model, oldest first (numeric order). Temp dirs are never listed."""
        model_dir = self.root / name
        if not model_dir.is_dir():
            return []
        found = []
        for p in model_dir.iterdir():
            if not p.is_dir() or p.name.startswith("."):
                continue
            problem = _unreadable(p)
            if problem is not None:
                raise ModelRepoError(problem)
            if (p / MANIFEST).is_file():
                found.append(p.name)
        return sorted(found, key=_version_key)

    def resolve(self, name: str, version: str | None = None) -> ModelVersion:
        """The given version, or the newest one."""
        versions = self.versions(name)
        if not versions:
            raise ModelRepoError(f"no published versions of model {name!r} under {self.root}")
        chosen = version or versions[-1]
        if chosen not in versions:
            raise ModelRepoError(f"model {name!r} has no version {chosen!r} (has: {', '.join(versions)})")
        path = self.root / name / chosen
        return ModelVersion(path=path, manifest=read_manifest(path))

    def publish(self, staged: Path, name: str) -> ModelVersion:
        """Move a fully written staging dir into place as the next version, atomically."""
        model_dir = self.root / name
        mkdirs_readable(model_dir)
        tmp = Path(tempfile.mkdtemp(prefix=".publishing-", dir=model_dir))  # mode 0700 until make_readable
        try:
            for item in staged.iterdir():
                shutil.copy2(item, tmp / item.name) if item.is_file() else shutil.copytree(item, tmp / item.name)
            make_readable(tmp)
            while True:
                versions = [v for v in self.versions(name) if v.isdigit()]
                version = str(int(versions[-1]) + 1) if versions else "1"
                manifest = read_manifest(tmp)
                manifest.name, manifest.version = name, version
                (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2))
                try:
                    os.rename(tmp, model_dir / version)  # atomic; fails if another publisher took the number
                    break
                except OSError:
                    if not (model_dir / version).exists():
                        raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.resolve(name, version)


def version_at(path: Path | str) -> ModelVersion:
    """A version directory (`<root>/<name>/<version>`), or the newest version under `<root>/<name>`."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        return ModelVersion(path=path, manifest=read_manifest(path))
    return ModelRepository(path.parent).resolve(path.name)


def choose_variant(manifest: Manifest, provider: str, override: str | None = None) -> str:
    """fp16 on a GPU provider, int8 on the CPU, fp32 as the fallback; a configured override wins.

    Variants that failed the accuracy gate were never published unless forced, so they are eligible.
    """
    if override:
        if override not in manifest.variants:
            raise ModelRepoError(f"variant {override!r} requested but model has {sorted(manifest.variants)}")
        return override
    on_gpu = provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
    for variant in (("fp16", "fp32", "int8") if on_gpu else ("int8", "fp32", "fp16")):
        if variant in manifest.variants:
            return variant
    raise ModelRepoError(f"model {manifest.name} has no variants")


LABEL_EXAMPLES = "examples.json"
EXAMPLES_PER_LABEL = 20


def write_label_examples(directory: Path, texts: list[str], labels: list[str]) -> None:
    """A classifier's first training texts per label (at most EXAMPLES_PER_LABEL): what each label means, for
    consumers that compare a message with them (chat weighs intents against retrieved passages this way)."""
    examples: dict[str, list[str]] = {}
    for text, label in zip(texts, labels):
        if len(examples.setdefault(label, [])) < EXAMPLES_PER_LABEL:
            examples[label].append(text)
    (directory / LABEL_EXAMPLES).write_text(json.dumps(examples, ensure_ascii=False, indent=1))


def read_label_examples(version: ModelVersion) -> dict[str, list[str]]:
    """The version's training examples per label ({} when it was built without them)."""
    path = version.path / LABEL_EXAMPLES
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except ValueError as exc:
        raise ModelRepoError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or not all(isinstance(v, list) and all(isinstance(t, str) for t in v)
                                            for v in raw.values()):
        raise ModelRepoError(f"{path}: expected {{label: [texts]}}")
    return raw


def write_manifest(directory: Path, manifest: Manifest) -> None:
    (directory / MANIFEST).write_text(json.dumps(manifest.model_dump(mode="json"), indent=2))
