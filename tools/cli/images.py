"""Turn what a user typed for `--image` (a file, a URL or a pool id) into the client's
ImageRef (bytes, an int id or a URL), with messages that name the flag."""

from __future__ import annotations

from pathlib import Path

from runtime.limits import MAX_QUERY_IMAGE_BYTES, MAX_URL_CHARS
from runtime.search_client import parse_image_id
from tools.cli.errors import UsageError


def image_ref(spec: str, max_bytes: int = MAX_QUERY_IMAGE_BYTES) -> bytes | int | str:
    """PATH → its bytes, http(s) URL → the URL, digits (not an existing file) → a pool id."""
    spec = spec.strip()
    if not spec:
        raise UsageError("--image is empty (give a file, an http(s) URL or a pool image id)")
    if spec.startswith(("http://", "https://")):
        if len(spec) > MAX_URL_CHARS:
            raise UsageError(f"--image URL is longer than {MAX_URL_CHARS} characters")
        return spec
    path = Path(spec).expanduser()
    if path.is_file():
        size = path.stat().st_size
        if size > max_bytes:
            raise UsageError(f"{spec}: {size} bytes is over the {max_bytes} byte limit "
                             "for a query image")
        if size == 0:
            raise UsageError(f"{spec}: the file is empty")
        try:
            return path.read_bytes()
        except OSError as exc:
            raise UsageError(f"{spec}: cannot read ({exc.strerror})") from None
    image_id = parse_image_id(spec)
    if image_id is not None:
        return image_id
    if path.exists():
        raise UsageError(f"{spec}: not a regular file")
    raise UsageError(f"{spec}: no such file (give a file, an http(s) URL or a pool image id)")
