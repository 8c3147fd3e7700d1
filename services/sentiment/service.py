"""SentimentService: label and scores per text, topics and watchlist entities; unary and streaming."""
from __future__ import annotations

import asyncio
import logging
import time

import grpc
import numpy as np

from nlpsuite.shared.config import SentimentSettings
from nlpsuite.shared import tracing
from nlpsuite.shared.errors import InvalidArgument, ServiceError
from nlpsuite.shared.logs import failure
from nlpsuite.shared.offload import run_cpu, text_chars
from nlpsuite.shared.priority import lane_of
from nlpsuite.shared.server import Service, unary
from nlpsuite.shared.serving import ServedModel, Timing, deadline_of
from nlpsuite.shared.wire import MalformedRequest, add_servicer
from nlpsuite.shared.validation import check_text, check_texts
from nlpsuite.services.sentiment.watchlist import Watchlist
from nlpsuite.v1 import common_pb2, sentiment_pb2, sentiment_pb2_grpc

log = logging.getLogger(__name__)


class SentimentService(Service, sentiment_pb2_grpc.SentimentServiceServicer):
    service_name = sentiment_pb2.DESCRIPTOR.services_by_name["SentimentService"].full_name
    short_name = "sentiment"

    def __init__(self, settings: SentimentSettings) -> None:
        super().__init__(settings)
        self.settings: SentimentSettings = settings
        self.model = ServedModel(settings.model, settings.batch, settings.max_tokens, settings.reject_overlong,
                                 self.metrics, task="classify")
        self.watchlist: Watchlist | None = None

    def models(self):
        return [self.model]

    def add_to_server(self, server: grpc.aio.Server) -> None:
        add_servicer(sentiment_pb2_grpc.add_SentimentServiceServicer_to_server, self, server)

    async def load(self) -> None:
        self.watchlist = Watchlist.load(self.settings.watchlist)
        await super().load()

    def _result(self, text: str, probs: np.ndarray, truncated: bool) -> sentiment_pb2.SentimentResult:
        labels = self.model.labels
        scores = probs.tolist()
        best = max(range(len(scores)), key=scores.__getitem__)
        assert self.watchlist is not None
        return sentiment_pb2.SentimentResult(
            label=labels[best], confidence=scores[best],
            scores=[common_pb2.LabelScore(label=label, score=p) for label, p in zip(labels, scores)],
            topics=self.watchlist.topics(text),
            entities=[sentiment_pb2.EntityMention(name=m.name, ticker=m.ticker, matched=m.matched)
                      for m in self.watchlist.entities(text)],
            truncated=truncated,
        )

    @unary("Analyze", field="texts")
    async def Analyze(self, request: sentiment_pb2.AnalyzeRequest, context, timing: Timing):
        check_texts(request.texts, self.settings)
        texts = list(request.texts)
        result = await self.model.infer(texts, timing, deadline_of(context), lane_of(context))
        results = await run_cpu(text_chars(texts), self._results, texts, result.outputs, result.truncated)
        return sentiment_pb2.AnalyzeResponse(results=results, model=result.model, timing=timing.proto())

    def _results(self, texts: list[str], outputs: np.ndarray, truncated: list[bool]
                 ) -> list[sentiment_pb2.SentimentResult]:
        return [self._result(t, p, tr) for t, p, tr in zip(texts, outputs, truncated)]

    async def AnalyzeStream(self, request_iterator, context):
        """Each item runs as soon as it arrives (batched with everything else); replies in completion order.

        Backpressure: an item takes a slot of the stream's window before it is read and gives it back once its
        reply has been handed to gRPC, which waits for the client's HTTP/2 flow control. A client that stops
        reading therefore stops the stream after `stream_window` items: nothing more is read, scored or held."""
        lane = lane_of(context)  # before the first item: a bad value ends the call with INVALID_ARGUMENT
        carrier = tracing.carrier_of_metadata(context.invocation_metadata()) if tracing.enabled() else None
        out: asyncio.Queue = asyncio.Queue()
        pending: set[asyncio.Task] = set()
        window = asyncio.Semaphore(self.settings.stream_window)
        code = "OK"

        async def one(item: sentiment_pb2.AnalyzeStreamRequest | MalformedRequest) -> None:
            timing = Timing(time.perf_counter())
            request_id = "" if isinstance(item, MalformedRequest) else item.request_id
            try:
                if isinstance(item, MalformedRequest):
                    raise InvalidArgument(str(item))
                check_text(item.text, self.settings, "text")
                if item.ByteSize() > self.settings.max_message_bytes:
                    raise InvalidArgument(f"text: message over the limit of {self.settings.max_message_bytes} bytes")
                with tracing.span(f"{self.service_name}/AnalyzeStream.item", carrier, kind="server"):
                    result = await self.model.infer([item.text], timing, deadline_of(context), lane)
                scored = await run_cpu(len(item.text), self._result, item.text, result.outputs[0],
                                       result.truncated[0])
                reply = sentiment_pb2.AnalyzeStreamResponse(request_id=request_id, result=scored,
                                                            model=result.model, timing=timing.proto())
                status = "OK"
            except ServiceError as exc:
                reply = sentiment_pb2.AnalyzeStreamResponse(
                    request_id=request_id, error=f"{exc.code.name}: {exc}", model=self.model.info(),
                    timing=timing.proto())
                status = exc.code.name
            except Exception as exc:  # noqa: BLE001 - one bad item must not end the stream
                log.error("stream item failed", extra={"service": self.short_name, "method": "AnalyzeStream",
                                                       "request_id": request_id[:128], **failure(exc)})
                log.debug("stream item failure detail", exc_info=True)  # the message may quote the text
                reply = sentiment_pb2.AnalyzeStreamResponse(request_id=request_id, error="INTERNAL: internal error")
                status = "INTERNAL"
            self.metrics.observe_request("AnalyzeStream.item", status, timing.stages())
            await out.put(reply)

        async def reader() -> None:
            items = request_iterator.__aiter__()
            try:
                while True:
                    await window.acquire()
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
        open_streams = self.metrics.in_flight_of("AnalyzeStream")
        open_streams.inc()
        try:
            while True:
                reply = await out.get()
                if reply is None:
                    break
                yield reply
                window.release()
            await read_task
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        finally:
            open_streams.dec()
            read_task.cancel()
            for task in list(pending):
                task.cancel()
            self.metrics.requests.labels(self.short_name, "AnalyzeStream", code).inc()
