"""`nlpsuite bench`: the checkpoint it needs, its texts, and one --quick run end to end on tiny real models."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED_DATA, quick_config

SERVERS = ("service", "torch-fp32", "torch-fp32-batched", "torch-best-batched")
needs_data = pytest.mark.skipif(not (SHARED_DATA / "financial_phrasebank" / "train.csv").is_file(),
                                reason=f"the shared data sets are not at {SHARED_DATA}")


@pytest.fixture(scope="module")
def bench_repository(tmp_path_factory, tiny_checkpoint, sentiment_csv, built_embedder) -> Path:
    """A repository with a tiny sentiment classifier built with its checkpoint, and a tiny embedder."""
    from nlpsuite.pipeline.build import build

    repo = tmp_path_factory.mktemp("bench-models")
    build(quick_config(name="sentiment", data=sentiment_csv, base=tiny_checkpoint, repository=repo,
                       save_checkpoint=True, force=True, variants=("fp32", "int8")))
    shutil.copytree(built_embedder.path, repo / "embedder" / "1")
    return repo


def test_saved_checkpoint_gives_the_onnx_models_outputs(bench_repository):
    """The peers' PyTorch model is the published model: same probabilities as the fp32 ONNX variant."""
    from nlpsuite.bench.torch_models import TorchClassifier
    from nlpsuite.shared.model import open_model, softmax
    from nlpsuite.shared.model_repo import ModelRepository

    version = ModelRepository(bench_repository).resolve("sentiment")
    assert version.manifest.checkpoint == "checkpoint"
    assert (version.checkpoint_path / "config.json").is_file()
    texts = ["Profit rose sharply in the third quarter.", "The company cut its outlook.", "Shares were flat."]
    torch_probs, padded = TorchClassifier(version.checkpoint_path, "fp32", version.manifest.max_length, "cpu",
                                          1).predict(texts)
    onnx_probs = softmax(open_model(version, provider="cpu", variant="fp32").predict(texts))
    np.testing.assert_allclose(torch_probs, onnx_probs, atol=1e-4)
    assert padded == len(texts) * max(len(ids) for ids in open_model(version, provider="cpu").encoder.token_ids(texts))


def test_build_keeps_no_checkpoint_by_default(built_classifier):
    assert built_classifier.manifest.checkpoint is None
    assert built_classifier.checkpoint_path is None
    assert not (built_classifier.path / "checkpoint").exists()


