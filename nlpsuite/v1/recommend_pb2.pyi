from nlpsuite.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HistoryItem(_message.Message):
    __slots__ = ("text", "rating")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    text: str
    rating: float
    def __init__(self, text: _Optional[str] = ..., rating: _Optional[float] = ...) -> None: ...

class User(_message.Message):
    __slots__ = ("id", "history", "profile")
    ID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    id: str
    history: _containers.RepeatedCompositeFieldContainer[HistoryItem]
    profile: str
    def __init__(self, id: _Optional[str] = ..., history: _Optional[_Iterable[_Union[HistoryItem, _Mapping]]] = ..., profile: _Optional[str] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("id", "text", "features")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    features: _containers.ScalarMap[str, float]
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., features: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ScoredItem(_message.Message):
    __slots__ = ("id", "score", "text_match", "cached")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TEXT_MATCH_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    text_match: float
    cached: bool
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., text_match: _Optional[float] = ..., cached: _Optional[bool] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("user", "candidates")
    USER_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    user: User
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    def __init__(self, user: _Optional[_Union[User, _Mapping]] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("items", "model", "timing")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    model: _common_pb2.ModelInfo
    timing: _common_pb2.Timing
    def __init__(self, items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., model: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ..., timing: _Optional[_Union[_common_pb2.Timing, _Mapping]] = ...) -> None: ...

class RankRequest(_message.Message):
    __slots__ = ("user", "candidates", "k")
    USER_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    user: User
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    k: int
    def __init__(self, user: _Optional[_Union[User, _Mapping]] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., k: _Optional[int] = ...) -> None: ...

class RankResponse(_message.Message):
    __slots__ = ("items", "model", "timing")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    model: _common_pb2.ModelInfo
    timing: _common_pb2.Timing
    def __init__(self, items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., model: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ..., timing: _Optional[_Union[_common_pb2.Timing, _Mapping]] = ...) -> None: ...
