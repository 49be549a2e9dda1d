"""ImportModel: a released (or converted) MagicLens checkpoint becomes a published version.

The upload is untrusted input. It is streamed to a file on the service's own volume within
the size limit it declared (and MAGICLENS_TRAINING_MAX_IMPORT_BYTES), checked against its
declared size and sha256, and must be the safe format: `flax.serialization.to_bytes(params)`
(msgpack, the payload of the released `.pkl` on its own). A pickle is refused with the one
command that converts it (trainer.weights.released); nothing here ever unpickles. The param
tree must match the chosen config leaf for leaf and shape for shape (trainer.weights.released
.restore_payload against the model's abstract params).

Then it goes the way a trained version goes: exported as our checkpoint directory
(trainer.checkpoints, with the architecture recorded), published to the blob store
(runtime.checkpoint_store), and registered as a 'published' model version with its
ModelPublished event in the same transaction, so `promote` serves it and `train --init`
starts from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from magiclens.v1 import training_pb2

from runtime import checkpoint_store, db
from runtime.blobstore import open_blobstore
from runtime.topics import Topic
from services.training import store
from services.training.config import TrainingSettings
from trainer.weights.formats import looks_like_pickle, pickle_refusal

MAX_CHUNK_BYTES = 4 << 20  # below gRPC's message limit; the CLI sends 1 MiB chunks
MIN_FILE_BYTES = 16
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_FILE_NAME_CHARS = 255


class ImportRefused(ValueError):
    """The upload is not an importable checkpoint (INVALID_ARGUMENT); nothing was kept."""


@dataclass(frozen=True)
class Header:
    config_name: str
    model_version: str
    file_name: str
    total_bytes: int
    sha256: str


def check_header(chunk: training_pb2.ImportModelChunk, max_bytes: int) -> Header:
    """The first chunk's fields, validated (ImportRefused says what is wrong)."""
    from trainer.models.magiclens import RELEASED_CONFIGS

    if chunk.config_name not in RELEASED_CONFIGS:
        raise ImportRefused(f"config must be one of {', '.join(RELEASED_CONFIGS)} (the released "
                            f"architecture), not {chunk.config_name[:50]!r}")
    version = chunk.model_version
    if version and not VERSION_RE.match(version):
        raise ImportRefused("model_version must be 1-100 letters, digits, '.', '_' or '-', "
                            "starting with a letter or digit")
    name = chunk.file_name
    if len(name) > MAX_FILE_NAME_CHARS or any(c in name for c in "\x00\n\r"):
        raise ImportRefused(f"file_name must be at most {MAX_FILE_NAME_CHARS} plain characters")
    if not MIN_FILE_BYTES <= chunk.total_bytes <= max_bytes:
        raise ImportRefused(f"the file is {chunk.total_bytes} bytes; the limit is {max_bytes} "
                            "(MAGICLENS_TRAINING_MAX_IMPORT_BYTES)")
    digest = chunk.sha256.lower()
    if digest and not SHA256_RE.match(digest):
        raise ImportRefused("sha256 must be 64 hex digits")
    return Header(chunk.config_name, version, name, chunk.total_bytes, digest)


def refuse_pickle(head: bytes, header: Header) -> None:
    if looks_like_pickle(head, header.file_name):
        raise ImportRefused(pickle_refusal(header.file_name or "FILE.pkl", header.config_name))


def receive(chunks: Iterable[training_pb2.ImportModelChunk], directory: Path,
            max_bytes: int) -> tuple[Header, Path]:
    """Stream the upload to a new file in `directory`; (header, path). The caller removes it."""
    it = iter(chunks)
    first = next(it, None)
    if first is None:
        raise ImportRefused("empty upload: the first chunk must carry the header")
    header = check_header(first, max_bytes)
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=directory, prefix=".upload-")
    path = Path(name)
    h = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in _chain(first, it):
                data = chunk.data
                if len(data) > MAX_CHUNK_BYTES:
                    raise ImportRefused(f"a chunk of {len(data)} bytes; the limit is "
                                        f"{MAX_CHUNK_BYTES}")
                if size == 0 and data:
                    refuse_pickle(data[:16], header)
                size += len(data)
                if size > header.total_bytes:
                    raise ImportRefused(f"more than the declared {header.total_bytes} bytes "
                                        "arrived")
                h.update(data)
                out.write(data)
        if size != header.total_bytes:
            raise ImportRefused(f"the upload ended at {size} of {header.total_bytes} bytes")
        if header.sha256 and h.hexdigest() != header.sha256:
            raise ImportRefused(f"sha256 mismatch: got {h.hexdigest()}, declared "
                                f"{header.sha256}")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return Header(header.config_name, header.model_version, header.file_name, size,
                  h.hexdigest()), path


def _chain(first: Any, rest: Any) -> Iterator[Any]:
    yield first
    yield from rest


def read_params(path: Path, config_name: str) -> tuple[Any, Any]:
    """(params, MagicLensConfig) from the uploaded file, checked against `config_name`'s tree."""
    from trainer.models.magiclens import CONFIGS, abstract_params, build_model
    from trainer.weights.released import restore_payload

    model, pre = build_model(config_name)
    target = abstract_params(model, pre.image_size)
    try:
        params = restore_payload(path.read_bytes(), target)
    except ValueError as exc:
        raise ImportRefused(f"not a {config_name} MagicLens checkpoint: {exc}") from None
    return params, CONFIGS[config_name]


def import_model(settings: TrainingSettings, topic: Topic,
                 chunks: Iterable[training_pb2.ImportModelChunk]) -> dict[str, Any]:
    """The whole ImportModel call; returns the model_versions row (status 'published')."""
    from trainer.checkpoints import save_params
    from trainer.models.magiclens import arch_meta

    header, upload = receive(chunks, settings.imports_dir, settings.training_max_import_bytes)
    try:
        params, arch = read_params(upload, header.config_name)
    finally:
        upload.unlink(missing_ok=True)
    version = header.model_version or store.new_ids(f"{header.config_name}-import")[1]
    record = {"import": {"file": header.file_name, "bytes": header.total_bytes,
                         "sha256": header.sha256, "format": "flax-msgpack"}}
    with db.transaction(settings.database_url) as conn:
        store.reserve_import(conn, version, header.config_name, record)
    target = settings.models_dir / version
    try:
        work = settings.models_dir / f".{version}.importing"
        shutil.rmtree(work, ignore_errors=True)
        save_params(work, params, {"config": header.config_name, "model_version": version,
                                   "origin": "import", **record, **arch_meta(arch)})
        if target.exists():  # an earlier attempt under this name died before registering
            shutil.rmtree(target)
        os.replace(work, target)
        uri = checkpoint_store.publish(open_blobstore(settings.blob_root), target, version)
        with db.transaction(settings.database_url) as conn:
            return store.publish_import(conn, topic, version, header.config_name, uri,
                                        int(arch.embed_dim))
    except BaseException as exc:
        with contextlib.suppress(Exception), db.transaction(settings.database_url) as conn:
            store.fail_import(conn, version, f"{type(exc).__name__}: {exc}")
        raise
