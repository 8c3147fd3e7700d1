"""TLS and token checks for the gRPC servers, and the matching channel set-up for clients.

Server: `server_credentials(tls)` for `add_secure_port`, `TokenInterceptor` for the optional shared token.
Client: `open_channel(target, tls, token)` (sync or grpc.aio) sends the token as `authorization: Bearer ...`.
"""
from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection
from pydantic import SecretStr

from nlpsuite.shared.batcher import Lane
from nlpsuite.shared.config import AuthSettings, ClientTlsSettings, TlsSettings, read_file
from nlpsuite.shared.priority import priority_metadata

AUTH_HEADER = "authorization"
SCHEME = "Bearer "
HEALTH_PREFIX = f"/{health.SERVICE_NAME}/"
REFLECTION_PREFIX = f"/{reflection.SERVICE_NAME}/"


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    """Credentials for TLS, or mutual TLS (client certificates required) when client_ca_file is set."""
    assert tls.cert_file is not None and tls.key_file is not None
    key, cert = read_file(tls.key_file, "tls.key_file"), read_file(tls.cert_file, "tls.cert_file")
    client_ca = None if tls.client_ca_file is None else read_file(tls.client_ca_file, "tls.client_ca_file")
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def open_methods(auth: AuthSettings) -> tuple[str, ...]:
    """Method-name prefixes that need no token: health always (probes), reflection if configured."""
    return (HEALTH_PREFIX, REFLECTION_PREFIX) if auth.open_reflection else (HEALTH_PREFIX,)


def _deny_handler(kind: str, on_denied: Callable[[str], None], method: str) -> grpc.RpcMethodHandler:
    async def deny(_request: Any, context: grpc.aio.ServicerContext) -> None:
        on_denied(method)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid token")

    factory = {"unary_unary": grpc.unary_unary_rpc_method_handler,
               "unary_stream": grpc.unary_stream_rpc_method_handler,
               "stream_unary": grpc.stream_unary_rpc_method_handler,
               "stream_stream": grpc.stream_stream_rpc_method_handler}[kind]
    return factory(deny)


def _kind(handler: grpc.RpcMethodHandler | None) -> str:
    if handler is None:
        return "unary_unary"
    return f"{'stream' if handler.request_streaming else 'unary'}_{'stream' if handler.response_streaming else 'unary'}"


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Aborts with UNAUTHENTICATED unless the call carries `authorization: Bearer <token>` (constant-time
    comparison). `on_denied(method)` is called for each refused call (metrics); the token is never logged."""

    def __init__(self, token: SecretStr, open_prefixes: Sequence[str] = (HEALTH_PREFIX,),
                 on_denied: Callable[[str], None] = lambda method: None) -> None:
        self._expected = (SCHEME + token.get_secret_value()).encode()
        self._open = tuple(open_prefixes)
        self._on_denied = on_denied

    def _authorized(self, metadata: Iterable[tuple[str, Any]] | None) -> bool:
        for key, value in metadata or ():
            if key == AUTH_HEADER:
                given = value.encode() if isinstance(value, str) else bytes(value)
                return hmac.compare_digest(given, self._expected)
        return False

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable],
                                handler_call_details: grpc.HandlerCallDetails):
        method = handler_call_details.method
        if method.startswith(self._open) or self._authorized(handler_call_details.invocation_metadata):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        return _deny_handler(_kind(handler), self._on_denied, method)


# -- client side -----------------------------------------------------------------------------------------

def _secret(token: str | SecretStr | None) -> str | None:
    if token is None:
        return None
    value = token.get_secret_value() if isinstance(token, SecretStr) else token
    if not value.strip():
        raise ValueError("token is empty")
    return value


def channel_credentials(tls: ClientTlsSettings) -> grpc.ChannelCredentials:
    def read(path, what):
        return None if path is None else read_file(path, f"tls.{what}")

    return grpc.ssl_channel_credentials(root_certificates=read(tls.ca_file, "ca_file"),
                                        private_key=read(tls.key_file, "key_file"),
                                        certificate_chain=read(tls.cert_file, "cert_file"))


class _CallMetadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                    grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds metadata pairs (the bearer token, the priority lane) to every call of a synchronous channel."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = pairs

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or ()), *self._pairs]
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression) -> None:
        self.method, self.timeout, self.metadata = method, timeout, metadata
        self.credentials, self.wait_for_ready, self.compression = credentials, wait_for_ready, compression


def _aio_interceptors(pairs: list[tuple[str, str]]) -> list[grpc.aio.ClientInterceptor]:
    def details(d: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(d.metadata or ()), *pairs)
        return grpc.aio.ClientCallDetails(d.method, d.timeout, metadata, d.credentials, d.wait_for_ready)

    class UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
        async def intercept_unary_unary(self, continuation, d, request):
            return await continuation(details(d), request)

    class UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
        async def intercept_unary_stream(self, continuation, d, request):
            return await continuation(details(d), request)

    class StreamUnary(grpc.aio.StreamUnaryClientInterceptor):
        async def intercept_stream_unary(self, continuation, d, request_iterator):
            return await continuation(details(d), request_iterator)

    class StreamStream(grpc.aio.StreamStreamClientInterceptor):
        async def intercept_stream_stream(self, continuation, d, request_iterator):
            return await continuation(details(d), request_iterator)

    return [UnaryUnary(), UnaryStream(), StreamUnary(), StreamStream()]


def open_channel(target: str, tls: ClientTlsSettings | None = None, token: str | SecretStr | None = None,
                 options: Sequence[tuple[str, Any]] = (), aio: bool = False, priority: Lane | None = None):
    """A channel to `target`: TLS when `tls` is given (plaintext otherwise), the token and the priority lane (when
    given) on every call."""
    secret = _secret(token)
    pairs = ([(AUTH_HEADER, SCHEME + secret)] if secret else []) + ([priority_metadata(priority)] if priority else [])
    options = list(options)
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    if aio:
        interceptors = _aio_interceptors(pairs) if pairs else None
        if tls is None:
            return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
        return grpc.aio.secure_channel(target, channel_credentials(tls), options=options, interceptors=interceptors)
    channel = (grpc.insecure_channel(target, options=options) if tls is None
               else grpc.secure_channel(target, channel_credentials(tls), options=options))
    return grpc.intercept_channel(channel, _CallMetadata(pairs)) if pairs else channel
