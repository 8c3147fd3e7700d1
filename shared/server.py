"""Server bootstrap: grpc.aio server with health and reflection, metrics, warm-up, graceful shutdown."""
from __future__ import annotations

import abc
import asyncio
import functools
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from nlpsuite.shared.config import ModelSettings, ServiceSettings
from nlpsuite.shared.errors import InvalidArgument, ServiceError
from nlpsuite.shared.logs import failure
from nlpsuite.shared.metrics import Metrics
from nlpsuite.shared.model_repo import Task
from nlpsuite.shared.priority import Lane, lane_of
from nlpsuite.shared.security import TokenInterceptor, open_methods, server_credentials
from nlpsuite.shared import tracing
from nlpsuite.shared.serving import ServedModel, Timing
from nlpsuite.shared.wire import MalformedRequest

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Service(abc.ABC):
    """One gRPC service: its models, its handlers, its metrics."""

    service_name: str  # full proto name, e.g. "nlpsuite.v1.SentimentService"
    short_name: str  # e.g. "sentiment"

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.metrics = Metrics(self.short_name)
        self.draining = False  # set on shutdown: calls that arrive from then on are refused with UNAVAILABLE
        self.in_flight = 0  # unary calls admitted and not yet answered

    @abc.abstractmethod
    def add_to_server(self, server: grpc.aio.Server) -> None: ...

    @abc.abstractmethod
    def models(self) -> Sequence[ServedModel]: ...

    def served_model(self, model: ModelSettings, task: Task, field: str = "texts") -> ServedModel:
        """One of this service's models: batched, token-limited and measured by the service's own settings;
        `field` names the request field its texts come from (in error messages)."""
        s = self.settings
        return ServedModel(model, s.batch, s.max_tokens, s.reject_overlong, self.metrics, field=field, task=task)

    async def load(self) -> None:
        """Load and warm up every model (and whatever else the service needs) before SERVING."""
        for model in self.models():
            await model.load()

    async def close(self) -> None:
        for model in self.models():
            await model.close()

    def check_size(self, request, field: str) -> None:
        size = request.ByteSize()
        if size > self.settings.max_message_bytes:
            raise InvalidArgument(f"{field}: request is {size} bytes, over the limit of "
                                  f"{self.settings.max_message_bytes} (max_message_bytes)")


Handler = Callable[..., Awaitable]


def unary(method: str, field: str):
    """Wrap a unary handler `(self, request, context, timing)`: size check, status mapping, metrics."""

    def decorate(fn: Handler):
        @functools.wraps(fn)
        async def wrapper(self: Service, request, context: grpc.aio.ServicerContext):
            if not tracing.enabled():
                return await handle(self, request, context)
            with tracing.span(f"{self.service_name}/{method}", tracing.carrier_of_metadata(
                    context.invocation_metadata()), kind="server"):
                return await handle(self, request, context)

        async def handle(self: Service, request, context: grpc.aio.ServicerContext):
            timing = Timing(time.perf_counter())
            code = "OK"
            if self.draining:
                code = "UNAVAILABLE"
                self.metrics.observe_request(method, code, timing.stages())
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry another replica")
            self.in_flight += 1
            gauge = self.metrics.in_flight_of(method)
            gauge.inc()
            try:
                if isinstance(request, MalformedRequest):
                    raise InvalidArgument(str(request))
                self.check_size(request, field)
                return await fn(self, request, context, timing)
            except ServiceError as exc:
                code = exc.code.name
                await context.abort(exc.code, str(exc))
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except Exception as exc:  # noqa: BLE001 - never take the server down; log and answer INTERNAL
                code = "INTERNAL"
                log.error("handler failed", extra={"service": self.short_name, "method": method, **failure(exc)})
                log.debug("handler failure detail", exc_info=True)  # the message may quote customer text
                await context.abort(grpc.StatusCode.INTERNAL, f"{method}: internal error")
            finally:
                self.in_flight -= 1
                gauge.dec()
                self.metrics.observe_request(method, code, timing.stages())

        return wrapper

    return decorate


ItemHandler = Callable[..., Awaitable]  # (self, item, context, timing, lane) -> the item's reply
ErrorReply = Callable[..., object]  # (self, item or MalformedRequest, "CODE: message", timing) -> the item's reply


