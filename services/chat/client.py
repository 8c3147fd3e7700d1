"""A small client for ChatService: `ChatClient("localhost:50052").reply("conv-1", "I lost my card")`."""
from __future__ import annotations

import grpc

from nlpsuite.v1 import chat_pb2, chat_pb2_grpc


class ChatClient:
    def __init__(self, target: str, timeout: float | None = 30.0, channel: grpc.Channel | None = None) -> None:
        self._own = channel is None
        self.channel = channel or grpc.insecure_channel(target)
        self.stub = chat_pb2_grpc.ChatServiceStub(self.channel)
        self.timeout = timeout

    def reply(self, conversation_id: str, message: str, timeout: float | None = None) -> chat_pb2.ReplyResponse:
        return self.stub.Reply(chat_pb2.ReplyRequest(conversation_id=conversation_id, message=message),
                               timeout=timeout or self.timeout)

    def classify_intent(self, texts: list[str], timeout: float | None = None) -> chat_pb2.ClassifyIntentResponse:
        return self.stub.ClassifyIntent(chat_pb2.ClassifyIntentRequest(texts=texts), timeout=timeout or self.timeout)

    def close(self) -> None:
        if self._own:
            self.channel.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
