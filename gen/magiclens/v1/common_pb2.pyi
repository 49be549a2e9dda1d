from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ImageInput(_message.Message):
    __slots__ = ("image_bytes", "image_url", "image_id")
    IMAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_URL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    image_bytes: bytes
    image_url: str
    image_id: int
    def __init__(self, image_bytes: _Optional[bytes] = ..., image_url: _Optional[str] = ..., image_id: _Optional[int] = ...) -> None: ...

class ImageContext(_message.Message):
    __slots__ = ("page_url", "page_title", "alt_text", "caption", "context_text")
    PAGE_URL_FIELD_NUMBER: _ClassVar[int]
    PAGE_TITLE_FIELD_NUMBER: _ClassVar[int]
    ALT_TEXT_FIELD_NUMBER: _ClassVar[int]
    CAPTION_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_TEXT_FIELD_NUMBER: _ClassVar[int]
    page_url: str
    page_title: str
    alt_text: str
    caption: str
    context_text: str
    def __init__(self, page_url: _Optional[str] = ..., page_title: _Optional[str] = ..., alt_text: _Optional[str] = ..., caption: _Optional[str] = ..., context_text: _Optional[str] = ...) -> None: ...
