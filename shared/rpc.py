"""What the serving core hands back, as the wire has it: timing and model protos, and a call's deadline."""
from __future__ import annotations

import time

from nlpsuite.shared.serving import ModelRef, Timing
from nlpsuite.v1 import common_pb2


def timing_proto(timing: Timing) -> common_pb2.Timing:
    """The request's stages; total: from receipt until now."""
    total = int((time.perf_counter() - timing.started) * 1e6)
    return common_pb2.Timing(tokenize_us=timing.tokenize_us, queue_us=timing.queue_us,
                             inference_us=timing.inference_us, total_us=total)


def model_info(model: ModelRef) -> common_pb2.ModelInfo:
    return common_pb2.ModelInfo(name=model.name, version=model.version, variant=model.variant,
                                provider=model.provider)


def deadline_of(context) -> float | None:
    """The RPC's deadline on the time.monotonic() clock, or None."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining
