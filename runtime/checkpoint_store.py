"""Exported model checkpoints from the pod that trains to the pods that serve.

An exported checkpoint is a directory (trainer.checkpoints: Orbax `params/` + the JSON meta).
On one machine (a `file://` blob store: dev, demo, tests) it is published as that directory's
`file://` URI, as always. In a cluster the training pod's disk is its own, so with any other
blob store (`s3://`) training publishes the directory as one deterministic tar archive under
the versioned key `models/<model_version>.tar`, uploaded *before* the model_versions row and
its ModelPublished event commit (so no event names a missing blob), and the serving side
fetches it into a local cache directory:

- `publish(blobs, directory, model_version)` -> the checkpoint_uri to record.
- `fetch(uri, cache_dir, blobs)` -> a local directory holding that checkpoint: a `file://`
  URI's own path; otherwise `<cache_dir>/<name>-<hash of the uri>`, downloaded and unpacked
  once (later calls find it and touch nothing remote), the older entries pruned. A store
  that cannot be reached raises UnavailableError (consumers wait and retry); an archive that
  is too large, malformed or unsafe raises ArchiveRefused (never servable as it is).

The archive is untrusted input on the serving side (anyone who can write the bucket can write
it): `unpack` accepts only regular files and directories with plain relative names (no
absolute paths, no `.`/`..` parts, no links, devices or FIFOs), within member-count and size
limits, writes every file itself (exclusive create, never through a link), unpacks into a
temporary directory and renames it into place only when complete. Nothing is unpickled: the
checkpoint is Orbax/tensorstore data and JSON.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

from runtime.blobstore import BlobStore, FileBlobStore, check_key
from runtime.errors import UnavailableError

META_FILE = "magiclens_meta.json"  # trainer.checkpoints.META_FILE (importing it loads JAX)
ARCHIVE_PREFIX = "models"
ARCHIVE_SUFFIX = ".tar"
# Limits for archives read back: the large config is ~1.9 GB of float32 params in a few dozen
# files; the embedding pod's data volume (deploy/catalog.py) holds a few versions of that.
MAX_ARCHIVE_BYTES = 8 << 30
MAX_UNPACKED_BYTES = 8 << 30
MAX_MEMBERS = 10_000
KEEP_CACHED = 3  # the serving version, the previous one (blue/green) and one spare
STALE_FETCH_S = 3600.0  # a `.fetch-*` work dir untouched this long was left by a crash
_CHUNK = 1 << 20


class ArchiveRefused(ValueError):
    """The archive is not a plain checkpoint archive within the limits; nothing was kept."""


# ---------------------------------------------------------------------------------- pack

def pack(directory: Path, out: Path) -> None:
    """Write `directory` as an uncompressed tar whose bytes depend only on the file tree:
    sorted names, mtime 0, owner 0:0 without names, modes 0755/0644 (params are float data,
    gzip would buy little and cost minutes on the big configs). Refuses links and special
    files, which a checkpoint never holds."""
    directory = Path(directory)
    names: list[str] = []
    for root, dirs, files in os.walk(directory, followlinks=False):
        rel = Path(root).relative_to(directory)
        names += [(rel / n).as_posix() for n in dirs + files]
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for name in sorted(names):
            path = directory / name
            st = path.lstat()
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if stat.S_ISDIR(st.st_mode):
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                info.size, info.mode = st.st_size, 0o644
                with path.open("rb") as f:
                    tf.addfile(info, f)
            else:
                raise ValueError(f"{path}: not a regular file or directory; not packing it")


def publish(blobs: BlobStore, directory: Path, model_version: str) -> str:
    """The checkpoint_uri under which other processes find the exported `directory`.

    A file:// store means one machine: the directory's own file:// URI (as before). Any other
    store: the archive at `models/<model_version>.tar`, uploaded before this returns (packed
    beside the directory, on the same volume: /tmp in a pod is small)."""
    directory = Path(directory).absolute()
    if isinstance(blobs, FileBlobStore):
        return directory.as_uri()
    key = check_key(f"{ARCHIVE_PREFIX}/{model_version}{ARCHIVE_SUFFIX}")
    archive = directory.with_name(f".{directory.name}{ARCHIVE_SUFFIX}.tmp")
    try:
        pack(directory, archive)
        return blobs.put_file(archive, key)
    finally:
        archive.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------- unpack

def _member_path(name: str) -> str:
    """A member name as a safe relative path, or ArchiveRefused."""
    parts = name.split("/")
    if (not name or name.startswith("/") or "\\" in name or "\x00" in name
            or any(p in ("", ".", "..") for p in parts)):
        raise ArchiveRefused(f"member {name!r}: not a plain relative path")
    return name


def _kind(m: tarfile.TarInfo) -> str:
    for test, kind in ((m.issym, "symbolic link"), (m.islnk, "hard link"),
                       (m.ischr, "character device"), (m.isblk, "block device"),
                       (m.isfifo, "FIFO")):
        if test():
            return kind
    return f"type {m.type!r}"


def unpack(archive: Path, dest: Path, *, max_members: int = MAX_MEMBERS,
           max_bytes: int = MAX_UNPACKED_BYTES) -> None:
    """Extract a checkpoint archive into the new directory `dest` (ArchiveRefused on anything
    `pack` would not write, or past the limits; then `dest` holds a partial tree for the
    caller to remove)."""
    dest = Path(dest)
    dest.mkdir()
    root = dest.resolve()
    count = total = 0
    seen: set[str] = set()
    try:
        with tarfile.open(archive, "r:") as tf:
            for m in tf:  # streamed: the limits act before the whole index is read
                count += 1
                if count > max_members:
                    raise ArchiveRefused(f"more than {max_members} members")
                if m.name in seen:
                    raise ArchiveRefused(f"member {m.name!r} appears twice")
                seen.add(m.name)
                target = dest / _member_path(m.name)
                if not target.resolve().is_relative_to(root):
                    raise ArchiveRefused(f"member {m.name!r} escapes the directory")
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if not m.isreg():
                    raise ArchiveRefused(f"member {m.name!r}: {_kind(m)} entries are refused")
                total += m.size
                if total > max_bytes:
                    raise ArchiveRefused(f"members add up to more than {max_bytes} bytes")
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(m)
                assert src is not None  # a regular member always has data
                written = 0
                # "x": exclusive create, so a duplicate member cannot overwrite anything
                with src, open(target, "xb") as out:
                    while chunk := src.read(_CHUNK):  # tarfile stops at the member's size
                        written += len(chunk)
                        out.write(chunk)
                if written != m.size:
                    raise ArchiveRefused(f"member {m.name!r} is truncated")
                os.chmod(target, 0o644)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveRefused(f"unreadable archive: {type(exc).__name__}: {exc}") from None
    meta = dest / META_FILE
    if not meta.is_file() or not (dest / "params").is_dir():
        raise ArchiveRefused(f"not a checkpoint archive (needs {META_FILE} and params/)")


# ---------------------------------------------------------------------------------- fetch

def cache_name(uri: str) -> str:
    """`<archive name>-<12 hex of sha256(uri)>`: readable, and distinct per URI."""
    stem = Path(urlparse(uri).path).name.removesuffix(ARCHIVE_SUFFIX)
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip(".")[:80] or "checkpoint"
    return f"{stem}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"


def fetch(uri: str, cache_dir: Path, blobs: BlobStore, *,
          max_archive_bytes: int = MAX_ARCHIVE_BYTES, max_members: int = MAX_MEMBERS,
          max_bytes: int = MAX_UNPACKED_BYTES, keep: int = KEEP_CACHED) -> Path:
    """A local directory with the checkpoint at `uri` (see the module docstring)."""
    if urlparse(uri).scheme == "file":
        return Path(uri.removeprefix("file://"))  # one machine: the published directory
    cache_dir = Path(cache_dir)
    target = cache_dir / cache_name(uri)
    if (target / META_FILE).is_file():
        os.utime(target)  # recently used: pruning keeps it
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".fetch-"))
    try:
        archive = work / "archive.tar"
        try:
            blobs.get_file(uri, archive, max_archive_bytes)
        except ValueError as exc:  # too large, or not a blob of this store: never servable
            raise ArchiveRefused(f"{uri}: {exc}") from None
        except Exception as exc:  # network, credentials, a missing object: retried later
            raise UnavailableError(f"checkpoint {uri} not fetched: {type(exc).__name__}: "
                                   f"{exc}") from exc
        unpack(archive, work / "checkpoint", max_members=max_members, max_bytes=max_bytes)
        archive.unlink()
        try:
            os.rename(work / "checkpoint", target)
        except OSError:
            if not (target / META_FILE).is_file():  # not a concurrent fetch that won
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    prune(cache_dir, keep=keep, protect=target)
    return target


def prune(cache_dir: Path, keep: int = KEEP_CACHED, protect: Path | None = None) -> list[str]:
    """Remove all but the `keep` most recently used checkpoints (never `protect`), and work
    directories of fetches that died. Returns the names removed."""
    now = time.time()
    done: list[tuple[float, Path]] = []
    removed = []
    for entry in Path(cache_dir).iterdir():
        if entry.name.startswith(".fetch-"):
            if now - entry.stat().st_mtime > STALE_FETCH_S:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
        elif entry.is_dir() and not entry.is_symlink():
            done.append((entry.stat().st_mtime, entry))
    done.sort(reverse=True)
    for _, entry in done[keep:]:
        if protect is not None and entry == protect:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry.name)
    return removed
