"""Batch-invariant INT8 quantization: per-channel int8 weights, per-token dynamic int8 activations.

ONNX Runtime's `quantize_dynamic` scales activations per *tensor*, i.e. over the whole batch, so a
text's score moves with whatever else shares its batch. Static (calibrated) quantization fixes that,
but on BERT it lost too much (embedding cosine 0.93 on MiniLM, measured here) because activation
outliers differ from token to token. This module instead rewrites every MatMul with a constant weight
into integer arithmetic whose activation scale is computed per token (per row of the last axis):

    s   = max(|x|, axis=-1) / 127                  (one scale per token, from that token alone)
    x_q = QuantizeLinear(x, s, zero_point=128)     (uint8, symmetric around 128, per row of the flattened tokens)
    y   = MatMulIntegerToFloat(x_q, W_q, s, w_scale)    (W_q 7-bit in int8, one scale per output column)

uint8 activations with int8 weights is the combination ONNX Runtime's CPU GEMM (MLAS) is fastest at;
MatMulIntegerToFloat is ORT's contrib op that applies the per-column weight scale in the GEMM epilogue. Given
s as an [M, 1] column (its documentation names only a scalar or per-column a_scale; its CPU kernel broadcasts
any shape), it scales each token too: measured on a MiniLM FFN (1024 x 384 x 1536, AVX512-VNNI, 1 thread)
3.14 ms against 3.51 ms with the scale as a separate Mul. Its bias input is not used: with a non-scalar a_scale
the kernel scales the bias by it too. The build's gate and the batch-invariance tests would catch a change.

Before that, given calibration texts, each quantized activation is smoothed (SmoothQuant): a constant per-channel
Mul moves the range of BERT's few outlier channels into the weights, so they no longer set every token's scale.

A token's result depends only on that token's activations, so batching cannot change it. The FFN's GELU is
ORT's FastGelu (tanh approximation) in this variant: cheaper, and its error is far below int8's. Embedding
tables (Gather on a constant 2-D table) are stored as int8 rows with one scale per row.
Everything but MatMulIntegerToFloat is a standard ONNX operator.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from nlpsuite.shared.onnx_io import pin_ir_version
from nlpsuite.shared.tokenization import INPUT_NAMES

_MIN_WEIGHT_ELEMENTS = 4096  # tiny MatMuls (e.g. a 3-label head) are not worth the extra nodes


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.inits = {t.name: t for t in self.graph.initializer}
        self.new_nodes: dict[str, list[onnx.NodeProto]] = {}  # nodes to insert before a node, by its name
        self._quantized_inputs: dict[str, _QuantizedInput] = {}
        self._n = 0

    def name(self, stem: str) -> str:
        self._n += 1
        return f"q8/{stem}_{self._n}"

    def const(self, stem: str, array: np.ndarray) -> str:
        name = self.name(stem)
        self.graph.initializer.append(numpy_helper.from_array(array, name))
        return name

    def constant_weight(self, name: str) -> np.ndarray | None:
        init = self.inits.get(name)
        if init is None or init.data_type != TensorProto.FLOAT:
            return None
        return numpy_helper.to_array(init)

    def quantize_activation(self, x: str, k: int, before: str) -> "_QuantizedInput":
        """Per-token int8 quantization of x [..., K], flattened to [M, K]. Shared between consumers."""
        if x in self._quantized_inputs:
            return self._quantized_inputs[x]
        n = self.name
        shape, prefix, x2d, high, low, neg_low, safe, scale, zero, zp_f, zp, x_q, scale_col = (n(s) for s in (
            "shape", "prefix", "x2d", "high", "low", "neglow", "safe", "scale", "zero", "zpf", "zp", "xq",
            "scalecol"))
        nodes = [
            helper.make_node("Shape", [x], [shape]),
            helper.make_node("Slice", [shape, self.const("start", np.array([0], np.int64)),
                                       self.const("end", np.array([-1], np.int64))], [prefix]),
            helper.make_node("Reshape", [x, self.const("rows", np.array([-1, k], np.int64))], [x2d]),
            # max|x| as max(max x, -min x): two reads of x and no full-size temporary (Abs would write one).
            helper.make_node("ReduceMax", [x2d], [high], axes=[1], keepdims=0),
            helper.make_node("ReduceMin", [x2d], [low], axes=[1], keepdims=0),
            helper.make_node("Neg", [low], [neg_low]),
            helper.make_node("Max", [high, neg_low, self.const("eps", np.array(1e-12, np.float32))], [safe]),
            helper.make_node("Mul", [safe, self.const("inv127", np.array(1.0 / 127.0, np.float32))], [scale]),
            # QuantizeLinear wants a zero point per row when the scale is per row: 128 for every token.
            helper.make_node("Mul", [scale, self.const("zeroes", np.array(0.0, np.float32))], [zero]),
            helper.make_node("Add", [zero, self.const("zp128", np.array(128.0, np.float32))], [zp_f]),
            helper.make_node("Cast", [zp_f], [zp], to=TensorProto.UINT8),
            helper.make_node("QuantizeLinear", [x2d, scale, zp], [x_q], axis=0),
            helper.make_node("Unsqueeze", [scale, self.const("axis1", np.array([1], np.int64))], [scale_col]),
        ]
        self.new_nodes.setdefault(before, []).extend(nodes)
        self._quantized_inputs[x] = _QuantizedInput(x_q, scale_col, prefix)
        return self._quantized_inputs[x]


@dataclass(frozen=True)
class _QuantizedInput:
    values: str  # uint8 [M, K], zero point 128
    scale: str  # float [M, 1], one scale per token
    leading_shape: str  # the input's shape without its last axis, to restore the output's shape


# Weights use 7 bits (+-63). On x86 CPUs without VNNI, MLAS's u8 x s8 kernel (vpmaddubsw) adds pairs of
# products in int16 and saturates past 32767; 2 * 255 * 63 stays under it, 2 * 255 * 127 does not. Measured
# on an AVX2 machine: 8-bit weights gave a larger max logit error (0.39 vs 0.28) for the same accuracy.
WEIGHT_LEVELS = 63


def _quantize_matmul(g: _Graph, node: onnx.NodeProto, weight: np.ndarray) -> list[onnx.NodeProto]:
    k, n = weight.shape
    w_scale = np.maximum(np.abs(weight).max(axis=0), 1e-12) / WEIGHT_LEVELS
    w_q = np.clip(np.round(weight / w_scale), -WEIGHT_LEVELS, WEIGHT_LEVELS).astype(np.int8)
    x = g.quantize_activation(node.input[0], k, node.name)
    dequant, out_shape = g.name("dq"), g.name("outshape")
    return [
        helper.make_node(
            "MatMulIntegerToFloat",
            [x.values, g.const("wq", w_q), x.scale, g.const("wscale", w_scale.astype(np.float32)),
             g.const("azp", np.array(128, np.uint8))],
            [dequant], domain="com.microsoft"),
        helper.make_node("Concat", [x.leading_shape, g.const("cols", np.array([n], np.int64))], [out_shape], axis=0),
        helper.make_node("Reshape", [dequant, out_shape], [node.output[0]]),
    ]


def _quantize_gather(g: _Graph, node: onnx.NodeProto, table: np.ndarray) -> list[onnx.NodeProto]:
    row_scale = np.maximum(np.abs(table).max(axis=1, keepdims=True), 1e-12) / 127.0
    table_q = np.clip(np.round(table / row_scale), -127, 127).astype(np.int8)
    table_name = g.const("embq", table_q)
    scale_name = g.const("embscale", row_scale.astype(np.float32))
    rows, rows_f, scales = g.name("rows"), g.name("rowsf"), g.name("rowscale")
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    return [
        helper.make_node("Gather", [table_name, node.input[1]], [rows], axis=axis),
        helper.make_node("Cast", [rows], [rows_f], to=TensorProto.FLOAT),
        helper.make_node("Gather", [scale_name, node.input[1]], [scales], axis=axis),
        helper.make_node("Mul", [rows_f, scales], [node.output[0]]),
    ]


SMOOTHING_ALPHA = 0.5  # SmoothQuant's migration strength: 0.5 balances activation and weight ranges


def _quantizable_matmuls(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """MatMuls with a constant 2-D weight big enough to quantize, grouped by their activation input: the ones the
    int8 pass quantizes, and smoothing prepares."""
    inits = {t.name: t for t in model.graph.initializer}
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        init = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        if init is not None and init.data_type == TensorProto.FLOAT and len(init.dims) == 2 \
                and int(np.prod(init.dims)) >= _MIN_WEIGHT_ELEMENTS:
            groups.setdefault(node.input[0], []).append(node)
    return groups


def _activation_ranges(model: onnx.ModelProto, names: list[str], calibration: list[list[int]]) -> dict[str, np.ndarray]:
    """Per channel, the largest |x| each named activation reaches over the calibration texts (one at a time:
    no padding tokens in the statistics)."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in names:
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ranges: dict[str, np.ndarray] = {}
    for ids in calibration:
        row = np.array([ids], np.int64)
        outputs = session.run(names, dict(zip(INPUT_NAMES, (row, np.ones_like(row)))))
        for name, value in zip(names, outputs):
            top = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            ranges[name] = np.maximum(ranges[name], top) if name in ranges else top
    return ranges