def stream(method: str, field: str, error_reply: ErrorReply, window: Callable[[Service], int]):
    """Wrap the per-item logic of a bidirectional stream `(self, item, context, timing, lane) -> reply`: the lane and
    trace context read once per stream, each item's malformed-request and size checks, its status mapping (an item
    that fails gets `error_reply`, the stream goes on) and metrics (`<method>.item` per item, `<method>` per stream).

    Each item runs as soon as it arrives (batched with everything else); replies go out in completion order.
    Backpressure: an item takes a slot of the stream's window (`window(self)` items) before it is read and gives
    it back once its reply has been handed to gRPC, which waits for the client's HTTP/2 flow control. A client that
    stops reading therefore stops the stream after that many items: nothing more is read, scored or held."""

    def decorate(fn: ItemHandler):
        @functools.wraps(fn)
        async def wrapper(self: Service, request_iterator, context: grpc.aio.ServicerContext):
            try:
                lane: Lane = lane_of(context)
            except ServiceError as exc:
                self.metrics.requests.labels(self.short_name, method, exc.code.name).inc()
                await context.abort(exc.code, str(exc))
            carrier = tracing.carrier_of_metadata(context.invocation_metadata()) if tracing.enabled() else None
            out: asyncio.Queue = asyncio.Queue()
            pending: set[asyncio.Task] = set()
            slots = asyncio.Semaphore(window(self))
            code = "OK"

            async def one(item) -> None:
                timing = Timing(time.perf_counter())
                try:
                    if isinstance(item, MalformedRequest):
                        raise InvalidArgument(str(item))
                    self.check_size(item, field)
                    with tracing.span(f"{self.service_name}/{method}.item", carrier, kind="server"):
                        reply = await fn(self, item, context, timing, lane)
                    status = "OK"
                except ServiceError as exc:
                    reply = error_reply(self, item, f"{exc.code.name}: {exc}", timing)
                    status = exc.code.name
                except Exception as exc:  # noqa: BLE001 - one bad item must not end the stream
                    log.error("stream item failed", extra={
                        "service": self.short_name, "method": method,
                        "request_id": str(getattr(item, "request_id", ""))[:128], **failure(exc)})
                    log.debug("stream item failure detail", exc_info=True)  # the message may quote the text
                    reply = error_reply(self, item, "INTERNAL: internal error", timing)
                    status = "INTERNAL"
                self.metrics.observe_request(f"{method}.item", status, timing.stages())
                await out.put(reply)

            async def reader() -> None:
                items = request_iterator.__aiter__()
                try:
                    while True:
                        await slots.acquire()
                        try:
                            item = await items.__anext__()
                        except StopAsyncIteration:
                            break
                        task = asyncio.create_task(one(item))
                        pending.add(task)
                        task.add_done_callback(pending.discard)
                    if pending:
                        await asyncio.gather(*list(pending), return_exceptions=True)
                finally:
                    out.put_nowait(None)

            read_task = asyncio.create_task(reader())
            open_streams = self.metrics.in_flight_of(method)
            open_streams.inc()
            try:
                while True:
                    reply = await out.get()
                    if reply is None:
                        break
                    yield reply
                    slots.release()
                await read_task
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            finally:
                open_streams.dec()
                read_task.cancel()
                for task in list(pending):
                    task.cancel()
                self.metrics.requests.labels(self.short_name, method, code).inc()

        return wrapper

    return decorate


