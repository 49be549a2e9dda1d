import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PageDiscovered(_message.Message):
    __slots__ = ("url", "html", "source", "split", "discovered_at")
    URL_FIELD_NUMBER: _ClassVar[int]
    HTML_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    DISCOVERED_AT_FIELD_NUMBER: _ClassVar[int]
    url: str
    html: str
    source: str
    split: str
    discovered_at: _timestamp_pb2.Timestamp
    def __init__(self, url: _Optional[str] = ..., html: _Optional[str] = ..., source: _Optional[str] = ..., split: _Optional[str] = ..., discovered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ImageMined(_message.Message):
    __slots__ = ("image_id", "page_id", "blob_uri", "content_hash", "width", "height", "page_discovered_at")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_ID_FIELD_NUMBER: _ClassVar[int]
    BLOB_URI_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    PAGE_DISCOVERED_AT_FIELD_NUMBER: _ClassVar[int]
    image_id: int
    page_id: int
    blob_uri: str
    content_hash: str
    width: int
    height: int
    page_discovered_at: _timestamp_pb2.Timestamp
    def __init__(self, image_id: _Optional[int] = ..., page_id: _Optional[int] = ..., blob_uri: _Optional[str] = ..., content_hash: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., page_discovered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PairsMined(_message.Message):
    __slots__ = ("page_id", "pair_ids")
    PAGE_ID_FIELD_NUMBER: _ClassVar[int]
    PAIR_IDS_FIELD_NUMBER: _ClassVar[int]
    page_id: int
    pair_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, page_id: _Optional[int] = ..., pair_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class TripleCreated(_message.Message):
    __slots__ = ("triple_id", "pair_id", "writer", "writer_version")
    TRIPLE_ID_FIELD_NUMBER: _ClassVar[int]
    PAIR_ID_FIELD_NUMBER: _ClassVar[int]
    WRITER_FIELD_NUMBER: _ClassVar[int]
    WRITER_VERSION_FIELD_NUMBER: _ClassVar[int]
    triple_id: int
    pair_id: int
    writer: str
    writer_version: str
    def __init__(self, triple_id: _Optional[int] = ..., pair_id: _Optional[int] = ..., writer: _Optional[str] = ..., writer_version: _Optional[str] = ...) -> None: ...

class ModelPublished(_message.Message):
    __slots__ = ("model_version", "config_name", "checkpoint_uri", "embed_dim", "promoted")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_NAME_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_URI_FIELD_NUMBER: _ClassVar[int]
    EMBED_DIM_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    config_name: str
    checkpoint_uri: str
    embed_dim: int
    promoted: bool
    def __init__(self, model_version: _Optional[str] = ..., config_name: _Optional[str] = ..., checkpoint_uri: _Optional[str] = ..., embed_dim: _Optional[int] = ..., promoted: _Optional[bool] = ...) -> None: ...

class ImageDeleted(_message.Message):
    __slots__ = ("image_id", "reason")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    image_id: int
    reason: str
    def __init__(self, image_id: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class EmbeddingReady(_message.Message):
    __slots__ = ("image_id", "model_version", "page_discovered_at")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PAGE_DISCOVERED_AT_FIELD_NUMBER: _ClassVar[int]
    image_id: int
    model_version: str
    page_discovered_at: _timestamp_pb2.Timestamp
    def __init__(self, image_id: _Optional[int] = ..., model_version: _Optional[str] = ..., page_discovered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
