"""The fine-tuned model in PyTorch, the way a team would serve it: transformers + torch, one setting each.

Settings (what a careful team would try on a CPU): fp32 (threads tuned by the layout), bf16 autocast, and
torch.ao dynamic int8 quantization of the Linear layers. On a GPU: fp32, fp16 and bf16 autocast.
`python -m nlpsuite.bench.torch_models SPEC OUT` measures every setting x layout in-process and picks the
fastest whose labels agree with fp32's (so a broken setting cannot win).
"""
from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from nlpsuite.bench.procs import measure_rate, peak_rss_mb

CPU_SETTINGS = ("fp32", "bf16-autocast", "int8-dynamic")
GPU_SETTINGS = ("fp32", "fp16-autocast", "bf16-autocast")
MIN_AGREEMENT = 0.95  # a setting must give fp32's label on at least this share of texts to be picked
HOPELESS = 3.0  # a setting this many times slower than the best so far is not tried in its other layouts


class TorchMissingError(RuntimeError):
    """PyTorch or transformers is not installed."""


def require_torch() -> None:
    """Fail early and plainly when the peers cannot run (found without importing: torch is slow to import)."""
    import importlib.util

    missing = [name for name in ("torch", "transformers", "matplotlib") if importlib.util.find_spec(name) is None]
    if missing:
        raise TorchMissingError(
            f"nlpsuite bench needs {', '.join(missing)} (the PyTorch peers and the chart): install the train and "
            "bench extras, `pip install torch==2.13.0` (CPU build) then "
            "`pip install -c constraints.txt -e '.[train,bench]'`")


def torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def settings_for(device: str) -> tuple[str, ...]:
    return GPU_SETTINGS if device == "cuda" else CPU_SETTINGS


class TorchClassifier:
    """Tokenizer + sequence classifier from a saved checkpoint, in one setting; predict() gives probabilities."""

    def __init__(self, checkpoint: Path, setting: str, max_length: int, device: str, threads: int) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        warnings.filterwarnings("ignore", category=UserWarning)  # torch.ao's deprecation notices
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        if setting not in settings_for(device):
            raise ValueError(f"setting {setting!r} is not one of {settings_for(device)} on {device}")
        torch.set_num_threads(threads)
        self.setting, self.device, self.threads, self.max_length = setting, device, threads, max_length
        self.tokenizer = AutoTokenizer.from_pretrained(str(checkpoint), local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(
            str(checkpoint), local_files_only=True, attn_implementation="sdpa").eval()
        if setting == "int8-dynamic":
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        self.model = model.to(device)
        self.labels = [model.config.id2label[i] for i in range(model.config.num_labels)]

    def _autocast(self):
        import torch

        if self.setting == "bf16-autocast":
            return torch.autocast(self.device, dtype=torch.bfloat16)
        if self.setting == "fp16-autocast":
            return torch.autocast(self.device, dtype=torch.float16)
        return contextlib.nullcontext()

    def predict(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """(probabilities [n, labels], padded tokens in the batch)."""
        import torch

        torch.set_num_threads(self.threads)  # per calling thread: worker threads do not inherit it
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt",
                             return_token_type_ids=False)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        with torch.inference_mode(), self._autocast():
            logits = self.model(**enc).logits
        probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        return probs, int(enc["input_ids"].numel())


class SelectSpec(BaseModel):
    checkpoint: Path
    max_length: int
    texts: list[str]
    batch: int
    layouts: list[tuple[int, int]]  # (torch threads per call, concurrent calls)
    seconds: float
    agreement_texts: int = 128


class Candidate(BaseModel):
    setting: str
    threads: int
    concurrent: int
    batch: int
    texts_per_s: float
    cpu_cores: float
    label_agreement: float  # with fp32 on the same texts
    eligible: bool


class SelectResult(BaseModel):
    device: str
    candidates: list[Candidate]
    best: Candidate
    peak_rss_mb: float


def select(spec: SelectSpec) -> SelectResult:
    device = torch_device()
    check = spec.texts[: spec.agreement_texts]
    reference: np.ndarray | None = None
    candidates = []
    for setting in settings_for(device):
        model = TorchClassifier(spec.checkpoint, setting, spec.max_length, device, spec.layouts[0][0])
        labels = np.concatenate([model.predict(check[i : i + 32])[0].argmax(1) for i in range(0, len(check), 32)])
        if reference is None:
            reference = labels  # fp32 comes first
        agreement = float((labels == reference).mean())
        for threads, concurrent in spec.layouts:
            model.threads = threads
            rate, cpu = measure_rate(model.predict, spec.texts, spec.batch, spec.seconds, concurrent)
            candidates.append(Candidate(setting=setting, threads=threads, concurrent=concurrent, batch=spec.batch,
                                        texts_per_s=round(rate, 2), cpu_cores=round(cpu, 3),
                                        label_agreement=round(agreement, 4), eligible=agreement >= MIN_AGREEMENT))
            print(f"torch {setting:14s} {threads} threads x {concurrent} calls, batch {spec.batch}: {rate:8.1f} "
                  f"texts/s (labels agree with fp32: {agreement:.3f})", flush=True)
            if rate < max(c.texts_per_s for c in candidates) / HOPELESS:
                break  # its other layouts cannot win: spare the time (bf16 on a CPU without bf16 units)
        del model
    best = max((c for c in candidates if c.eligible), key=lambda c: c.texts_per_s)
    return SelectResult(device=device, candidates=candidates, best=best, peak_rss_mb=round(peak_rss_mb(), 1))


def main(argv: list[str]) -> int:
    spec = SelectSpec.model_validate_json(Path(argv[0]).read_text())
    Path(argv[1]).write_text(select(spec).model_dump_json(indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
