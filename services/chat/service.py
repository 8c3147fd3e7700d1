"""ChatService: intent + answer from the knowledge base, FAQ by embedding similarity, hand-off rules."""
from __future__ import annotations

import logging

import grpc
import numpy as np

from nlpsuite.services.chat.conversations import ConversationStore, Turn
from nlpsuite.services.chat.knowledge_base import KnowledgeBase
from nlpsuite.shared.config import ChatSettings
from nlpsuite.shared.errors import InvalidArgument, Unavailable
from nlpsuite.shared.server import Service, unary
from nlpsuite.shared.serving import ServedModel, Timing, deadline_of
from nlpsuite.shared.tokenization import HEAD_CHARS_PER_TOKEN
from nlpsuite.shared.wire import add_servicer
from nlpsuite.shared.validation import check_text, check_texts
from nlpsuite.v1 import chat_pb2, chat_pb2_grpc, common_pb2

log = logging.getLogger(__name__)


class ChatService(Service, chat_pb2_grpc.ChatServiceServicer):
    service_name = chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name
    short_name = "chat"

    def __init__(self, settings: ChatSettings) -> None:
        super().__init__(settings)
        self.settings: ChatSettings = settings
        s = settings
        self.intents = ServedModel(s.intent_model, s.batch, s.max_tokens, s.reject_overlong, self.metrics,
                                   task="classify")
        self.embedder = ServedModel(s.embedder, s.batch, s.max_tokens, s.reject_overlong, self.metrics, task="embed")
        self.kb: KnowledgeBase | None = None
        self.faq_vectors: np.ndarray | None = None
        self.faq_version = ""  # the embedder version faq_vectors came from (a hot reload changes it)
        self.conversations = ConversationStore(s.context_turns, s.context_ttl_s, s.max_conversations,
                                               keep_chars=s.max_tokens * HEAD_CHARS_PER_TOKEN,
                                               max_bytes=s.context_memory_bytes)

    def models(self):
        return [self.intents, self.embedder]

    def add_to_server(self, server: grpc.aio.Server) -> None:
        add_servicer(chat_pb2_grpc.add_ChatServiceServicer_to_server, self, server)

    async def load(self) -> None:
        self.kb = KnowledgeBase.load(self.settings.knowledge_base)
        await super().load()
        missing = sorted(set(self.intents.labels) - set(self.kb.intents))
        if missing:
            log.warning("intents without an answer in the knowledge base (they go to the FAQ or a person)",
                        extra={"intents": ", ".join(missing)})
        if self.kb.faq:  # FAQ embeddings: at start-up, and again when the embedder version changes
            await self._embed_faq(None)
        log.info("knowledge base loaded", extra={"intents": len(self.kb.intents), "faq": len(self.kb.faq)})

    def _top(self, probs: np.ndarray) -> list[common_pb2.LabelScore]:
        labels = self.intents.labels
        order = np.argsort(-probs)[: self.settings.top_k]
        return [common_pb2.LabelScore(label=labels[i], score=float(probs[i])) for i in order]

    @unary("ClassifyIntent", field="texts")
    async def ClassifyIntent(self, request: chat_pb2.ClassifyIntentRequest, context, timing: Timing):
        check_texts(request.texts, self.settings)
        result = await self.intents.infer(list(request.texts), timing, deadline_of(context))
        labels = self.intents.labels
        predictions = []
        for probs, truncated in zip(result.outputs, result.truncated):
            best = int(np.argmax(probs))
            predictions.append(chat_pb2.IntentPrediction(intent=labels[best], confidence=float(probs[best]),
                                                         top=self._top(probs), truncated=truncated))
        return chat_pb2.ClassifyIntentResponse(predictions=predictions, model=result.model,
                                               timing=timing.proto())

    @unary("Reply", field="message")
    async def Reply(self, request: chat_pb2.ReplyRequest, context, timing: Timing):
        if not request.conversation_id.strip():
            raise InvalidArgument("conversation_id is required")
        if len(request.conversation_id) > self.settings.max_conversation_id_chars:
            raise InvalidArgument(f"conversation_id is longer than {self.settings.max_conversation_id_chars} "
                                  "characters (max_conversation_id_chars)")
        check_text(request.message, self.settings, "message")
        if self.kb is None:
            raise Unavailable("the knowledge base is not loaded")
        s, kb, deadline = self.settings, self.kb, deadline_of(context)
        conv = self.conversations.get(request.conversation_id)
        previous = conv.last
        texts = [request.message]
        if previous is not None:  # a follow-up ("it's gone") may only make sense with the previous message
            texts.append(f"{previous.message} {request.message}")
        result = await self.intents.infer(texts, timing, deadline)
        labels = self.intents.labels
        probs = result.outputs[0]
        if len(texts) > 1 and result.outputs[0].max() < s.intent_threshold <= result.outputs[1].max():
            probs = result.outputs[1]
        best = int(np.argmax(probs))
        intent, confidence = labels[best], float(probs[best])
        reply = chat_pb2.ReplyResponse(intent=intent, confidence=confidence, truncated=result.truncated[0],
                                       model=result.model)
        answer = kb.intents.get(intent)
        if confidence >= s.intent_threshold and answer is not None:
            asked = intent in s.handoff_intents or answer.handoff
            reply.answer = answer.answer
            reply.source = chat_pb2.ANSWER_SOURCE_HANDOFF if asked else chat_pb2.ANSWER_SOURCE_INTENT
            if asked:
                reply.handoff, reply.handoff_reason = True, "customer_asked"
        else:
            faq = await self._faq(request.message, timing, deadline)
            if faq is not None and faq[1] >= s.faq_threshold:
                entry, similarity = faq
                reply.answer, reply.source = entry.answer, chat_pb2.ANSWER_SOURCE_FAQ
                reply.faq_id, reply.faq_similarity = entry.id, similarity
            elif confidence >= s.handoff_threshold and answer is not None and not answer.handoff:
                reply.answer, reply.source = answer.answer, chat_pb2.ANSWER_SOURCE_INTENT
            else:
                reply.answer = "I'm not sure I understood. Let me pass you to one of our advisors."
                reply.source = chat_pb2.ANSWER_SOURCE_HANDOFF
                # A confident intent that the knowledge base has no answer for is not a doubt about the customer.
                unanswered = answer is None and confidence >= s.intent_threshold
                reply.handoff, reply.handoff_reason = True, "no_answer" if unanswered else "low_confidence"
            if faq is not None and not reply.faq_id:
                reply.faq_similarity = faq[1]
        conv.handed_off = conv.handed_off or reply.handoff
        reply.turn = self.conversations.add(conv, Turn(request.message, intent, confidence))
        reply.timing.CopyFrom(timing.proto())
        return reply

    async def _faq(self, message: str, timing: Timing, deadline):
        if self.faq_vectors is None or self.kb is None or not self.kb.faq:
            return None
        result = await self.embedder.infer([message], timing, deadline)
        if result.model.version != self.faq_version:  # the embedder was hot-reloaded since
            await self._embed_faq(deadline)
            result = await self.embedder.infer([message], timing, deadline)
            if result.model.version != self.faq_version:
                return None  # swapped again meanwhile: no FAQ answer this once rather than a wrong one
        sims = self.faq_vectors @ result.outputs[0]
        best = int(np.argmax(sims))
        return self.kb.faq[best], float(sims[best])

    async def _embed_faq(self, deadline) -> None:
        """In chunks of at most half the queue: a knowledge base larger than the queue still loads."""
        assert self.kb is not None
        questions = [e.question for e in self.kb.faq]
        step = max(1, self.settings.batch.queue_capacity // 2)
        parts, versions = [], set()
        for start in range(0, len(questions), step):
            result = await self.embedder.infer(questions[start:start + step], Timing(0.0), deadline)
            parts.append(result.outputs)
            versions.add(result.model.version)
        if len(versions) > 1:
            raise Unavailable("the embedder changed version while the FAQ was embedded; retry")
        self.faq_vectors, self.faq_version = np.concatenate(parts), versions.pop()
