"""`nlpsuite quantcheck` on a tiny built classifier: batch invariance, throughput, and where the kernel time goes."""
from __future__ import annotations

import pytest

from nlpsuite.pipeline.quantcheck import kernel_time_by_op, run


def test_kernel_time_shares_name_the_ops_each_variant_spends_its_time_in(built_classifier):
    shares = kernel_time_by_op(built_classifier.path, ["fp32", "int8"], batch=4, tokens=16, runs=2, threads=1)
    for variant, by_op in shares.items():
        gemm = by_op.pop("GEMM share")
        assert sum(by_op.values()) == pytest.approx(1.0, abs=1e-3), variant
        assert list(by_op.values()) == sorted(by_op.values(), reverse=True)
        matmuls = sum(share for op, share in by_op.items()
                      if op in ("MatMul", "FusedMatMul", "Gemm", "MatMulIntegerToFloat"))
        assert 0 < gemm < 1 and gemm == pytest.approx(matmuls, abs=1e-3), variant
    assert "MatMulIntegerToFloat" in shares["int8"] and "MatMulIntegerToFloat" not in shares["fp32"]
    assert "MatMul" in shares["fp32"]


def test_report_carries_the_shares(built_classifier, sentiment_csv):
    report = run(built_classifier.path, sentiment_csv, "text", "label", n=4, batch=4, tokens=16, rounds=2,
                 threads=1, tolerance=1e-3)
    assert report["batch_invariant"]
    assert set(report["kernel_time_by_op"]) == set(report["throughput"]["variants"])