class GrpcServer:
    """One service on its own port: NOT_SERVING until its models are loaded and warmed up."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.settings = service.settings
        self.health: health.aio.HealthServicer | None = None
        self.server: grpc.aio.Server | None = None  # created in start(), on the loop that runs it
        self.port: int | None = None
        self.health_server: grpc.aio.Server | None = None  # the plaintext health-only port (health_port)
        self.health_port: int | None = None
        self.ready = asyncio.Event()
        self._stopped = asyncio.Event()
        self._load_task: asyncio.Task | None = None

    async def start(self) -> int:
        name = self.service.service_name
        if self.settings.tracing:
            tracing.enable(self.service.short_name)
        limit = self.settings.max_message_bytes
        self.health = health.aio.HealthServicer()
        # The transport accepts a little more than the configured limit, so that a too-big request
        # reaches the handler and gets INVALID_ARGUMENT naming the field (beyond 2x: RESOURCE_EXHAUSTED).
        self.server = grpc.aio.server(interceptors=self._interceptors(), options=[
            ("grpc.max_receive_message_length", 2 * limit + 65536),
            ("grpc.max_send_message_length", 2 * limit + 65536),
            ("grpc.so_reuseport", 0),
            # Without a per-connection stream limit, one connection opening and resetting streams as fast as it
            # can (HTTP/2 rapid reset, CVE-2023-44487) made other clients' calls fail with CANCELLED.
            ("grpc.max_concurrent_streams", self.settings.max_concurrent_streams),
        ])
        self.service.add_to_server(self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if self.settings.reflection:
            reflection.enable_server_reflection((name, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        await self.health.set("", NOT_SERVING)
        await self.health.set(name, NOT_SERVING)
        address = f"{self.settings.host}:{self.settings.port}"
        tls = self.settings.tls
        self.port = (self.server.add_secure_port(address, server_credentials(tls)) if tls.enabled
                     else self.server.add_insecure_port(address))
        if self.port == 0:
            raise RuntimeError(f"could not bind {self.settings.host}:{self.settings.port}")
        await self.server.start()
        if self.settings.health_port is not None:
            self.health_port = await self._serve_health_only(self.settings.health_port)
        if self.settings.metrics_port is not None:
            metrics_port = self.service.metrics.serve(self.settings.metrics_port, self.settings.host)
            log.info("metrics listening", extra={"service": self.service.short_name, "port": metrics_port})
        log.info("listening; loading models", extra={
            "service": self.service.short_name, "port": self.port,
            "tls": "mutual" if tls.client_ca_file else ("on" if tls.enabled else "off"),
            "token": self.settings.auth.enabled, "health_port": self.health_port})
        binds = self.settings.byte_limit_binds()
        if binds is not None:
            log.warning("max_message_bytes binds before the item limits", extra={
                "service": self.service.short_name, "detail": binds})
        self._load_task = asyncio.create_task(self._load())
        return self.port

    async def _serve_health_only(self, port: int) -> int:
        """grpc.health.v1 alone on a plaintext port, for probes that cannot speak TLS (the kubelet's gRPC probe)."""
        self.health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0), ("grpc.max_concurrent_streams",
                                                                                self.settings.max_concurrent_streams)])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
        bound = self.health_server.add_insecure_port(f"{self.settings.host}:{port}")
        if bound == 0:
            raise RuntimeError(f"could not bind health_port {self.settings.host}:{port}")
        await self.health_server.start()
        return bound

    def _interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        auth = self.settings.auth
        token = auth.secret()
        if token is None:
            return []
        prefix = f"/{self.service.service_name}/"

        def denied(method: str) -> None:  # label only this service's methods: callers choose the name
            rpc = method[len(prefix):] if method.startswith(prefix) else "other"
            self.service.metrics.requests.labels(self.service.short_name, rpc, "UNAUTHENTICATED").inc()

        return [TokenInterceptor(token, open_methods(auth), on_denied=denied)]

    async def _load(self) -> None:
        started = time.perf_counter()
        await self.service.load()
        await self.health.set("", SERVING)
        await self.health.set(self.service.service_name, SERVING)
        self.ready.set()
        log.info("serving", extra={"service": self.service.short_name, "port": self.port,
                                   "load_s": round(time.perf_counter() - started, 3)})

    async def wait_ready(self) -> None:
        """Until SERVING; raises if loading failed."""
        assert self._load_task is not None
        await asyncio.shield(self._load_task)

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING first, then drain: calls arriving from now on get UNAVAILABLE from the handler (a clear,
        retryable answer, rather than the CANCELLED gRPC gives calls that race its own shutdown) while admitted
        unary calls finish; then gRPC stops, giving streams what is left of the grace period."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.settings.grace_s if grace is None else grace
        log.info("shutting down", extra={"service": self.service.short_name, "grace_s": grace})
        if self.server is None or self.health is None:  # never started
            return
        deadline = time.monotonic() + grace
        self.service.draining = True
        await self.health.enter_graceful_shutdown()
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        while self.service.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await self.server.stop(max(0.0, deadline - time.monotonic()))
        if self.health_server is not None:
            await self.health_server.stop(0)
        await self.service.close()
        self.service.metrics.close()
        log.info("stopped", extra={"service": self.service.short_name})


async def serve_forever(services: Sequence[Service]) -> None:
    """Run services until SIGTERM/SIGINT, then shut each down gracefully. Fails fast if a load fails."""
    servers = [GrpcServer(s) for s in services]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        for server in servers:
            await server.start()
        loads = [asyncio.ensure_future(s.wait_ready()) for s in servers]
        stopper = asyncio.ensure_future(stop.wait())
        pending = set(loads)
        while pending and not stop.is_set():
            done, pending = await asyncio.wait(pending | {stopper}, return_when=asyncio.FIRST_COMPLETED)
            pending.discard(stopper)
            for task in done:
                if task is not stopper and task.exception() is not None:
                    raise task.exception()
        await stopper
    finally:
        await asyncio.gather(*(s.stop() for s in servers), return_exceptions=True)
