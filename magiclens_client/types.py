"""What the client returns: frozen dataclasses, not protobuf messages, so a caller needs no
knowledge of the wire format (and `to_dict()` gives the CLI's and the JSON API's shape)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from magiclens.v1 import mining_pb2, search_pb2


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One ranked pool image and where it was found."""

    image_id: int
    image_url: str
    score: float
    page_url: str
    page_title: str
    alt_text: str
    caption: str

    @classmethod
    def from_proto(cls, h: search_pb2.SearchHit) -> SearchHit:
        c = h.context
        return cls(image_id=h.image_id, image_url=h.image_url, score=round(h.score, 6),
                   page_url=c.page_url, page_title=c.page_title, alt_text=c.alt_text,
                   caption=c.caption)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class SearchResult:
    """The hits, best first; `partial` when some shards did not answer (`missing_shards`)."""

    model_version: str
    partial: bool
    missing_shards: tuple[int, ...]
    hits: tuple[SearchHit, ...]

    @classmethod
    def from_proto(cls, r: search_pb2.SearchResponse) -> SearchResult:
        return cls(model_version=r.model_version, partial=r.partial,
                   missing_shards=tuple(r.missing_shards),
                   hits=tuple(SearchHit.from_proto(h) for h in r.hits))

    def to_dict(self) -> dict[str, Any]:
        return {"model_version": self.model_version, "partial": self.partial,
                "missing_shards": list(self.missing_shards),
                "hits": [h.to_dict() for h in self.hits]}


@dataclass(frozen=True, slots=True)
class IndexStatus:
    """What the search root serves: the model version, vectors, shards up, freshness."""

    model_version: str
    num_vectors: int
    shards: int
    shards_up: int
    freshness_p50_s: float

    @classmethod
    def from_proto(cls, s: search_pb2.IndexStatus) -> IndexStatus:
        return cls(model_version=s.model_version, num_vectors=s.num_vectors, shards=s.shards,
                   shards_up=s.shards_up, freshness_p50_s=s.freshness_p50_s)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class DeleteResult:
    """What a takedown removed now (zero when it was already down or nothing matched)."""

    images_deleted: int
    pages_deleted: int
    image_ids: tuple[int, ...]

    @classmethod
    def from_proto(cls, r: mining_pb2.DeleteContentResponse) -> DeleteResult:
        return cls(images_deleted=r.images_deleted, pages_deleted=r.pages_deleted,
                   image_ids=tuple(r.image_ids))

    def to_dict(self) -> dict[str, Any]:
        return {"images_deleted": self.images_deleted, "pages_deleted": self.pages_deleted,
                "image_ids": list(self.image_ids)}
