"""The physical limit of the bare runtime on this host: how fast it would run if it did nothing but its GEMMs.

A BERT encoder's arithmetic is almost all matrix multiplication, so the fastest it can run on a CPU is set by
the host's GEMM speed (VNNI / AMX for int8, FMA for fp32). This module measures that speed with ONNX Runtime
itself, at the served model's own weight shapes and M = batch x tokens rows, with the bare run's thread layout:

- an int8 variant's weights as MatMulInteger (u8 x s8, the integer GEMM inside MatMulIntegerToFloat), an fp32
  or fp16 variant's as MatMul (fp32 on the CPU); attention's score and value products (2 x tokens^2 x hidden
  operations each, per layer) at the fp32 speed of a hidden x hidden MatMul, since they run in fp32 in every
  CPU variant;
- the GEMM-only limit is the texts/s of those GEMMs alone at that speed; the bare runtime's best throughput is
  reported as a fraction of it, beside the GEMM share of its kernel time (ONNX Runtime's profiler) at the same
  shape. A fraction well under the GEMM share means the GEMMs themselves run below the measured speed.
"""
from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from pydantic import BaseModel

from nlpsuite.bench.procs import measure_rate
from nlpsuite.shared.runtime import GEMM_OPS, create_session, profile_kernels

ATTENTION_OPS = ("MultiHeadAttention", "Attention")


class GemmWork(BaseModel):
    """The GEMMs a graph does per text of `tokens` tokens."""
    weights: dict[str, int]  # "KxN" -> how many weight matrices of that shape
    attention_products: int  # attention's activation-by-activation GEMMs (2 per layer)
    hidden: int

    def weight_ops(self, tokens: int) -> float:
        return sum(2.0 * tokens * _k(shape) * _n(shape) * count for shape, count in self.weights.items())

    def attention_ops(self, tokens: int) -> float:
        return self.attention_products * 2.0 * tokens * tokens * self.hidden


class GemmLimit(BaseModel):
    variant: str
    batch: int
    tokens: int
    threads: int
    concurrent: int
    weight_gemm: str  # what the weight GEMMs were timed as: "MatMulInteger u8 x s8" or "MatMul fp32"
    weight_gops: float  # this host's speed at the model's weight shapes, giga-operations/s (1 multiply-add = 2)
    fp32_gops: float  # at hidden x hidden, for attention's products
    gops_per_text: float
    limit_texts_per_s: float  # if the host did nothing but those GEMMs at those speeds
    gemm_share: float  # of the bare runtime's kernel time at batch x tokens (profiler)
    kernel_shares: dict[str, float]  # the largest op types' shares
    bare_texts_per_s: float | None = None
    fraction_of_limit: float | None = None


def _k(shape: str) -> int:
    return int(shape.split("x")[0])


def _n(shape: str) -> int:
    return int(shape.split("x")[1])


def gemm_work(model: onnx.ModelProto) -> GemmWork:
    """The weight matrices (constant 2-D second inputs of GEMM ops) and attention products of a graph."""
    constants = {t.name: list(t.dims) for t in model.graph.initializer}
    weights: Counter = Counter()
    products = 0
    for node in model.graph.node:
        if node.op_type in GEMM_OPS:
            dims = constants.get(node.input[1]) if len(node.input) > 1 else None
            if dims is not None and len(dims) == 2:
                transposed = any(a.name == "transB" and a.i for a in node.attribute)  # Gemm's [N, K] weight
                k, n = reversed(dims) if transposed else dims
                weights[f"{k}x{n}"] += 1
            elif dims is None and node.input[0] not in constants:
                products += 1
        elif node.op_type in ATTENTION_OPS:
            products += 2
    if not weights:
        raise ValueError("the graph has no GEMM with a constant weight matrix: not a BERT-family encoder?")
    by_k: Counter = Counter()
    for shape, count in weights.items():
        by_k[_k(shape)] += count
    hidden = by_k.most_common(1)[0][0]  # most weights read the hidden state
    return GemmWork(weights=dict(weights), attention_products=products, hidden=hidden)


