"""What CPU this process runs on, in the terms that decide int8 and bf16 speed (figures are reported beside it)."""
from __future__ import annotations

import platform
from pathlib import Path


def cpu() -> tuple[str, set[str]]:
    """The CPU's model name and its flags (from /proc/cpuinfo; empty flags where it cannot be read)."""
    name, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return name, flags


def isa(flags: set[str] | None = None) -> str:
    """What decides int8 and bf16 speed on this CPU, shortly: e.g. "AVX512-VNNI+BF16", "AMX", "AVX2"."""
    flags = cpu()[1] if flags is None else flags
    if "amx_int8" in flags or "amx_bf16" in flags:
        return "AMX" + ("+AVX512-VNNI" if "avx512_vnni" in flags else "")
    if "avx512_vnni" in flags:
        return "AVX512-VNNI" + ("+BF16" if "avx512_bf16" in flags else "")
    if "avx512f" in flags:
        return "AVX512"
    if "avx_vnni" in flags:
        return "AVX2+AVX-VNNI"
    return "AVX2" if "avx2" in flags else "no AVX2"
