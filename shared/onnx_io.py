"""Small ONNX file helpers shared by the pipeline and the runtime."""
from __future__ import annotations

from pathlib import Path

# onnxruntime-gpu 1.31 refuses IR version 14, which onnx>=1.23 writes by default; 9 is what opset 17 needs.
MAX_IR_VERSION = 9


def pin_ir_version(path: Path) -> None:
    import onnx

    model = onnx.load(str(path))
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
        onnx.save(model, str(path))
