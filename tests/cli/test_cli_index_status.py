"""`magiclens index` and `magiclens status --json` against the real PostgreSQL and blob store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import skimage.data
from PIL import Image

from runtime import db
from runtime.topics import IMAGES_MINED
from tools.cli.main import main

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


@pytest.fixture
def env(own_db, tmp_path, monkeypatch):
    """A database of the test's own: the status counts below are exact in any test order."""
    monkeypatch.setenv("DATABASE_URL", own_db)
    monkeypatch.setenv("MAGICLENS_BLOB_URI", f"file://{tmp_path / 'blobs'}")
    monkeypatch.setenv("MAGICLENS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MAGICLENS_SEARCH_ADDR", "127.0.0.1:1")  # nothing listens on port 1
    return own_db


def _folder(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in PHOTOS:
        Image.fromarray(np.asarray(getattr(skimage.data, name)())).save(folder / f"{name}.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (folder / "tiny.png").write_bytes(b"")
    Image.new("RGB", (8, 8), "red").save(folder / "pixel.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "captions.tsv").write_text("coffee.jpg\ta cup of espresso\n"
                                         "chelsea.jpg\ta tabby cat\n")
    return folder


def _run_json(capsys, argv) -> dict:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_index_folder_then_status(env, tmp_path, capsys):
    folder = _folder(tmp_path)
    data = _run_json(capsys, ["index", "--images", str(folder), "--captions",
                              str(folder / "captions.tsv"), "--json"])
    assert data["files"] == 7 and data["accepted"] == 4 and data["rejected"] == 3
    assert data["new_images"] == 4 and data["pairs"] == 0
    assert data["page_url"].startswith("https://upload.magiclens.invalid/photos-")
    by_file = {r["file"]: r for r in data["results"]}
    assert by_file["pixel.png"]["reason"].endswith("spacer/tracking pixel")
    assert "corrupt" in by_file["broken.png"]["reason"]
    ids = [by_file[f"{n}.jpg"]["image_id"] for n in PHOTOS]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == 4

    with db.connect(env) as conn:
        rows = conn.execute("SELECT image_id, caption, mime_type, blob_uri FROM images "
                            "ORDER BY image_id").fetchall()
        events = conn.execute("SELECT count(*) AS n FROM outbox WHERE topic = %s",
                              (IMAGES_MINED.name,)).fetchone()["n"]
        page = conn.execute("SELECT status, source FROM pages").fetchone()
    assert {r["image_id"] for r in rows} == set(ids)
    assert {r["caption"] for r in rows} >= {"a cup of espresso", "a tabby cat"}
    assert {r["mime_type"] for r in rows} == {"image/jpeg"}
    assert all(r["blob_uri"].startswith(f"file://{tmp_path / 'blobs'}") for r in rows)
    assert events == 4  # one ImageMined per new image, through the outbox
    assert (page["status"], page["source"]) == ("mined", "upload")

    again = _run_json(capsys, ["index", "--images", str(folder), "--json"])
    assert again["new_images"] == 0 and again["accepted"] == 4  # idempotent

    status = _run_json(capsys, ["status", "--json"])
    assert set(status) >= {"counts", "models", "embeddings", "index", "search"}
    assert status["counts"]["images"] == {"mined": 4}
    assert status["counts"]["pages"] == {"mined": 1}
    assert status["models"] == [] and status["search"]["available"] is False
    assert "127.0.0.1:1" in status["search"]["error"]

    code = main(["status"])
    out = capsys.readouterr().out
    assert code == 0 and "images          4  (mined 4)" in out


def test_index_with_pairs_pairs_the_folder(env, tmp_path, capsys):
    folder = tmp_path / "pairs"
    folder.mkdir()
    for name in ("camera", "moon"):
        Image.fromarray(np.asarray(getattr(skimage.data, name)())).save(folder / f"{name}.png")
    data = _run_json(capsys, ["index", "--images", str(folder), "--pairs", "--json"])
    assert data["accepted"] == 2 and data["pairs"] == 2  # both directions

