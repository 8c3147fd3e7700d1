"""`nlpsuite quantcheck`: prove a published int8 variant is batch-invariant, and measure its speed.

1. Batch invariance: each of N texts scored alone and inside a batch of 32 mixed-length texts
   (its position varies) must give the same label and scores within a tolerance.
2. Throughput at batch x tokens (default 32 x 64) of every variant, interleaved in one run so a noisy
   machine hits them alike; reported as texts/s and as the ratio to fp32.
3. Where each variant's time goes: every op type's share of ONNX Runtime's kernel time at that shape.
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np

from nlpsuite.pipeline.data import load_dataset
from nlpsuite.shared.model import open_model_dir, softmax
from nlpsuite.shared.runtime import profile_kernels, synthetic_feeds


def batch_invariance(model_dir: Path, texts: list[str], n: int, batch: int, seed: int) -> dict:
    model = open_model_dir(model_dir, provider="cpu", variant="int8", intra_threads=0)
    rng = random.Random(seed)
    picked = texts[:n]
    worst, label_flips = 0.0, 0
    classify = model.manifest.task == "classify"
    for text in picked:
        alone = model.predict([text])[0]
        company = rng.sample(texts, batch - 1)  # a mix of lengths drawn from the whole set
        position = rng.randrange(batch)
        mixed = model.predict(company[:position] + [text] + company[position:])[position]
        if classify:
            alone, mixed = softmax(alone), softmax(mixed)
        worst = max(worst, float(np.abs(alone - mixed).max()))
        label_flips += int(alone.argmax() != mixed.argmax())
    return {"texts": len(picked), "batch": batch, "max_abs_diff": worst, "label_flips": label_flips,
            "compared": "probabilities" if classify else "embeddings"}


def throughput(model_dir: Path, variants: list[str], batch: int, tokens: int, rounds: int, threads: int) -> dict:
    models = {v: open_model_dir(model_dir, provider="cpu", variant=v, intra_threads=threads) for v in variants}
    feeds = synthetic_feeds(batch, tokens)
    timings: dict[str, list[float]] = {v: [] for v in variants}
    for model in models.values():  # warm-up
        for _ in range(2):
            model.runtime.session.run(None, feeds)
    for _ in range(rounds):
        for variant, model in models.items():
            started = time.perf_counter()
            model.runtime.session.run(None, feeds)
            timings[variant].append(time.perf_counter() - started)
    result = {}
    for variant, values in timings.items():
        median = float(np.median(values))
        result[variant] = {"ms_per_batch": round(median * 1000, 2), "texts_per_s": round(batch / median, 1)}
    if "fp32" in result:
        for variant in result:
            result[variant]["speedup_vs_fp32"] = round(result[variant]["texts_per_s"] / result["fp32"]["texts_per_s"], 3)
    return result


def kernel_time_by_op(model_dir: Path, variants: list[str], batch: int, tokens: int, runs: int,
                      threads: int) -> dict[str, dict[str, float]]:
    """Per variant, each op type's share of ONNX Runtime's kernel time at batch x tokens (with "GEMM share": the
    matrix multiplications' part of it): where the time goes."""
    from nlpsuite.shared.model_repo import version_at

    version = version_at(model_dir)
    shares = {}
    for variant in variants:
        placement = profile_kernels(version.variant_path(variant), batch, tokens, threads, runs)
        shares[variant] = {"GEMM share": round(placement.gemm_share(), 4)} | \
            {op: round(share, 4) for op, share in placement.kernel_shares().items()}
    return shares


def run(model_dir: Path, data: Path, text_col: str, label_col: str, n: int, batch: int, tokens: int,
        rounds: int, threads: int, tolerance: float) -> dict:
    texts = load_dataset(data, text_col, label_col).texts
    model = open_model_dir(model_dir, provider="cpu", variant="fp32")
    variants = [v for v in ("fp32", "int8", "fp16") if v in model.manifest.variants]
    report = {
        "model": model.manifest.name,
        "version": model.manifest.version,
        "batch_invariance": batch_invariance(model_dir, texts, n, 32, seed=7),
        "throughput": {"batch": batch, "tokens": tokens, "rounds": rounds,
                       "variants": throughput(model_dir, variants, batch, tokens, rounds, threads)},
    }
    report["kernel_time_by_op"] = kernel_time_by_op(model_dir, variants, batch, tokens, 6, threads)
    inv = report["batch_invariance"]
    report["batch_invariant"] = inv["label_flips"] == 0 and inv["max_abs_diff"] <= tolerance
    report["tolerance"] = tolerance
    return report


def print_report(report: dict) -> None:
    inv = report["batch_invariance"]
    print(f"model {report['model']} v{report['version']}")
    print(f"batch invariance (int8, {inv['texts']} texts alone vs inside a batch of {inv['batch']}): "
          f"max |diff| of {inv['compared']} {inv['max_abs_diff']:.2e}, label flips {inv['label_flips']} -> "
          f"{'PASS' if report['batch_invariant'] else 'FAIL'} (tolerance {report['tolerance']:g})")
    tp = report["throughput"]
    print(f"throughput at batch {tp['batch']} x {tp['tokens']} tokens, median of {tp['rounds']} interleaved rounds:")
    for variant, figures in tp["variants"].items():
        print(f"  {variant:5s} {figures['ms_per_batch']:8.1f} ms/batch {figures['texts_per_s']:8.1f} texts/s "
              f"{figures.get('speedup_vs_fp32', 0):6.2f}x fp32")
    print(f"share of kernel time by op type at batch {tp['batch']} x {tp['tokens']} (ONNX Runtime profile):")
    for variant, shares in report["kernel_time_by_op"].items():
        ops = {op: share for op, share in shares.items() if op != "GEMM share"}
        top = list(ops.items())[:6]
        rest = 1 - sum(share for _, share in top)
        print(f"  {variant:5s} GEMM {shares['GEMM share']:.0%} of it; "
              + ", ".join(f"{op} {share:.0%}" for op, share in top) + f", other {rest:.0%}")
    print(json.dumps(report))
