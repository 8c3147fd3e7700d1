"""The int8 rewrite on a hand-made graph: SmoothQuant smoothing keeps the fp32 function and shrinks the int8 error
an outlier channel causes; the result stays batch-invariant."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from nlpsuite.pipeline.quantize import quantize_per_token, smooth_activations

VOCAB, HIDDEN, OUT = 50, 64, 128  # a table under 4096 values stays fp32: only the MatMul is quantized


def _outlier_model(path: Path) -> Path:
    """ids -> embedding rows (channel 3 about 60x the others, as in BERT's LayerNorm outputs) -> MatMul."""
    rng = np.random.default_rng(0)
    table = rng.normal(size=(VOCAB, HIDDEN)).astype(np.float32)
    table[:, 3] *= 60
    weight = rng.normal(size=(HIDDEN, OUT)).astype(np.float32) / 8
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["x"], name="embed"),
         helper.make_node("MatMul", ["x", "weight"], ["y"], name="dense")],
        "outlier",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", OUT])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(weight, "weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _run(model: Path | onnx.ModelProto, ids: np.ndarray) -> np.ndarray:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]


def _texts(seed: int, n: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, VOCAB, size=int(rng.integers(4, 20))).tolist() for _ in range(n)]


def test_smoothing_keeps_the_fp32_result(tmp_path):
    fp32 = _outlier_model(tmp_path / "m.onnx")
    model = onnx.load(str(fp32))
    smooth_activations(model, _texts(1, 32))
    assert any(n.op_type == "Mul" for n in model.graph.node)
    ids = np.array([_texts(2, 1)[0]], np.int64)
    np.testing.assert_allclose(_run(model, ids), _run(fp32, ids), rtol=1e-5, atol=1e-4)


def test_smoothing_shrinks_the_int8_error_of_an_outlier_channel(tmp_path):
    fp32 = _outlier_model(tmp_path / "m.onnx")
    plain = quantize_per_token(fp32, tmp_path / "plain.onnx")
    smoothed = quantize_per_token(fp32, tmp_path / "smoothed.onnx", calibration=_texts(1, 64))
    errors = {}
    for name, path in (("plain", plain), ("smoothed", smoothed)):
        errors[name] = np.mean([np.abs(_run(path, ids) - _run(fp32, ids)).mean()
                                for ids in (np.array([t], np.int64) for t in _texts(3, 16))])
    assert errors["smoothed"] < errors["plain"] / 2, errors


def test_smoothed_int8_is_batch_invariant(tmp_path):
    fp32 = _outlier_model(tmp_path / "m.onnx")
    smoothed = quantize_per_token(fp32, tmp_path / "smoothed.onnx", calibration=_texts(1, 64))
    texts = [t[:10] for t in _texts(4, 8) if len(t) >= 10]
    batch = _run(smoothed, np.array(texts, np.int64))
    for i, text in enumerate(texts):
        np.testing.assert_array_equal(_run(smoothed, np.array([text], np.int64))[0], batch[i])