def _gemm_model(k: int, n: int, integer: bool) -> bytes:
    rng = np.random.default_rng(0)
    if integer:
        weight = numpy_helper.from_array(rng.integers(-63, 64, (k, n), dtype=np.int8), "w")
        zero = numpy_helper.from_array(np.array(128, np.uint8), "zp")
        node = helper.make_node("MatMulInteger", ["x", "w", "zp"], ["y"])
        inputs, inits = [helper.make_tensor_value_info("x", TensorProto.UINT8, [None, k])], [weight, zero]
    else:
        weight = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        inputs, inits = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])], [weight]
    out = helper.make_tensor_value_info("y", TensorProto.INT32 if integer else TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "gemm", inputs, [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def gemm_seconds(k: int, n: int, rows: int, integer: bool, threads: int, concurrent: int, seconds: float) -> float:
    """Seconds per [rows, k] x [k, n] GEMM on the CPU with this thread layout."""
    with tempfile.TemporaryDirectory(prefix="nlpsuite-gemm-") as folder:
        path = Path(folder) / "gemm.onnx"
        path.write_bytes(_gemm_model(k, n, integer))
        session = create_session(path, "cpu", threads).session
        x = (np.random.default_rng(1).integers(0, 256, (rows, k), dtype=np.uint8) if integer
             else np.random.default_rng(1).standard_normal((rows, k)).astype(np.float32))
        # One "text" per call: measure_rate's rate is calls per second over all concurrent callers.
        calls_per_s, _ = measure_rate(lambda _: session.run(None, {"x": x}), [""], 1, seconds, concurrent)
        return 1.0 / calls_per_s


def measure(path: Path, variant: str, batch: int, tokens: int, threads: int, concurrent: int,
            seconds_per_shape: float = 1.0) -> GemmLimit:
    """The GEMM-only limit of the CPU graph at `path` for texts of `tokens` tokens in batches of `batch`."""
    work = gemm_work(onnx.load(str(path), load_external_data=False))
    integer = variant == "int8"
    rows = batch * tokens
    weight_seconds = sum(count * gemm_seconds(_k(s), _n(s), rows, integer, threads, concurrent, seconds_per_shape)
                         for s, count in work.weights.items())
    weight_gops = work.weight_ops(tokens) * batch / weight_seconds / 1e9
    fp32_seconds = gemm_seconds(work.hidden, work.hidden, rows, False, threads, concurrent, seconds_per_shape)
    fp32_gops = 2.0 * rows * work.hidden * work.hidden / fp32_seconds / 1e9
    seconds_per_text = work.weight_ops(tokens) / (weight_gops * 1e9) + work.attention_ops(tokens) / (fp32_gops * 1e9)
    placement = profile_kernels(path, batch, tokens, threads)
    shares = placement.kernel_shares()
    return GemmLimit(
        variant=variant, batch=batch, tokens=tokens, threads=threads, concurrent=concurrent,
        weight_gemm="MatMulInteger u8 x s8" if integer else "MatMul fp32", weight_gops=round(weight_gops, 1),
        fp32_gops=round(fp32_gops, 1),
        gops_per_text=round((work.weight_ops(tokens) + work.attention_ops(tokens)) / 1e9, 4),
        limit_texts_per_s=round(1.0 / seconds_per_text, 1), gemm_share=round(placement.gemm_share(), 4),
        kernel_shares={op: round(share, 4) for op, share in list(shares.items())[:6]})


def with_bare(limit: GemmLimit, bare_texts_per_s: float) -> GemmLimit:
    return limit.model_copy(update={"bare_texts_per_s": round(bare_texts_per_s, 2),
                                    "fraction_of_limit": round(bare_texts_per_s / limit.limit_texts_per_s, 3)})
