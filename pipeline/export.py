"""Export a fine-tuned PyTorch model to ONNX, fuse it for the CPU (fp32; int8: pipeline/quantize.py) and for the
GPU (fp16)."""
from __future__ import annotations

import logging
from pathlib import Path

import onnx

from nlpsuite.shared.onnx_io import pin_ir_version
from nlpsuite.shared.tokenization import INPUT_NAMES

log = logging.getLogger(__name__)

OPSET = 17
OUTPUT_NAME = {"classify": "logits", "embed": "sentence_embedding"}


def _wrap(model, task: str):
    """A module with the serving signature: (input_ids, attention_mask) -> logits or a unit-norm embedding."""
    import torch

    class Classifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    class Embedder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    return Classifier() if task == "classify" else Embedder()


def export_onnx(model, task: str, out_path: Path) -> Path:
    """Legacy (TorchScript) export with dynamic batch and sequence axes.

    The dynamo exporter and sdpa attention give graphs whose attention ORT's transformer optimizer
    cannot fuse, so the model must have been loaded with attn_implementation="eager".
    """
    import torch

    wrapped = _wrap(model, task).eval()
    dummy_ids = torch.ones((2, 16), dtype=torch.long)
    dummy_mask = torch.ones((2, 16), dtype=torch.long)
    output = OUTPUT_NAME[task]
    with torch.no_grad():
        torch.onnx.export(
            wrapped,
            (dummy_ids, dummy_mask),
            str(out_path),
            input_names=list(INPUT_NAMES),
            output_names=[output],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                output: {0: "batch"},
            },
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    pin_ir_version(out_path)
    return out_path


# Which of ONNX Runtime's BERT fusions each target gets. Measured on the CPU (AVX512-VNNI EPYC, MiniLM L6, 16 x 64
# tokens, 1 thread, interleaved): ORT's SkipLayerNormalization kernel takes 20 % of the int8 graph's time, Add +
# LayerNormalization a fifth of that; the fused MultiHeadAttention costs more than MatMul + Softmax + MatMul,
# whose GEMMs ORT then runs as FusedMatMul. Unfusing both made the int8 graph 1.24x and the fp32 graph 1.08x
# faster, outputs unchanged (fp32 within 3e-7). On GPUs the fused kernels are the fast ones, so fp16 keeps them.
FUSIONS = {
    "cpu": {"enable_skip_layer_norm": False, "enable_attention": False},
    "gpu": {},
}


def fuse(raw_path: Path, out_path: Path, num_heads: int, hidden_size: int, target: str = "cpu") -> Path:
    """Apply ONNX Runtime's BERT fusions (layer norm, GELU; for the GPU also attention and skip-layer-norm)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    # MultiHeadAttention keeps the Q/K/V projections as plain MatMuls (unlike packed-QKV Attention), so a
    # quantizer could still reach them.
    options.use_multi_head_attention = True
    # A fused EmbedLayerNormalization would hold the word-embedding table in fp32 (47 MB for MiniLM);
    # left as Gather + LayerNorm, the int8 pass can store the table as int8 rows.
    options.enable_embed_layer_norm = False
    for flag, value in FUSIONS[target].items():
        setattr(options, flag, value)
    optimized = optimize_model(
        str(raw_path), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
        optimization_options=options, opt_level=0,
    )
    fused = optimized.get_fused_operator_statistics()
    log.info("fused operators (%s): %s", target, {k: v for k, v in fused.items() if v})
    if options.enable_attention and not fused.get("Attention") and not fused.get("MultiHeadAttention"):
        log.warning("attention did not fuse; the model will run but slower")
    optimized.save_model_to_file(str(out_path))
    pin_ir_version(out_path)
    return out_path


def to_fp16(fused_path: Path, out_path: Path) -> Path:
    """FP16 weights and compute for GPUs; inputs and outputs stay int64/float32 so clients see no change."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(fused_path)))
    model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(out_path))
    pin_ir_version(out_path)
    return out_path
