"""URL normalisation: one page, one row, however the producer spelled its URL."""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit, urlunsplit

from runtime.limits import MAX_URL_BYTES, MAX_URL_CHARS


class BadUrl(ValueError):
    pass


def normalise(url: str) -> str:
    """Lower-case scheme and host, drop the fragment and default ports; http(s) only."""
    url = (url or "").strip()
    if not url:
        raise BadUrl("empty URL")
    if len(url) > MAX_URL_CHARS:
        raise BadUrl(f"URL longer than {MAX_URL_CHARS} characters")
    if len(url.encode("utf-8", errors="surrogatepass")) > MAX_URL_BYTES:
        raise BadUrl(f"URL longer than {MAX_URL_BYTES} bytes in UTF-8")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadUrl(f"malformed URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise BadUrl(f"scheme '{scheme}' not allowed")
    host = (parts.hostname or "").lower()
    if not host:
        raise BadUrl("URL has no host")
    if ":" in host:
        host = f"[{host}]"
    if port and port != {"http": 80, "https": 443}[scheme]:
        host = f"{host}:{port}"
    return urlunsplit((scheme, host, parts.path or "/", parts.query, ""))


def url_hash(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def domain(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def display(url: str) -> str:
    """What we store as a source URL: data: URIs are summarised, not copied."""
    if url.startswith("data:"):
        head = url.split(",", 1)[0]
        return f"{head[:60]},…({len(url)} chars)"
    return truncate_utf8(url, MAX_URL_BYTES)


def truncate_utf8(text: str, max_bytes: int) -> str:
    """`text` cut to at most `max_bytes` of UTF-8, never inside a character."""
    data = text.encode("utf-8", errors="replace")
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", errors="ignore")
