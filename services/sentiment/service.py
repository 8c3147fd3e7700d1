"""SentimentService: label and scores per text, topics and watchlist entities; unary and streaming."""
from __future__ import annotations

import grpc
import numpy as np

from nlpsuite.shared.config import SentimentSettings
from nlpsuite.shared.offload import run_cpu, text_chars
from nlpsuite.shared.priority import Lane, lane_of
from nlpsuite.shared.server import Service, stream, unary
from nlpsuite.shared.rpc import deadline_of, model_info, timing_proto
from nlpsuite.shared.serving import Timing
from nlpsuite.shared.wire import MalformedRequest, add_servicer
from nlpsuite.shared.validation import check_text, check_texts
from nlpsuite.services.sentiment.watchlist import Watchlist
from nlpsuite.v1 import common_pb2, sentiment_pb2, sentiment_pb2_grpc



class SentimentService(Service, sentiment_pb2_grpc.SentimentServiceServicer):
    service_name = sentiment_pb2.DESCRIPTOR.services_by_name["SentimentService"].full_name
    short_name = "sentiment"

    def __init__(self, settings: SentimentSettings) -> None:
        super().__init__(settings)
        self.settings: SentimentSettings = settings
        self.model = self.served_model(settings.model, task="classify")
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
        return sentiment_pb2.AnalyzeResponse(results=results, model=model_info(result.model), timing=timing_proto(timing))

    def _results(self, texts: list[str], outputs: np.ndarray, truncated: list[bool]
                 ) -> list[sentiment_pb2.SentimentResult]:
        return [self._result(t, p, tr) for t, p, tr in zip(texts, outputs, truncated)]

    def _stream_error(self, item: sentiment_pb2.AnalyzeStreamRequest | MalformedRequest, error: str,
                      timing: Timing) -> sentiment_pb2.AnalyzeStreamResponse:
        request_id = "" if isinstance(item, MalformedRequest) else item.request_id
        return sentiment_pb2.AnalyzeStreamResponse(request_id=request_id, error=error,
                                                   model=model_info(self.model.info()), timing=timing_proto(timing))

    @stream("AnalyzeStream", field="text", error_reply=_stream_error, window=lambda s: s.settings.stream_window)
    async def AnalyzeStream(self, item: sentiment_pb2.AnalyzeStreamRequest, context, timing: Timing, lane: Lane
                            ) -> sentiment_pb2.AnalyzeStreamResponse:
        """One item of the stream: scored on its own, batched with everything else (see shared/server.stream)."""
        check_text(item.text, self.settings, "text")
        result = await self.model.infer([item.text], timing, deadline_of(context), lane)
        scored = await run_cpu(len(item.text), self._result, item.text, result.outputs[0], result.truncated[0])
        return sentiment_pb2.AnalyzeStreamResponse(request_id=item.request_id, result=scored,
                                                   model=model_info(result.model), timing=timing_proto(timing))
