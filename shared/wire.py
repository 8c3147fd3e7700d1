"""Requests whose bytes do not parse (invalid UTF-8 in a string field, a corrupt or truncated message) get
INVALID_ARGUMENT naming the message type, instead of grpc's default UNKNOWN ("Unexpected DecodeError").

grpc calls the request deserializer before any handler runs and answers a raised error with UNKNOWN, so the
deserializer returns a MalformedRequest instead and the handler (or stream loop) rejects it.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import grpc
from google.protobuf.message import DecodeError


class MalformedRequest:
    """Stands in for a request message that did not parse."""

    def __init__(self, type_name: str, reason: str) -> None:
        self.type_name = type_name
        self.reason = reason

    def __str__(self) -> str:
        return f"request is not a valid {self.type_name}: {self.reason}"

    def ByteSize(self) -> int:  # noqa: N802 - the protobuf message method the size check calls
        return 0


def _tolerant(parse: Callable[[bytes], object], type_name: str) -> Callable[[bytes], object]:
    def deserialize(data: bytes) -> object:
        try:
            return parse(data)
        except DecodeError as exc:
            return MalformedRequest(type_name, str(exc).rsplit(": ", 1)[-1] or "corrupt message")

    return deserialize


def _type_name(parse: Callable) -> str:
    owner = getattr(parse, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return descriptor.full_name if descriptor is not None else "request"


class TolerantServer:
    """Passed to a generated `add_*Servicer_to_server` in place of the server: registers the same handlers
    with deserializers that never raise."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server
        self.registered: list[str] = []

    def add_generic_rpc_handlers(self, handlers) -> None:
        """Ignored: the generated code registers the same handlers through add_registered_method_handlers."""

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
        tolerant = {
            name: handler._replace(request_deserializer=_tolerant(handler.request_deserializer,
                                                                  _type_name(handler.request_deserializer)))
            for name, handler in handlers.items()
        }
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, tolerant),))
        self._server.add_registered_method_handlers(service, tolerant)
        self.registered.append(service)


def add_servicer(add: Callable[[object, object], None], servicer: object, server: grpc.aio.Server) -> None:
    """`add(servicer, server)` (a generated add_*Servicer_to_server) with malformed requests tolerated."""
    proxy = TolerantServer(server)
    add(servicer, proxy)
    if not proxy.registered:
        raise RuntimeError(f"{add.__name__} registered no handlers (generated code too old for TolerantServer)")
