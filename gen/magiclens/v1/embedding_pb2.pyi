from magiclens.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EmbedQueryRequest(_message.Message):
    __slots__ = ("image", "instruction")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.ImageInput
    instruction: str
    def __init__(self, image: _Optional[_Union[_common_pb2.ImageInput, _Mapping]] = ..., instruction: _Optional[str] = ...) -> None: ...

class EmbedTargetRequest(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.ImageInput
    def __init__(self, image: _Optional[_Union[_common_pb2.ImageInput, _Mapping]] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("vector", "model_version")
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    vector: _containers.RepeatedScalarFieldContainer[float]
    model_version: str
    def __init__(self, vector: _Optional[_Iterable[float]] = ..., model_version: _Optional[str] = ...) -> None: ...
