from nlpsuite.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AnswerSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ANSWER_SOURCE_UNSPECIFIED: _ClassVar[AnswerSource]
    ANSWER_SOURCE_INTENT: _ClassVar[AnswerSource]
    ANSWER_SOURCE_FAQ: _ClassVar[AnswerSource]
    ANSWER_SOURCE_HANDOFF: _ClassVar[AnswerSource]
    ANSWER_SOURCE_DOCUMENT: _ClassVar[AnswerSource]
ANSWER_SOURCE_UNSPECIFIED: AnswerSource
ANSWER_SOURCE_INTENT: AnswerSource
ANSWER_SOURCE_FAQ: AnswerSource
ANSWER_SOURCE_HANDOFF: AnswerSource
ANSWER_SOURCE_DOCUMENT: AnswerSource

class ReplyRequest(_message.Message):
    __slots__ = ("conversation_id", "message")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    message: str
    def __init__(self, conversation_id: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ReplyResponse(_message.Message):
    __slots__ = ("intent", "confidence", "answer", "source", "faq_id", "faq_similarity", "handoff", "handoff_reason", "turn", "truncated", "model", "timing", "source_id", "retrieval_confidence")
    INTENT_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    FAQ_ID_FIELD_NUMBER: _ClassVar[int]
    FAQ_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_REASON_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    intent: str
    confidence: float
    answer: str
    source: AnswerSource
    faq_id: str
    faq_similarity: float
    handoff: bool
    handoff_reason: str
    turn: int
    truncated: bool
    model: _common_pb2.ModelInfo
    timing: _common_pb2.Timing
    source_id: str
    retrieval_confidence: float
    def __init__(self, intent: _Optional[str] = ..., confidence: _Optional[float] = ..., answer: _Optional[str] = ..., source: _Optional[_Union[AnswerSource, str]] = ..., faq_id: _Optional[str] = ..., faq_similarity: _Optional[float] = ..., handoff: _Optional[bool] = ..., handoff_reason: _Optional[str] = ..., turn: _Optional[int] = ..., truncated: _Optional[bool] = ..., model: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ..., timing: _Optional[_Union[_common_pb2.Timing, _Mapping]] = ..., source_id: _Optional[str] = ..., retrieval_confidence: _Optional[float] = ...) -> None: ...

class ClassifyIntentRequest(_message.Message):
    __slots__ = ("texts",)
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, texts: _Optional[_Iterable[str]] = ...) -> None: ...

class IntentPrediction(_message.Message):
    __slots__ = ("intent", "confidence", "top", "truncated")
    INTENT_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    intent: str
    confidence: float
    top: _containers.RepeatedCompositeFieldContainer[_common_pb2.LabelScore]
    truncated: bool
    def __init__(self, intent: _Optional[str] = ..., confidence: _Optional[float] = ..., top: _Optional[_Iterable[_Union[_common_pb2.LabelScore, _Mapping]]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class ClassifyIntentResponse(_message.Message):
    __slots__ = ("predictions", "model", "timing")
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[IntentPrediction]
    model: _common_pb2.ModelInfo
    timing: _common_pb2.Timing
    def __init__(self, predictions: _Optional[_Iterable[_Union[IntentPrediction, _Mapping]]] = ..., model: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ..., timing: _Optional[_Union[_common_pb2.Timing, _Mapping]] = ...) -> None: ...