def test_bench_refuses_a_model_without_checkpoint(built_classifier, tmp_path):
    repo = built_classifier.path.parent.parent
    proc = subprocess.run([sys.executable, "-m", "nlpsuite.cli", "bench", "--repository", str(repo), "--model",
                           built_classifier.manifest.name, "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "no PyTorch checkpoint" in proc.stderr and "--save-checkpoint" in proc.stderr
    assert not (tmp_path / "o" / "bench.json").exists()


def test_bench_says_where_the_data_should_be(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nlpsuite.cli", "bench", "--data-dir", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--data-dir" in proc.stderr and "financial_phrasebank" in proc.stderr


@needs_data
def test_texts_are_real_sentences_in_their_bands():
    from nlpsuite.bench.texts import BANDS, load_sentences, make_textset
    from nlpsuite.pipeline.build import default_base_checkpoint
    from nlpsuite.shared.tokenization import TextEncoder

    tokenizer = default_base_checkpoint() / "tokenizer.json"
    sentences = set(load_sentences(SHARED_DATA))
    texts = make_textset(SHARED_DATA, tokenizer, "mixed", 60, 10, seed=3)
    encoder = TextEncoder(tokenizer, max_length=10_000)
    assert [len(ids) for ids in encoder.token_ids(texts.texts)] == texts.tokens
    for band in ("short", "medium", "long"):
        lo, hi = BANDS[band]
        assert sum(lo <= k <= hi for k in texts.tokens) >= 10, band
    assert all(BANDS["probe"][0] <= k <= BANDS["probe"][1] for k in texts.probe_tokens)
    for text in texts.texts:  # every text is whole sentences of the data set, joined by spaces
        rest = text
        while rest:
            match = next((s for s in sentences if rest.startswith(s) and rest[len(s):len(s) + 1] in ("", " ")), None)
            assert match is not None, rest[:80]
            rest = rest[len(match):].lstrip(" ")
    again = make_textset(SHARED_DATA, tokenizer, "mixed", 60, 10, seed=3)
    assert again.texts == texts.texts


def _finite_positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


@pytest.mark.slow
@needs_data
def test_bench_quick_end_to_end(bench_repository, tmp_path):
    out, docs = tmp_path / "out", tmp_path / "docs"
    proc = subprocess.run([sys.executable, "-m", "nlpsuite.cli", "bench", "--quick", "--repository",
                           str(bench_repository), "--data-dir", str(SHARED_DATA), "--out", str(out), "--publish",
                           str(docs)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[PASS]" in proc.stdout or "[FAIL]" in proc.stdout
    result = json.loads((out / "bench.json").read_text())

    assert result["meta"]["quick"] is True and result["meta"]["texts"]["mix"] == "medium"
    servers = {s["name"]: s for s in result["servers"]}
    assert set(servers) == set(SERVERS)
    for name, server in servers.items():
        assert [lv["concurrency"] for lv in server["levels"]] == [1, 8], name
        for lv in server["levels"]:
            lat = lv["latency"]
            assert lv["errors"] == 0 and lat["n"] > 0, (name, lv)
            assert _finite_positive(lv["texts_per_s"]) and 0 < lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"]
            assert lv["mean_batch_size"] >= 1 and lv["server_cpu_cores"] > 0 and lv["client_cpu_cores"] > 0
            assert -0.5 < lv["padding_waste"] < 1
        assert server["probe"]["n"] == 20 and server["peak_rss_mb"] > 50
    assert servers["service"]["variant"] == "int8" and servers["service"]["provider"] == "CPUExecutionProvider"
    assert servers["torch-fp32"]["variant"] == "torch-fp32"
    assert all(lv["mean_batch_size"] == 1 for lv in servers["torch-fp32"]["levels"])  # one model call per request
    # Eight clients, one text each, on a batching server: batches of more than one text form.
    assert servers["torch-fp32-batched"]["levels"][1]["mean_batch_size"] > 1

    bare = result["bare"]
    assert bare["variant"] == "int8" and {p["batch"] for p in bare["points"]} == {1, 8}
    assert bare["best"]["texts_per_s"] == max(p["texts_per_s"] for p in bare["points"])
    assert all(_finite_positive(lat["p50_ms"]) for lat in bare["single_text"].values())
    gemm = bare["gemm"]
    assert gemm["variant"] == "int8" and gemm["weight_gemm"] == "MatMulInteger u8 x s8"
    assert _finite_positive(gemm["weight_gops"]) and _finite_positive(gemm["fp32_gops"])
    # The bare runtime does more than its GEMMs, so it cannot beat the GEMM-only limit (2x: a noisy host's margin).
    assert gemm["bare_texts_per_s"] == bare["best"]["texts_per_s"] and 0 < gemm["fraction_of_limit"] < 2
    assert 0 < gemm["gemm_share"] < 1
    assert result["meta"]["host"]["isa"] in proc.stdout and "GEMM-only limit" in proc.stdout

    select = result["torch_select"]
    assert {c["setting"] for c in select["candidates"]} == {"fp32", "bf16-autocast", "int8-dynamic"}
    assert select["best"]["eligible"] and select["best"]["texts_per_s"] == max(
        c["texts_per_s"] for c in select["candidates"] if c["eligible"])
    assert servers["torch-best-batched"]["variant"] == f"torch-{select['best']['setting']}"

    rec = result["recommend"]
    assert rec["cold"]["n"] == 3 and rec["warm"]["n"] == 5 and rec["candidates"] == 100
    assert rec["speedup_p50"] == pytest.approx(rec["cold"]["p50_ms"] / rec["warm"]["p50_ms"], rel=0.01)

    # The ratios come from the head-to-head round: each contender at its best concurrency of the sweep, again.
    h2h = result["head_to_head"]
    (round_,) = h2h["rounds"]
    fp32 = max(("torch-fp32", "torch-fp32-batched"), key=lambda n: max(lv["texts_per_s"] for lv in servers[n]["levels"]))
    assert h2h["contenders"] == ["service", "torch-best-batched", fp32] and h2h["levels"] == [8]
    assert round_["concurrency"] == {n: 8 for n in h2h["contenders"]}
    assert all(_finite_positive(v) for v in [round_["bare_texts_per_s"], round_["bare_single_text_p50_ms"],
                                             round_["service_c1_p50_ms"], *round_["servers"].values()])
    ratios = result["ratios"]
    assert ratios["service_vs_bare_limit"] == pytest.approx(
        round_["servers"]["service"] / round_["bare_texts_per_s"], rel=0.01)
    assert ratios["service_vs_torch_fp32_server"] == pytest.approx(
        round_["servers"]["service"] / round_["servers"][fp32], rel=0.01)
    assert ratios["service_c1_p50_vs_bare_single_text_p50"] == pytest.approx(
        round_["service_c1_p50_ms"] / round_["bare_single_text_p50_ms"], rel=0.01)
    assert len(result["checks"]) == 5 and all(isinstance(c["passed"], bool) for c in result["checks"])

    for folder in (out, docs):
        png = (folder / "benchmark.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
        text = (folder / "benchmark.md").read_text()
        assert "## Acceptance" in text and "![throughput" in text and "our service" in text
        assert "GEMM-only limit" in text and "## Head to head" in text
