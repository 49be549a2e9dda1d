from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class SubmitPagesRequest(_message.Message):
    __slots__ = ("urls", "sitemap_url", "warc_gz", "source", "heldout_urls")
    URLS_FIELD_NUMBER: _ClassVar[int]
    SITEMAP_URL_FIELD_NUMBER: _ClassVar[int]
    WARC_GZ_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    HELDOUT_URLS_FIELD_NUMBER: _ClassVar[int]
    urls: _containers.RepeatedScalarFieldContainer[str]
    sitemap_url: str
    warc_gz: bytes
    source: str
    heldout_urls: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, urls: _Optional[_Iterable[str]] = ..., sitemap_url: _Optional[str] = ..., warc_gz: _Optional[bytes] = ..., source: _Optional[str] = ..., heldout_urls: _Optional[_Iterable[str]] = ...) -> None: ...

class SubmitPagesResponse(_message.Message):
    __slots__ = ("accepted", "rejected")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    rejected: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, accepted: _Optional[int] = ..., rejected: _Optional[_Iterable[str]] = ...) -> None: ...

class GetPageStatusRequest(_message.Message):
    __slots__ = ("url",)
    URL_FIELD_NUMBER: _ClassVar[int]
    url: str
    def __init__(self, url: _Optional[str] = ...) -> None: ...

class PageStatus(_message.Message):
    __slots__ = ("url", "status", "reason", "images", "rejected_images", "pairs")
    URL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_IMAGES_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    url: str
    status: str
    reason: str
    images: int
    rejected_images: int
    pairs: int
    def __init__(self, url: _Optional[str] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ..., images: _Optional[int] = ..., rejected_images: _Optional[int] = ..., pairs: _Optional[int] = ...) -> None: ...

class GetMiningStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MiningStatus(_message.Message):
    __slots__ = ("pages_by_status", "images_by_status", "pairs", "rejected_images")
    class PagesByStatusEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class ImagesByStatusEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    PAGES_BY_STATUS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_BY_STATUS_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_IMAGES_FIELD_NUMBER: _ClassVar[int]
    pages_by_status: _containers.ScalarMap[str, int]
    images_by_status: _containers.ScalarMap[str, int]
    pairs: int
    rejected_images: int
    def __init__(self, pages_by_status: _Optional[_Mapping[str, int]] = ..., images_by_status: _Optional[_Mapping[str, int]] = ..., pairs: _Optional[int] = ..., rejected_images: _Optional[int] = ...) -> None: ...

class DeleteContentRequest(_message.Message):
    __slots__ = ("image_id", "page_url", "domain", "reason")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_URL_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    image_id: int
    page_url: str
    domain: str
    reason: str
    def __init__(self, image_id: _Optional[int] = ..., page_url: _Optional[str] = ..., domain: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DeleteContentResponse(_message.Message):
    __slots__ = ("images_deleted", "pages_deleted", "image_ids")
    IMAGES_DELETED_FIELD_NUMBER: _ClassVar[int]
    PAGES_DELETED_FIELD_NUMBER: _ClassVar[int]
    IMAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    images_deleted: int
    pages_deleted: int
    image_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, images_deleted: _Optional[int] = ..., pages_deleted: _Optional[int] = ..., image_ids: _Optional[_Iterable[int]] = ...) -> None: ...
