"""Run a real grpc.aio server in a background thread with its own event loop (for sync tests)."""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nlpsuite.shared.server import GrpcServer, Service


class ServerThread:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: GrpcServer | None = None
        self.port: int | None = None

    def call(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, wait_ready: bool = True) -> ServerThread:
        self.thread.start()

        async def start() -> int:
            self.server = GrpcServer(self.service)
            return await self.server.start()

        self.port = self.call(start())
        if wait_ready:
            self.call(self.server.wait_ready())
        return self

    def stop_async(self, grace: float | None = None) -> Future:
        assert self.server is not None
        return asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop)

    def stop(self, grace: float | None = 1.0) -> None:
        if self.server is not None:
            self.stop_async(grace).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def health(self, service: str = "") -> int:
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def reflected_services(target: str) -> set[str]:
    """Service names the server lists through gRPC reflection."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        return {s.name for r in responses for s in r.list_services_response.service}


def load_and_close(model) -> None:
    """Load a ServedModel (open, warm up, self-test) and close it again, on a fresh event loop."""
    async def go() -> None:
        try:
            await model.load()
        finally:
            await model.close()

    asyncio.run(go())
