from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class GetTripleRequest(_message.Message):
    __slots__ = ("triple_id",)
    TRIPLE_ID_FIELD_NUMBER: _ClassVar[int]
    triple_id: int
    def __init__(self, triple_id: _Optional[int] = ...) -> None: ...

class Triple(_message.Message):
    __slots__ = ("triple_id", "pair_id", "query_image_id", "target_image_id", "instruction", "writer", "writer_version", "relation", "scores")
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TRIPLE_ID_FIELD_NUMBER: _ClassVar[int]
    PAIR_ID_FIELD_NUMBER: _ClassVar[int]
    QUERY_IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    WRITER_FIELD_NUMBER: _ClassVar[int]
    WRITER_VERSION_FIELD_NUMBER: _ClassVar[int]
    RELATION_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    triple_id: int
    pair_id: int
    query_image_id: int
    target_image_id: int
    instruction: str
    writer: str
    writer_version: str
    relation: str
    scores: _containers.ScalarMap[str, float]
    def __init__(self, triple_id: _Optional[int] = ..., pair_id: _Optional[int] = ..., query_image_id: _Optional[int] = ..., target_image_id: _Optional[int] = ..., instruction: _Optional[str] = ..., writer: _Optional[str] = ..., writer_version: _Optional[str] = ..., relation: _Optional[str] = ..., scores: _Optional[_Mapping[str, float]] = ...) -> None: ...

class RegenerateTriplesRequest(_message.Message):
    __slots__ = ("page_url", "writer_version", "writer")
    PAGE_URL_FIELD_NUMBER: _ClassVar[int]
    WRITER_VERSION_FIELD_NUMBER: _ClassVar[int]
    WRITER_FIELD_NUMBER: _ClassVar[int]
    page_url: str
    writer_version: str
    writer: str
    def __init__(self, page_url: _Optional[str] = ..., writer_version: _Optional[str] = ..., writer: _Optional[str] = ...) -> None: ...

class RegenerateTriplesResponse(_message.Message):
    __slots__ = ("pairs_queued",)
    PAIRS_QUEUED_FIELD_NUMBER: _ClassVar[int]
    pairs_queued: int
    def __init__(self, pairs_queued: _Optional[int] = ...) -> None: ...

class GetTripleStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TripleStats(_message.Message):
    __slots__ = ("triples", "pairs_kept", "pairs_dropped", "dropped_by_reason", "keep_rate")
    class DroppedByReasonEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TRIPLES_FIELD_NUMBER: _ClassVar[int]
    PAIRS_KEPT_FIELD_NUMBER: _ClassVar[int]
    PAIRS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_BY_REASON_FIELD_NUMBER: _ClassVar[int]
    KEEP_RATE_FIELD_NUMBER: _ClassVar[int]
    triples: int
    pairs_kept: int
    pairs_dropped: int
    dropped_by_reason: _containers.ScalarMap[str, int]
    keep_rate: float
    def __init__(self, triples: _Optional[int] = ..., pairs_kept: _Optional[int] = ..., pairs_dropped: _Optional[int] = ..., dropped_by_reason: _Optional[_Mapping[str, int]] = ..., keep_rate: _Optional[float] = ...) -> None: ...
