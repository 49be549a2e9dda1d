"""runtime/checkpoint_store.py: an exported checkpoint goes from the training pod's
disk through the object store to the embedding pod's disk, and an archive that is not a plain
checkpoint is refused without writing anything outside (or leaving anything inside) the cache.

The object store is a real S3 API on localhost (tests/s3.py: moto's server, through boto3),
and "the two pods" are two directories that share nothing: the training side's directory is
deleted before the serving side fetches.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from runtime import checkpoint_store as cs
from runtime.blobstore import FileBlobStore, check_key, open_blobstore
from runtime.errors import UnavailableError
from tests.support.processes import free_port
from tests.support.s3 import s3_server
from trainer.checkpoints import META_FILE


@pytest.fixture(scope="module")
def s3():
    with s3_server() as server:
        yield server


def _checkpoint(root: Path, big: int = 0) -> Path:
    """A directory shaped like trainer.checkpoints.save_params output."""
    (root / "params" / "d").mkdir(parents=True)
    (root / cs.META_FILE).write_text('{"config": "compact", "model_version": "v"}')
    (root / "params" / "_METADATA").write_text('{"tree": {}}')
    (root / "params" / "d" / "0123abcd").write_bytes(os.urandom(1000) + b"\x00" * 5000)
    if big:  # past s3transfer's 8 MiB multipart threshold
        (root / "params" / "d" / "big").write_bytes(os.urandom(big))
    return root


def _tree(root: Path) -> dict[str, bytes | None]:
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def test_cs_meta_file_is_the_trainers():
    assert cs.META_FILE == META_FILE


def test_pack_depends_only_on_the_file_tree(tmp_path):
    a = _checkpoint(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)  # same files, other inode order and times
    os.utime(b / "params" / "_METADATA", (1, 1))
    os.chmod(b / cs.META_FILE, 0o600)
    cs.pack(a, tmp_path / "a.tar")
    cs.pack(b, tmp_path / "b.tar")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as tf:
        members = tf.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names) and names[0] == cs.META_FILE
    assert {(m.mtime, m.uid, m.gid, m.uname) for m in members} == {(0, 0, 0, "")}


def test_pack_refuses_links(tmp_path):
    ckpt = _checkpoint(tmp_path / "c")
    (ckpt / "params" / "link").symlink_to("/etc/passwd")
    with pytest.raises(ValueError, match="not a regular file"):
        cs.pack(ckpt, tmp_path / "c.tar")


def test_named_keys_are_plain_relative_paths(tmp_path):
    store = FileBlobStore(tmp_path / "store")
    for bad in ("../x", "/x", "a//b", "a/./b", "a/../b", "", "a b", "models/x.tar/.."):
        with pytest.raises(ValueError):
            check_key(bad)
    src = tmp_path / "f"
    src.write_bytes(b"abc")
    uri = store.put_file(src, "models/v1.tar")
    assert uri == f"file://{tmp_path / 'store' / 'models' / 'v1.tar'}"
    assert store.get_file(uri, tmp_path / "g", 3) == 3 and (tmp_path / "g").read_bytes() == b"abc"
    with pytest.raises(ValueError, match="limit 2"):
        store.get_file(uri, tmp_path / "h", 2)
    assert not (tmp_path / "h").exists()


def test_a_file_store_publishes_the_directory_itself(tmp_path):
    """One machine (dev, demo, tests): the checkpoint_uri is the directory, as before."""
    ckpt = _checkpoint(tmp_path / "models" / "v1")
    uri = cs.publish(open_blobstore(f"file://{tmp_path / 'blobs'}"), ckpt, "v1")
    assert uri == ckpt.as_uri()
    assert cs.fetch(uri, tmp_path / "cache", None) == ckpt  # type: ignore[arg-type]
    assert not (tmp_path / "cache").exists() and not (tmp_path / "blobs").exists()


def test_a_checkpoint_moves_between_two_disks_through_s3(s3, tmp_path):
    training_disk, serving_disk = tmp_path / "training-pod", tmp_path / "embedding-pod"
    ckpt = _checkpoint(training_disk / "models" / "compact-1", big=9 << 20)
    want = _tree(ckpt)
    blobs = open_blobstore(f"s3://{s3.bucket}/pool")
    uri = cs.publish(blobs, ckpt, "compact-1")
    assert uri == f"s3://{s3.bucket}/pool/models/compact-1.tar"
    assert "pool/models/compact-1.tar" in s3.object_keys()
    assert not list(ckpt.parent.glob(".*.tmp")), "the packed temp archive was left behind"
    shutil.rmtree(training_disk)  # the serving pod never sees the training pod's disk

    cache = serving_disk / "embedding" / "checkpoints"
    local = cs.fetch(uri, cache, open_blobstore(f"s3://{s3.bucket}/pool"))
    assert local.parent == cache and local.name.startswith("compact-1-")
    assert _tree(local) == want
    assert [p.name for p in cache.iterdir()] == [local.name]  # no work dir, no archive

    class Offline:  # a second call is answered from the cache: nothing remote is touched
        def get_file(self, *a, **k):
            raise AssertionError("fetched again")

    assert cs.fetch(uri, cache, Offline()) == local  # type: ignore[arg-type]


def test_the_store_being_unreachable_is_unavailable_not_refused(tmp_path, monkeypatch):
    dead = free_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{dead}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(k, "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    blobs = open_blobstore("s3://magiclens-test/pool")
    with pytest.raises(UnavailableError, match="not fetched"):
        cs.fetch("s3://magiclens-test/pool/models/v.tar", tmp_path / "cache", blobs)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []


# ----------------------------------------------------------------- hostile archives

def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, type_: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = type_, linkname
    return info, None


def _valid() -> list:
    return [_special("params", tarfile.DIRTYPE), _file("params/_METADATA", b"{}"),
            _file(cs.META_FILE, b"{}")]


def _archive(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


# From <tmp_path>/pod/embedding/checkpoints/.fetch-*/checkpoint up to tmp_path, where the
# test looks for it (a broken unpack then writes inside the test's own directory).
ESCAPE = "../" * 5 + "escaped.txt"


@pytest.mark.parametrize("members,needle,limits", [
    pytest.param([*_valid(), _file(ESCAPE)], "not a plain relative path", {}, id="dotdot"),
    pytest.param([*_valid(), _file("params/" + "../" * 6 + "escaped.txt")],
                 "not a plain relative path", {}, id="nested-dotdot"),
    pytest.param([*_valid(), _file("ABSOLUTE")], "not a plain relative path", {},
                 id="absolute"),
    pytest.param([_special("params", tarfile.SYMTYPE, "OUTSIDE"),
                  _file("params/escaped.txt"), _file(cs.META_FILE)],
                 "symbolic link entries are refused", {}, id="symlink"),
    pytest.param([*_valid(), _special("params/passwd", tarfile.LNKTYPE, "/etc/passwd")],
                 "hard link entries are refused", {}, id="hardlink"),
    pytest.param([*_valid(), _special("params/null", tarfile.CHRTYPE)],
                 "character device", {}, id="char-device"),
    pytest.param([*_valid(), _special("params/disk", tarfile.BLKTYPE)],
                 "block device", {}, id="block-device"),
    pytest.param([*_valid(), _special("params/pipe", tarfile.FIFOTYPE)], "FIFO", {},
                 id="fifo"),
    pytest.param([*_valid(), _file(cs.META_FILE, b"{}")], "appears twice", {},
                 id="duplicate-member"),
    pytest.param([_special("params", tarfile.DIRTYPE), _file("params/x")],
                 "not a checkpoint archive", {}, id="no-meta"),
    pytest.param([*_valid(), *[_file(f"params/f{i}") for i in range(5)]],
                 "more than 4 members", {"max_members": 4}, id="too-many-members"),
    pytest.param([*_valid(), _file("params/big", b"\x00" * 5000)],
                 "more than 4096 bytes", {"max_bytes": 4096}, id="too-large-unpacked"),
    pytest.param([*_valid(), _file("params/big", b"\x00" * 50_000)], "limit 20000",
                 {"max_archive_bytes": 20_000}, id="too-large-archive"),
    pytest.param(None, "unreadable archive", {}, id="not-a-tar"),
])
def test_a_hostile_archive_is_refused_and_leaves_nothing(s3, tmp_path, members, needle,
                                                         limits):
    outside = tmp_path / "outside"
    outside.mkdir()
    fixed = []
    for info, data in members or []:
        if info.name == "ABSOLUTE":
            info.name = str(tmp_path / "escaped.txt")
        if info.linkname == "OUTSIDE":
            info.linkname = str(outside)
        fixed.append((info, data))
    body = _archive(fixed) if members is not None else os.urandom(4096)
    key = "pool/models/hostile.tar"
    s3.client().put_object(Bucket=s3.bucket, Key=key, Body=body)
    cache = tmp_path / "pod" / "embedding" / "checkpoints"
    with pytest.raises(cs.ArchiveRefused, match=needle):
        cs.fetch(f"s3://{s3.bucket}/{key}", cache, open_blobstore(f"s3://{s3.bucket}/pool"),
                 **limits)
    assert not list(tmp_path.rglob("escaped.txt")), "a member was written outside"
    assert not list(outside.iterdir())
    assert list(cache.iterdir()) == [], "a refused archive left files in the cache"


def test_prune_keeps_the_most_recently_used(s3, tmp_path):
    blobs = open_blobstore(f"s3://{s3.bucket}/pool")
    cache = tmp_path / "cache"
    uris = []
    for i in range(4):
        ckpt = _checkpoint(tmp_path / "train" / f"v{i}")
        uris.append(cs.publish(blobs, ckpt, f"prune-v{i}"))
    first = cs.fetch(uris[0], cache, blobs, keep=2)
    os.utime(first, (1, 1))
    second = cs.fetch(uris[1], cache, blobs, keep=2)
    assert {p.name for p in cache.iterdir()} == {first.name, second.name}
    cs.fetch(uris[0], cache, blobs, keep=2)  # used again: now the most recent but one
    os.utime(second, (1, 1))
    third = cs.fetch(uris[2], cache, blobs, keep=2)
    assert {p.name for p in cache.iterdir()} == {first.name, third.name}
    stale = cache / ".fetch-dead"
    stale.mkdir()
    os.utime(stale, (1, 1))
    fourth = cs.fetch(uris[3], cache, blobs, keep=2)
    assert {p.name for p in cache.iterdir()} == {fourth.name, third.name}
