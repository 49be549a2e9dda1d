"""The MagicLens Python client: search a MagicLens deployment by image + instruction.

    from magiclens_client import MagicLensClient

    with MagicLensClient("search.example.org:50055", token="...") as ml:
        result = ml.search(image="query.jpg", instruction="as a pencil sketch", k=5)
        for hit in result.hits:
            print(hit.score, hit.image_url, hit.page_title)

Results are frozen dataclasses (`SearchResult`, `SearchHit`, `IndexStatus`, `DeleteResult`);
a failed call raises a `MagicLensError` subclass named after what went wrong (`InvalidRequest`,
`NotFound`, `Unauthenticated`, `PermissionDenied`, `Unavailable`, `DeadlineExceeded`, ...),
whose `code` is the gRPC status name. The `magiclens` command line uses this client.
"""

from magiclens_client.client import ImageRef, MagicLensClient
from magiclens_client.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidRequest,
    MagicLensError,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServiceFailed,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from magiclens_client.types import DeleteResult, IndexStatus, SearchHit, SearchResult

__all__ = [
    "DeadlineExceeded",
    "DeleteResult",
    "FailedPrecondition",
    "ImageRef",
    "IndexStatus",
    "InvalidRequest",
    "MagicLensClient",
    "MagicLensError",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "SearchHit",
    "SearchResult",
    "ServiceFailed",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
]
