"""Accuracy against speed and size for several classifiers and their CPU variants: `nlpsuite evaluate --compare A B
...`, and the table every classifier build writes into its manifest and prints (itself beside its published teachers
and the models given with --compare-with).

For each model and each of its CPU variants (fp32, int8): dev accuracy and macro-F1 on one labelled set, graph
throughput at batch x tokens and single-text latency (synthetic ids, 1 ORT thread, every session timed in the same
interleaved rounds so a noisy host hits them alike), and file size. A row is on the Pareto front when no other row is
at least as accurate and at least as fast with one of the two strictly better.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from nlpsuite.pipeline.data import Dataset, load_dataset
from nlpsuite.pipeline.evaluate import score_classifier
from nlpsuite.shared.host import isa
from nlpsuite.shared.model_repo import ModelVersion, version_at
from nlpsuite.shared.runtime import create_session, synthetic_feeds

CPU_VARIANTS = ("fp32", "int8")
BUILD_ROUNDS = 5  # at the end of a build: a few seconds, enough for ratios; `evaluate --compare` takes 10


class ParetoRow(BaseModel):
    model: str  # name v version
    path: str
    variant: str
    layers: int | None
    accuracy: float
    macro_f1: float
    texts_per_s: float  # graph only, batch x tokens, 1 thread
    single_text_ms: float  # p50, one text of `single_tokens` tokens, 1 thread
    size_mb: float
    pareto: bool = False


class ParetoTable(BaseModel):
    data: str
    batch: int
    tokens: int
    single_tokens: int
    rounds: int
    isa: str  # the host's, which decides int8 speed
    rows: list[ParetoRow]


def _layers(version: ModelVersion) -> int | None:
    """Encoder layers: as pruned, else as the saved checkpoint or the base checkpoint (if still on disk) says."""
    if version.manifest.layers_kept:
        return version.manifest.layers_kept
    for folder in (version.checkpoint_path, Path(version.manifest.base_checkpoint)):
        if folder is not None and (folder / "config.json").is_file():
            return json.loads((folder / "config.json").read_text()).get("num_hidden_layers")
    return None


def timings(paths: list[Path], batch: int, tokens: int, single_tokens: int, rounds: int) -> list[tuple[float, float]]:
    """(texts/s at batch x tokens, single-text p50 ms) per ONNX file, measured in interleaved rounds."""
    sessions = [create_session(p, "cpu", 1).session for p in paths]
    batch_feeds, one_feeds = synthetic_feeds(batch, tokens), synthetic_feeds(1, single_tokens)
    for s in sessions:
        s.run(None, batch_feeds)
        s.run(None, one_feeds)
    batch_s: list[list[float]] = [[] for _ in sessions]
    one_s: list[list[float]] = [[] for _ in sessions]
    for _ in range(rounds):
        for i, s in enumerate(sessions):
            started = time.perf_counter()
            s.run(None, batch_feeds)
            batch_s[i].append(time.perf_counter() - started)
            for _ in range(3):
                started = time.perf_counter()
                s.run(None, one_feeds)
                one_s[i].append(time.perf_counter() - started)
    return [(batch / float(np.median(b)), float(np.median(o)) * 1000) for b, o in zip(batch_s, one_s)]


def mark_front(rows: list[ParetoRow]) -> None:
    for row in rows:
        row.pareto = not any(
            other is not row and other.accuracy >= row.accuracy and other.texts_per_s >= row.texts_per_s
            and (other.accuracy > row.accuracy or other.texts_per_s > row.texts_per_s) for other in rows)


def compare(models: list[Path], data: Path, text_col: str, label_col: str, batch: int = 16, tokens: int = 64,
            single_tokens: int = 32, rounds: int = 10) -> ParetoTable:
    dataset = load_dataset(data, text_col, label_col)
    rows, files = published_rows([version_at(path) for path in models], dataset)
    return tabulate(rows, files, str(data), batch, tokens, single_tokens, rounds)


def build_table(name: str, layers: int | None, staged: dict[str, tuple[Path, dict]], others: list[ModelVersion],
                dev: Dataset) -> ParetoTable:
    """A build's own CPU variants (`staged`: variant -> (file, the gate's metrics on `dev`)) beside the variants of
    published models (its teachers, --compare-with) scored on the same dev set; each model once."""
    rows, files = published_rows(list({v.path.resolve(): v for v in others}.values()), dev)
    for variant in CPU_VARIANTS:
        if variant in staged:
            file, metrics = staged[variant]
            rows.append(dict(model=f"{name} (this build)", path="", variant=variant, layers=layers,
                             accuracy=metrics["accuracy"], macro_f1=metrics["macro_f1"], size_mb=_mb(file)))
            files.append(file)
    return tabulate(rows, files, dev.source, rounds=BUILD_ROUNDS)


def published_rows(versions: list[ModelVersion], dataset: Dataset) -> tuple[list[dict], list[Path]]:
    """Rows without speed for published classifiers' CPU variants scored on `dataset`, and their files."""
    rows, files = [], []
    for version, variant in ((v, name) for v in versions for name in CPU_VARIANTS if name in v.manifest.variants):
        summary, _ = score_classifier(version, dataset, variant, provider="cpu")
        file = version.variant_path(variant)
        files.append(file)
        rows.append(dict(model=f"{version.manifest.name} v{version.manifest.version}", path=str(version.path),
                         variant=variant, layers=_layers(version), accuracy=summary["accuracy"],
                         macro_f1=summary["macro_f1"], size_mb=_mb(file)))
    return rows, files


def tabulate(rows: list[dict], files: list[Path], data: str, batch: int = 16, tokens: int = 64,
             single_tokens: int = 32, rounds: int = 10) -> ParetoTable:
    """Time every file in one interleaved run and mark the front."""
    speeds = timings(files, batch, tokens, single_tokens, rounds)
    table = [ParetoRow(**row, texts_per_s=round(rate, 1), single_text_ms=round(ms, 2))
             for row, (rate, ms) in zip(rows, speeds)]
    mark_front(table)
    return ParetoTable(data=data, batch=batch, tokens=tokens, single_tokens=single_tokens, rounds=rounds, isa=isa(),
                       rows=table)


def _mb(file: Path) -> float:
    return round(file.stat().st_size / 2**20, 1)


def published_teacher(checkpoint: Path) -> ModelVersion | None:
    """The published model version a teacher checkpoint belongs to (`<version>/checkpoint`), or None for a plain
    Hugging Face directory (no ONNX variants to time)."""
    if (checkpoint.parent / "manifest.json").is_file():
        return version_at(checkpoint.parent)
    return None


def print_table(table: ParetoTable, as_json: bool = True) -> None:
    print(f"dev: {table.data}; speed: graph only, 1 ORT thread, batch {table.batch} x {table.tokens} tokens and one "
          f"{table.single_tokens}-token text, {table.rounds} interleaved rounds, {table.isa}")
    width = max([24, *(len(r.model) for r in table.rows)])
    print(f"{'model':<{width}} {'variant':<7} {'layers':>6} {'accuracy':>8} {'macro-F1':>8} {'texts/s':>8} "
          f"{'1 text ms':>9} {'MB':>6}  front")
    for r in table.rows:
        print(f"{r.model:<{width}} {r.variant:<7} {r.layers or '?':>6} {r.accuracy:8.4f} {r.macro_f1:8.4f} "
              f"{r.texts_per_s:8.1f} {r.single_text_ms:9.2f} {r.size_mb:6.1f}  {'*' if r.pareto else ''}")
    if as_json:
        print(table.model_dump_json())
