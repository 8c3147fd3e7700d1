"""The GEMM-only limit: which GEMMs a graph does, this host's speed at them, and the ISA named beside figures."""
from __future__ import annotations

import onnx
import pytest

from nlpsuite.bench.gemm import gemm_seconds, gemm_work, measure
from nlpsuite.shared.host import isa


def test_gemm_work_counts_weight_matrices_and_attention_products(built_classifier):
    version = built_classifier
    for variant in ("fp32", "int8"):
        work = gemm_work(onnx.load(str(version.variant_path(variant))))
        layers = work.attention_products // 2
        assert layers >= 1 and work.attention_products == 2 * layers, variant
        hidden = work.hidden
        # Per layer: Q, K, V and the attention output (hidden x hidden) and the FFN's two (the tiny checkpoint's
        # is 2 x hidden wide); then the pooler (hidden x hidden) and the 3-label head (a Gemm, weight transposed).
        assert work.weights == {f"{hidden}x{hidden}": 4 * layers + 1, f"{hidden}x{2 * hidden}": layers,
                                f"{2 * hidden}x{hidden}": layers, f"{hidden}x3": 1}, variant
        assert work.weight_ops(10) == pytest.approx(
            sum(2 * 10 * int(s.split("x")[0]) * int(s.split("x")[1]) * c for s, c in work.weights.items()))
        assert work.attention_ops(10) == 2 * layers * 2 * 10 * 10 * hidden


def test_gemm_work_refuses_a_graph_without_weights():
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    with pytest.raises(ValueError, match="no GEMM with a constant weight"):
        gemm_work(onnx.helper.make_model(graph))


def test_a_bigger_gemm_takes_longer():
    small = gemm_seconds(64, 64, 64, integer=True, threads=1, concurrent=1, seconds=0.05)
    big = gemm_seconds(256, 1024, 256, integer=True, threads=1, concurrent=1, seconds=0.05)
    assert 0 < small < big


def test_the_limit_is_above_what_the_whole_graph_does(built_classifier):
    limit = measure(built_classifier.variant_path("int8"), "int8", batch=4, tokens=16, threads=1, concurrent=1,
                    seconds_per_shape=0.05)
    assert limit.weight_gops > 0 and limit.fp32_gops > 0 and limit.limit_texts_per_s > 0
    assert 0 < limit.gemm_share < 1 and "MatMulIntegerToFloat" in limit.kernel_shares


@pytest.mark.parametrize("flags,label", [
    ({"avx2"}, "AVX2"),
    ({"avx2", "avx512f"}, "AVX512"),
    ({"avx2", "avx512f", "avx512_vnni"}, "AVX512-VNNI"),
    ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, "AVX512-VNNI+BF16"),
    ({"avx2", "avx512f", "avx512_vnni", "amx_int8", "amx_bf16"}, "AMX+AVX512-VNNI"),
    ({"avx2", "avx_vnni"}, "AVX2+AVX-VNNI"),
    (set(), "no AVX2"),
])
def test_isa_names_what_sets_int8_speed(flags, label):
    assert isa(flags) == label