def smooth_activations(model: onnx.ModelProto, calibration: list[list[int]], alpha: float = SMOOTHING_ALPHA) -> None:
    """SmoothQuant (Xiao et al., 2023), in place: divide each quantized activation's channels by s and multiply the
    matching weight rows by s, s_j = max|x_j|^alpha / max|W_j|^(1 - alpha). The fp32 result is unchanged (a Mul
    before the MatMuls); the few outlier channels of BERT's LayerNorm and GELU outputs no longer set every token's
    int8 scale alone. On a MiniLM embedder it halved the int8 variant's drift from fp32 (1-cos, golden texts)."""
    groups = _quantizable_matmuls(model)
    ranges = _activation_ranges(model, list(groups), calibration)
    inits = {t.name: t for t in model.graph.initializer}
    inserted: dict[str, onnx.NodeProto] = {}
    for i, (x, consumers) in enumerate(groups.items()):
        weights = [numpy_helper.to_array(inits[n.input[1]]) for n in consumers]
        weight_range = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        s = np.clip(np.maximum(ranges[x], 1e-5) ** alpha / np.maximum(weight_range, 1e-5) ** (1 - alpha), 1e-4, 1e4)
        inverse = f"smooth/inv_{i}"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inverse))
        smoothed = f"smooth/x_{i}"
        inserted[consumers[0].name] = helper.make_node("Mul", [x, inverse], [smoothed], name=f"smooth/mul_{i}")
        for node, weight in zip(consumers, weights):
            init = inits[node.input[1]]
            init.CopyFrom(numpy_helper.from_array((weight * s[:, None]).astype(np.float32), init.name))
            node.input[0] = smoothed
    nodes = []
    for node in model.graph.node:
        if node.name in inserted:
            nodes.append(inserted[node.name])
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def quantize_per_token(fp32_path: Path, out_path: Path, calibration: list[list[int]] | None = None) -> Path:
    """Write the batch-invariant int8 variant of a (fused) fp32 model; with calibration texts (token ids), smoothed
    first (SmoothQuant) on their activation ranges."""
    model = onnx.load(str(fp32_path))
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"node_{i}_{node.op_type}"
    if calibration:
        smooth_activations(model, calibration)
    quantizable = {node.name for group in _quantizable_matmuls(model).values() for node in group}
    g = _Graph(model)
    replacements: dict[str, list[onnx.NodeProto]] = {}
    for node in g.graph.node:
        if node.name in quantizable:
            replacements[node.name] = _quantize_matmul(g, node, g.constant_weight(node.input[1]))
        elif node.op_type == "Gather":
            table = g.constant_weight(node.input[0])
            if table is not None and table.ndim == 2 and table.size >= _MIN_WEIGHT_ELEMENTS:
                replacements[node.name] = _quantize_gather(g, node, table)
        elif node.op_type == "BiasGelu" and node.domain == "com.microsoft":
            # The tanh approximation of GELU: at most 5e-4 from the exact (erf) GELU, far inside int8's own error,
            # and 1.40 -> 1.02 ms on a MiniLM FFN's 1024 x 1536 activations (AVX512-VNNI EPYC, 1 thread).
            node.op_type = "FastGelu"

    used_before = {name for node in g.graph.node for name in node.input}
    nodes: list[onnx.NodeProto] = []
    for node in g.graph.node:
        nodes.extend(g.new_nodes.get(node.name, []))
        nodes.extend(replacements.get(node.name, [node]))
    del g.graph.node[:]
    g.graph.node.extend(nodes)

    used_after = {name for node in g.graph.node for name in node.input}
    stale = (used_before - used_after) & set(g.inits)
    kept = [t for t in g.graph.initializer if t.name not in stale]
    del g.graph.initializer[:]
    g.graph.initializer.extend(kept)

    onnx.save(model, str(out_path))
    pin_ir_version(out_path)
    return out_path
