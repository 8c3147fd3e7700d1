"""A small client for ChatService: `ChatClient("localhost:50052").reply("conv-1", "I lost my card")`."""
from __future__ import annotations

from nlpsuite.shared.client import ServiceClient
from nlpsuite.v1 import chat_pb2, chat_pb2_grpc


class ChatClient(ServiceClient):
    stub_class = chat_pb2_grpc.ChatServiceStub

    def reply(self, conversation_id: str, message: str, timeout: float | None = None) -> chat_pb2.ReplyResponse:
        return self.stub.Reply(chat_pb2.ReplyRequest(conversation_id=conversation_id, message=message),
                               timeout=timeout or self.timeout)

    def classify_intent(self, texts: list[str], timeout: float | None = None) -> chat_pb2.ClassifyIntentResponse:
        return self.stub.ClassifyIntent(chat_pb2.ClassifyIntentRequest(texts=texts), timeout=timeout or self.timeout)

