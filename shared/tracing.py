"""Optional OpenTelemetry tracing: the `tracing` extra, off unless a service's or the monitor's `tracing` is true.

Spans go to an OTLP exporter configured by the standard OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT,
OTEL_SERVICE_NAME, ...), unless the process already installed its own tracer provider (an application embedding
us, or a test with an in-memory exporter). Trace context (W3C `traceparent`) arrives in gRPC metadata and Kafka
record headers and leaves the same way, so one news item can be followed from `news` through the sentiment
service to `alerts`. With tracing off every function here returns at once.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

_tracer: Any = None  # an opentelemetry Tracer while tracing is on


class TracingUnavailable(RuntimeError):
    """Tracing was switched on but the `tracing` extra is not installed."""


def enable(service_name: str) -> None:
    """Switch tracing on for this process (idempotent); TracingUnavailable without the extra."""
    global _tracer
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise TracingUnavailable("tracing is on but OpenTelemetry is not installed: pip install 'nlpsuite[tracing]'"
                                 ) from None
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise TracingUnavailable("tracing is on but the OTLP exporter is not installed: pip install "
                                     "'nlpsuite[tracing]'") from None
        provider = TracerProvider(resource=Resource.create(
            {"service.name": os.environ.get("OTEL_SERVICE_NAME", f"nlpsuite-{service_name}")}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
    _tracer = trace.get_tracer("nlpsuite")


def disable() -> None:
    global _tracer
    _tracer = None


def enabled() -> bool:
    return _tracer is not None


def _extract(carrier: dict[str, str] | None):
    from opentelemetry import propagate

    return propagate.extract(carrier) if carrier else None


def _fields() -> set[str]:
    from opentelemetry import propagate

    return set(propagate.get_global_textmap().fields)  # traceparent, tracestate, baggage


def carrier_of_metadata(metadata: Iterable[tuple[str, Any]] | None) -> dict[str, str]:
    """The trace-context entries of a call's gRPC metadata."""
    fields = _fields()
    return {key: value for key, value in metadata or () if key in fields and isinstance(value, str)}


def carrier_of_headers(headers: Sequence[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """The trace-context entries of Kafka record headers (name, bytes): no other header is carried on."""
    fields = _fields()
    carrier = {}
    for key, value in headers or ():
        if key in fields and isinstance(value, bytes | bytearray):
            try:
                carrier[key] = bytes(value).decode("ascii")
            except UnicodeDecodeError:
                continue
    return carrier


def _kind(kind: str):
    from opentelemetry.trace import SpanKind

    return {"server": SpanKind.SERVER, "consumer": SpanKind.CONSUMER, "internal": SpanKind.INTERNAL}[kind]


@contextlib.contextmanager
def span(name: str, carrier: dict[str, str] | None = None, kind: str = "internal",
         attributes: dict[str, Any] | None = None) -> Iterator[Any]:
    """A span made current for the block: a child of the trace in `carrier` if any, else of the current span."""
    if _tracer is None:
        yield None
        return
    with _tracer.start_as_current_span(name, context=_extract(carrier), kind=_kind(kind),
                                       attributes=attributes) as current:
        yield current


def start(name: str, carrier: dict[str, str] | None = None, links: Sequence[dict[str, str]] = (),
          kind: str = "internal", attributes: dict[str, Any] | None = None) -> Any:
    """A span that is not made current (the caller ends it with `end`): e.g. one monitor batch, whose first item's
    trace is its parent and whose other items' traces are links. None while tracing is off."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    link_list = []
    for other in links:
        context = trace.get_current_span(_extract(other)).get_span_context()
        if context.is_valid:
            link_list.append(trace.Link(context))
    return _tracer.start_span(name, context=_extract(carrier), kind=_kind(kind), attributes=attributes,
                              links=link_list)


def end(current: Any) -> None:
    if current is not None:
        current.end()


def record(name: str, start_ns: int, end_ns: int, attributes: dict[str, Any] | None = None) -> None:
    """A finished child span of the current one, from timestamps taken elsewhere (e.g. the batcher's)."""
    if _tracer is not None:
        _tracer.start_span(name, start_time=start_ns, attributes=attributes).end(end_time=end_ns)


def _inject(current: Any) -> dict[str, str]:
    from opentelemetry import propagate, trace

    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(current) if current is not None else None)
    return carrier


def metadata(current: Any = None) -> list[tuple[str, str]] | None:
    """gRPC metadata carrying `current`'s trace (None: the current span's); None while tracing is off."""
    if _tracer is None:
        return None
    return list(_inject(current).items())


def headers(current: Any = None, carrier: dict[str, str] | None = None) -> list[tuple[str, bytes]] | None:
    """Kafka record headers carrying `carrier`'s trace if given, else `current`'s; None while tracing is off."""
    if _tracer is None:
        return None
    return [(key, value.encode("ascii")) for key, value in (carrier or _inject(current)).items()]
