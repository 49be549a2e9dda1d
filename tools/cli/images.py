"""Turn what a user typed for `--image` (a file, a URL or a pool id) into an ImageInput."""

from __future__ import annotations

from pathlib import Path

from magiclens.v1 import common_pb2

from runtime.limits import MAX_QUERY_IMAGE_BYTES, MAX_URL_CHARS
from runtime.search_client import parse_image_id
from tools.cli.errors import UsageError


def image_input(spec: str, max_bytes: int = MAX_QUERY_IMAGE_BYTES) -> common_pb2.ImageInput:
    """PATH → bytes, http(s) URL → image_url, digits (not an existing file) → image_id."""
    spec = spec.strip()
    if not spec:
        raise UsageError("--image is empty (give a file, an http(s) URL or a pool image id)")
    if spec.startswith(("http://", "https://")):
        if len(spec) > MAX_URL_CHARS:
            raise UsageError(f"--image URL is longer than {MAX_URL_CHARS} characters")
        return common_pb2.ImageInput(image_url=spec)
    path = Path(spec).expanduser()
    if path.is_file():
        size = path.stat().st_size
        if size > max_bytes:
            raise UsageError(f"{spec}: {size} bytes is over the {max_bytes} byte limit "
                             "for a query image")
        if size == 0:
            raise UsageError(f"{spec}: the file is empty")
        try:
            return common_pb2.ImageInput(image_bytes=path.read_bytes())
        except OSError as exc:
            raise UsageError(f"{spec}: cannot read ({exc.strerror})") from None
    image_id = parse_image_id(spec)
    if image_id is not None:
        return common_pb2.ImageInput(image_id=image_id)
    if path.exists():
        raise UsageError(f"{spec}: not a regular file")
    raise UsageError(f"{spec}: no such file (give a file, an http(s) URL or a pool image id)")
