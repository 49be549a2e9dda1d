"""Content-addressed blob store: bytes are stored under their sha256, so writes are idempotent.

`file:///path` (default, under the data directory) on one machine; `s3://bucket/prefix` on
clusters (any S3-compatible store; needs boto3 and the usual AWS_* environment variables).

Large artifacts (model checkpoint archives, GBs for the big configs) do not fit `put`'s
in-memory bytes: `put_file` stores a local file under a caller-chosen key (e.g.
`models/<version>.tar`) and `get_file` streams a blob into a local file (multipart both ways
on S3).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

MAX_BLOB_BYTES = 64 * 1024 * 1024


class BlobStore(Protocol):
    def put(self, data: bytes, suffix: str = "") -> str: ...
    def get(self, uri: str) -> bytes: ...
    def exists(self, uri: str) -> bool: ...
    def put_file(self, path: Path, key: str) -> str: ...
    def get_file(self, uri: str, dest: Path, max_bytes: int) -> int: ...
    def delete(self, uri: str) -> None: ...


class BlobTooLarge(ValueError):
    """A blob is larger than the caller accepts; nothing was written."""


_KEY = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")


def check_key(key: str) -> str:
    """A named key: relative, `/`-separated, no `.`/`..` parts, plain characters only."""
    if not _KEY.fullmatch(key) or any(part in (".", "..") for part in key.split("/")):
        raise ValueError(f"bad blob key {key!r}")
    return key


def content_key(data: bytes, suffix: str = "") -> str:
    digest = hashlib.sha256(data).hexdigest()
    if suffix and not suffix.replace(".", "").isalnum():
        raise ValueError(f"bad blob suffix {suffix!r}")
    return f"sha256/{digest[:2]}/{digest[2:4]}/{digest}{suffix}"


class FileBlobStore:
    """Blobs as files; written atomically (temp file + rename) so readers never see halves."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, uri: str) -> Path:
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            raise ValueError(f"not a file blob URI: {uri}")
        path = Path(parsed.path).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"blob URI outside the store: {uri}")
        return path

    def put(self, data: bytes, suffix: str = "") -> str:
        if len(data) > MAX_BLOB_BYTES:
            raise ValueError(f"blob of {len(data)} bytes exceeds {MAX_BLOB_BYTES}")
        path = self.root / content_key(data, suffix)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        return f"file://{path}"

    def get(self, uri: str) -> bytes:
        return self._path(uri).read_bytes()

    def exists(self, uri: str) -> bool:
        return self._path(uri).exists()

    def delete(self, uri: str) -> None:
        """Remove the blob (a takedown); nothing to do when it is already gone."""
        self._path(uri).unlink(missing_ok=True)

    def put_file(self, path: Path, key: str) -> str:
        """Copy a local file to `key` (replaced atomically if it exists)."""
        target = self.root / check_key(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return f"file://{target}"

    def get_file(self, uri: str, dest: Path, max_bytes: int) -> int:
        """Copy the blob to `dest`; BlobTooLarge (nothing written) past `max_bytes`."""
        src = self._path(uri)
        size = src.stat().st_size
        if size > max_bytes:
            raise BlobTooLarge(f"{uri} is {size} bytes; limit {max_bytes}")
        shutil.copyfile(src, dest)
        return size


class S3BlobStore:
    """Blobs in an S3-compatible bucket (endpoint from AWS_ENDPOINT_URL when set)."""

    def __init__(self, uri: str) -> None:
        try:  # optional: only an s3:// store needs it
            import boto3
        except ImportError as exc:
            raise RuntimeError("s3:// blob store needs boto3 (pip install boto3)") from exc
        parsed = urlparse(uri)
        self.bucket, self.prefix = parsed.netloc, parsed.path.strip("/")
        self.client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))

    def _key(self, uri: str) -> str:
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or parsed.netloc != self.bucket:
            raise ValueError(f"not a blob of s3://{self.bucket}: {uri}")
        return parsed.path.lstrip("/")

    def put(self, data: bytes, suffix: str = "") -> str:
        key = "/".join(p for p in (self.prefix, content_key(data, suffix)) if p)
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        return f"s3://{self.bucket}/{key}"

    def get(self, uri: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self._key(uri))["Body"].read()

    def exists(self, uri: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(uri))
        except Exception:
            return False
        return True

    def delete(self, uri: str) -> None:
        """Remove the blob (a takedown); S3 answers a missing key with success too."""
        self.client.delete_object(Bucket=self.bucket, Key=self._key(uri))

    def put_file(self, path: Path, key: str) -> str:
        """Upload a local file to `<prefix>/<key>` (multipart when large; replaces `key`)."""
        full = "/".join(p for p in (self.prefix, check_key(key)) if p)
        self.client.upload_file(str(path), self.bucket, full)
        return f"s3://{self.bucket}/{full}"

    def get_file(self, uri: str, dest: Path, max_bytes: int) -> int:
        """Download to `dest` (streamed); BlobTooLarge before any byte moves past `max_bytes`."""
        key = self._key(uri)
        size = int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        if size > max_bytes:
            raise BlobTooLarge(f"{uri} is {size} bytes; limit {max_bytes}")
        self.client.download_file(self.bucket, key, str(dest))
        got = Path(dest).stat().st_size
        if got != size:  # the object changed between HEAD and GET
            raise OSError(f"{uri}: downloaded {got} bytes, expected {size}")
        return size


def open_blobstore(uri: str) -> BlobStore:
    scheme = urlparse(uri).scheme
    if scheme == "file":
        return FileBlobStore(Path(urlparse(uri).path))
    if scheme == "s3":
        return S3BlobStore(uri)
    raise ValueError(f"unsupported blob store URI {uri!r} (file:// or s3://)")
