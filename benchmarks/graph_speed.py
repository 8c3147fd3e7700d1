"""Interleaved speed and kernel-time shares of ONNX graph files at one shape: which graph is faster, and why.

    python benchmarks/graph_speed.py OLD.onnx NEW.onnx [--batch 16 --tokens 64 --threads 1 --rounds 40]

Every file runs in the same rounds (so a noisy host hits them alike) on synthetic ids; speeds are reported against
the first file, then each file's GEMM share and largest op types from ONNX Runtime's profiler, with the host's ISA.
Used for issue 15 to compare the int8 graph before and after the CPU fusion changes, both built from one checkpoint.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from nlpsuite.shared.host import isa
from nlpsuite.shared.runtime import create_session, profile_kernels, synthetic_feeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", type=Path, nargs="+")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    feeds = synthetic_feeds(args.batch, args.tokens)
    sessions = [create_session(f, "cpu", args.threads).session for f in args.files]
    for session in sessions:
        session.run(None, feeds)
    seconds: list[list[float]] = [[] for _ in sessions]
    for _ in range(args.rounds):
        for i, session in enumerate(sessions):
            started = time.perf_counter()
            session.run(None, feeds)
            seconds[i].append(time.perf_counter() - started)
    base = float(np.median(seconds[0]))
    print(f"{args.batch} x {args.tokens} tokens, {args.threads} thread(s), median of {args.rounds} interleaved rounds, "
          f"{isa()}")
    for path, values in zip(args.files, seconds):
        median = float(np.median(values))
        placement = profile_kernels(path, args.batch, args.tokens, args.threads)
        top = ", ".join(f"{op} {share:.0%}" for op, share in list(placement.kernel_shares().items())[:5])
        print(f"  {median * 1000:8.2f} ms  {base / median:5.3f}x  GEMM {placement.gemm_share():.1%}  {path}  ({top})")


if __name__ == "__main__":
    main()
