from magiclens.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SearchFilters(_message.Message):
    __slots__ = ("source", "page_domain")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PAGE_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    source: str
    page_domain: str
    def __init__(self, source: _Optional[str] = ..., page_domain: _Optional[str] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("query", "instruction", "k", "filters", "include_query_image")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_QUERY_IMAGE_FIELD_NUMBER: _ClassVar[int]
    query: _common_pb2.ImageInput
    instruction: str
    k: int
    filters: SearchFilters
    include_query_image: bool
    def __init__(self, query: _Optional[_Union[_common_pb2.ImageInput, _Mapping]] = ..., instruction: _Optional[str] = ..., k: _Optional[int] = ..., filters: _Optional[_Union[SearchFilters, _Mapping]] = ..., include_query_image: _Optional[bool] = ...) -> None: ...

class SearchHit(_message.Message):
    __slots__ = ("image_id", "image_url", "score", "context")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_URL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    image_id: int
    image_url: str
    score: float
    context: _common_pb2.ImageContext
    def __init__(self, image_id: _Optional[int] = ..., image_url: _Optional[str] = ..., score: _Optional[float] = ..., context: _Optional[_Union[_common_pb2.ImageContext, _Mapping]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "model_version", "partial", "missing_shards")
    HITS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    MISSING_SHARDS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    model_version: str
    partial: bool
    missing_shards: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ..., model_version: _Optional[str] = ..., partial: _Optional[bool] = ..., missing_shards: _Optional[_Iterable[int]] = ...) -> None: ...

class GetIndexStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class IndexStatus(_message.Message):
    __slots__ = ("model_version", "num_vectors", "shards", "shards_up", "freshness_p50_s")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_VECTORS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_UP_FIELD_NUMBER: _ClassVar[int]
    FRESHNESS_P50_S_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    num_vectors: int
    shards: int
    shards_up: int
    freshness_p50_s: float
    def __init__(self, model_version: _Optional[str] = ..., num_vectors: _Optional[int] = ..., shards: _Optional[int] = ..., shards_up: _Optional[int] = ..., freshness_p50_s: _Optional[float] = ...) -> None: ...

class SearchShardRequest(_message.Message):
    __slots__ = ("query", "k", "filters", "exclude_image_ids")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_IMAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    query: _containers.RepeatedScalarFieldContainer[float]
    k: int
    filters: SearchFilters
    exclude_image_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, query: _Optional[_Iterable[float]] = ..., k: _Optional[int] = ..., filters: _Optional[_Union[SearchFilters, _Mapping]] = ..., exclude_image_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class ShardHit(_message.Message):
    __slots__ = ("image_id", "score")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    image_id: int
    score: float
    def __init__(self, image_id: _Optional[int] = ..., score: _Optional[float] = ...) -> None: ...

class SearchShardResponse(_message.Message):
    __slots__ = ("hits", "model_version")
    HITS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[ShardHit]
    model_version: str
    def __init__(self, hits: _Optional[_Iterable[_Union[ShardHit, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...

class GetShardStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ShardStatus(_message.Message):
    __slots__ = ("shard", "model_version", "num_vectors", "next_model_version")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_VECTORS_FIELD_NUMBER: _ClassVar[int]
    NEXT_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    shard: int
    model_version: str
    num_vectors: int
    next_model_version: str
    def __init__(self, shard: _Optional[int] = ..., model_version: _Optional[str] = ..., num_vectors: _Optional[int] = ..., next_model_version: _Optional[str] = ...) -> None: ...
