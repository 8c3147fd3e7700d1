"""Priority lanes end to end: the metadata a client sends picks the lane its texts queue in (real server, loopback)."""
from __future__ import annotations

import grpc
import pytest

from nlpsuite.services.sentiment.client import AsyncSentimentClient, SentimentClient
from nlpsuite.services.sentiment.service import SentimentService
from nlpsuite.shared.priority import PRIORITY_KEY
from nlpsuite.shared.security import open_channel
from nlpsuite.v1 import sentiment_pb2, sentiment_pb2_grpc
from nlpsuite.shared.local_run import ServerThread
from tests.support import metric
from tests.support import settings_for


def lane_texts(service: SentimentService) -> dict[str, float]:
    return {lane: metric(service, "nlpsuite_texts_run_total", lane=lane) for lane in ("interactive", "bulk")}


def test_calls_run_in_the_lane_their_metadata_names(built_classifier):
    service = SentimentService(settings_for(built_classifier))
    with ServerThread(service).start() as server:
        with SentimentClient(server.target) as plain:
            plain.analyze(["Profits rose.", "Sales fell."])
        assert lane_texts(service) == {"interactive": 2, "bulk": 0}
        with SentimentClient(server.target, priority="bulk") as bulk:
            bulk.analyze(["Profits rose.", "Sales fell.", "Flat."])
            assert list(bulk.analyze_stream([("a", "Up."), ("b", "Down.")]))
        assert lane_texts(service) == {"interactive": 2, "bulk": 5}

        async def aio() -> None:
            async with AsyncSentimentClient(server.target, priority="bulk") as client:
                await client.analyze(["One more."])

        import asyncio

        asyncio.run(aio())
        assert lane_texts(service) == {"interactive": 2, "bulk": 6}


def test_an_unknown_priority_is_invalid_argument(built_classifier):
    service = SentimentService(settings_for(built_classifier))
    with ServerThread(service).start() as server:
        stub = sentiment_pb2_grpc.SentimentServiceStub(channel := grpc.insecure_channel(server.target))
        with pytest.raises(grpc.RpcError) as err:
            stub.Analyze(sentiment_pb2.AnalyzeRequest(texts=["x"]), metadata=[(PRIORITY_KEY, "urgent")], timeout=10)
        with pytest.raises(grpc.RpcError) as stream_err:
            list(stub.AnalyzeStream(iter([sentiment_pb2.AnalyzeStreamRequest(request_id="a", text="x")]),
                                    metadata=[(PRIORITY_KEY, "urgent")], timeout=10))
        channel.close()
    for error in (err.value, stream_err.value):
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert PRIORITY_KEY in error.details() and "interactive, bulk" in error.details()
    assert lane_texts(service) == {"interactive": 0, "bulk": 0}


def test_a_client_cannot_name_a_lane_that_does_not_exist():
    with pytest.raises(ValueError, match="priority 'urgent'"):
        open_channel("127.0.0.1:1", priority="urgent")  # type: ignore[arg-type]
