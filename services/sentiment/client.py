"""A small client for SentimentService: `SentimentClient("localhost:50051").analyze(["..."])`."""
from __future__ import annotations

from collections.abc import Iterable, Iterator

from pydantic import SecretStr

from nlpsuite.shared.batcher import Lane
from nlpsuite.shared.client import ServiceClient
from nlpsuite.shared.config import ClientTlsSettings
from nlpsuite.shared.security import open_channel
from nlpsuite.v1 import sentiment_pb2, sentiment_pb2_grpc


class SentimentClient(ServiceClient):
    stub_class = sentiment_pb2_grpc.SentimentServiceStub

    def analyze(self, texts: list[str], timeout: float | None = None) -> sentiment_pb2.AnalyzeResponse:
        return self.stub.Analyze(sentiment_pb2.AnalyzeRequest(texts=texts), timeout=timeout or self.timeout)

    def analyze_stream(self, items: Iterable[tuple[str, str]], timeout: float | None = None
                       ) -> Iterator[sentiment_pb2.AnalyzeStreamResponse]:
        """(request_id, text) pairs in; responses out as they are ready (match them by request_id)."""
        requests = (sentiment_pb2.AnalyzeStreamRequest(request_id=rid, text=text) for rid, text in items)
        return self.stub.AnalyzeStream(requests, timeout=timeout)


class AsyncSentimentClient:
    """The same over grpc.aio, for asyncio programs (the Kafka monitor keeps its own stub: services/monitor/sentiment_calls.py)."""

    def __init__(self, target: str, timeout: float | None = 30.0, *, tls: ClientTlsSettings | None = None,
                 token: str | SecretStr | None = None, priority: Lane | None = None) -> None:
        self.channel = open_channel(target, tls, token, aio=True, priority=priority)
        self.stub = sentiment_pb2_grpc.SentimentServiceStub(self.channel)
        self.timeout = timeout

    async def analyze(self, texts: list[str], timeout: float | None = None) -> sentiment_pb2.AnalyzeResponse:
        return await self.stub.Analyze(sentiment_pb2.AnalyzeRequest(texts=texts), timeout=timeout or self.timeout)

    def analyze_stream(self, timeout: float | None = None):
        """A bidirectional call: `await call.write(req)`, `await call.done_writing()`, `async for r in call`."""
        return self.stub.AnalyzeStream(timeout=timeout)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncSentimentClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
