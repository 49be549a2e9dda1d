"""The query image and its copies are left out of search results, whatever form the query
came in (bytes, URL, pool id), unless the request sets include_query_image: over the real
root, two ScaNN shards, Triton and Postgres, with fingerprints stored as the miner stores
them (its own decode_image)."""

from __future__ import annotations

import io
import json
import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import httpx
import pytest
from magiclens.v1 import common_pb2, search_pb2, search_pb2_grpc
from PIL import Image

from runtime import db
from runtime.blobstore import open_blobstore
from runtime.near_duplicates import COLOUR_THRESHOLD, PHASH_THRESHOLD, colour_distance, hamming
from runtime.serving import set_serving_version
from services.mining.imaging import Policy, decode_image
from tests.gateway.gwutil import running_gateway
from tests.serving.serving_support import augmented_images, photo
from tests.support.processes import ROOT, free_port, start, stop, wait_grpc
from tools.cli.main import main

OTHERS_PER_PHOTO = 3


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, fmt, **kw)
    return buf.getvalue()


def _query_versions() -> dict[str, bytes]:
    """The query photo as stored in the pool, the copies a user or a second page would have
    (re-encoded and resized), and a recolouring of it, which is another image, not a copy."""
    base = photo("coffee").resize((256, 192))
    r, g, b = base.split()
    return {
        "pool": _encode(base, "PNG"),
        "pool_copy": _encode(base.resize((200, 150)), "JPEG", quality=80),
        "upload": _encode(base.resize((320, 240)), "JPEG", quality=90),
        "recolour": _encode(Image.merge("RGB", (b, r, g)), "PNG"),
    }


@pytest.fixture(scope="module")
def pool(fresh_db, model_a, checkpoints, tmp_path_factory):
    """A fresh pool: other photos' augmentations, the query photo, its near-duplicate copy
    and its recolouring; rows and embeddings as the miner and the embedding worker write
    them."""
    versions = _query_versions()
    others = augmented_images(OTHERS_PER_PHOTO, seed=3)
    images = [("pool", versions["pool"]), ("pool_copy", versions["pool_copy"]),
              ("recolour", versions["recolour"])]
    images += [(f"other{i}", b) for i, b in enumerate(others)]
    vecs = model_a.encode_target([b for _, b in images])
    d = tmp_path_factory.mktemp("exclusion")
    blobs = open_blobstore(f"file://{d / 'blobs'}")
    ids: dict[str, int] = {}
    with db.transaction(fresh_db) as conn:
        conn.execute("INSERT INTO model_versions (model_version, config_name, checkpoint_uri, "
                     "status) VALUES ('serving-a', 'compact', %s, 'promoted')",
                     (str(checkpoints["serving-a"]),))
        set_serving_version(conn, "serving-a", str(checkpoints["serving-a"]))
        page = conn.execute(
            "INSERT INTO pages (url, url_hash, domain, title, source, status) VALUES "
            "('https://exclusion.example/', 'exclusion', 'exclusion.example', 'Photos', "
            "'corpus:test', 'mined') RETURNING page_id").fetchone()["page_id"]
        for (name, data), v in zip(images, vecs, strict=True):
            dec = decode_image(data, Policy())  # the miner's own hashing
            row = conn.execute(
                "INSERT INTO images (content_hash, phash, colour_sig, source_url, first_page_id,"
                " blob_uri, mime_type, alt_text) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                "RETURNING image_id",
                (dec.content_hash, dec.phash, dec.colour_sig,
                 f"https://exclusion.example/{name}", page, blobs.put(data), dec.mime, name),
            ).fetchone()
            ids[name] = row["image_id"]
            conn.execute("INSERT INTO image_embeddings (image_id, model_version, embedding) "
                         "VALUES (%s, 'serving-a', %s)",
                         (row["image_id"], v.astype("<f4").tobytes()))
    return ids, versions, d


@pytest.fixture(scope="module")
def image_server() -> Iterator[tuple[str, dict[str, bytes]]]:
    """An allow-listed web server for queries by URL: GET /<name> answers files[name]."""
    files: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = files.get(self.path.lstrip("/"))
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", files
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def root(infra_servers, fresh_db, pool, triton):
    """Two shards and the root over the fresh pool."""
    _, _, d = pool
    env = infra_servers.env(DATABASE_URL=fresh_db, MAGICLENS_DATA_DIR=str(d),
                            MAGICLENS_BLOB_URI=f"file://{d / 'blobs'}",
                            MAGICLENS_BRUTE_THRESHOLD="50", MAGICLENS_URL_ALLOWLIST="127.0.0.1",
                            PYTHONPATH=f"{ROOT}:{ROOT / 'gen'}")
    ports = [free_port(), free_port()]
    procs = []
    for i, port in enumerate(ports):
        log = d / f"shard{i}.log"
        procs.append(start("services.search.shard", "--index", "exclusion", "--num-shards", "2",
                           "--shard", str(i), env=dict(env, MAGICLENS_GRPC_PORT=str(port)),
                           log=log))
        wait_grpc(port, proc=procs[-1], log=log)
    root_port = free_port()
    procs.append(start("services.search.root", env=dict(
        env, MAGICLENS_GRPC_PORT=str(root_port), MAGICLENS_TRITON_URL=triton.url,
        MAGICLENS_SHARDS=",".join(f"127.0.0.1:{p}" for p in ports),
        MAGICLENS_SHARD_TIMEOUT_S="5"), log=d / "root.log"))
    ch = wait_grpc(root_port, proc=procs[-1], log=d / "root.log")
    yield search_pb2_grpc.SearchServiceStub(ch), f"127.0.0.1:{root_port}"
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        stop(p)


def _hits(stub, query: dict, k: int, include: bool = False) -> list[int]:
    req = search_pb2.SearchRequest(query=common_pb2.ImageInput(**query), instruction="", k=k,
                                   include_query_image=include)
    return [h.image_id for h in stub.Search(req, timeout=60).hits]


def test_the_copies_are_copies_by_the_miners_rule(pool):
    """The fixture's premise: the re-encoded, resized copies are near-duplicates of the pool
    image by pHash + colour; the recolouring is not (its colours differ)."""
    _, versions, _ = pool
    dec = {n: decode_image(b, Policy()) for n, b in versions.items()}
    for name in ("pool_copy", "upload"):
        assert dec[name].content_hash != dec["pool"].content_hash
        assert hamming(dec[name].phash, dec["pool"].phash) <= PHASH_THRESHOLD
        assert colour_distance(dec[name].colour_sig, dec["pool"].colour_sig) <= COLOUR_THRESHOLD
    assert colour_distance(dec["recolour"].colour_sig, dec["pool"].colour_sig) > COLOUR_THRESHOLD


@pytest.mark.parametrize("form", ["bytes", "url", "id"])
def test_query_image_and_its_near_duplicates_are_left_out(pool, root, image_server, form):
    ids, versions, _ = pool
    stub, _ = root
    base, files = image_server
    files["copy.jpg"] = versions["pool_copy"]  # the URL serves the pool copy's exact bytes
    query = {"bytes": {"image_bytes": versions["upload"]},
             "url": {"image_url": f"{base}/copy.jpg"},
             "id": {"image_id": ids["pool"]}}[form]
    copies = {ids["pool"], ids["pool_copy"]}
    everything = _hits(stub, query, k=len(ids))
    assert not copies & set(everything), form
    assert set(everything) == set(ids.values()) - copies  # nothing else is dropped
    assert ids["recolour"] in everything  # another image of the same thing stays
    top = _hits(stub, query, k=5)
    assert len(top) == 5 and not copies & set(top)
    # asked to keep them, the copies are the best hits
    kept = _hits(stub, query, k=5, include=True)
    assert copies <= set(kept[:3]), (form, kept, copies)


def test_gateway_option_keeps_the_query_image(fresh_db, pool, root):
    ids, versions, d = pool
    with running_gateway(database_url=fresh_db, blob_uri=f"file://{d / 'blobs'}",
                         search_addr=root[1]) as base:
        for include in (False, True):
            r = httpx.post(f"{base}/api/search", params={"k": 5, "include_query_image": int(
                include)}, content=versions["upload"], headers={"Content-Type": "image/jpeg"},
                timeout=60)
            assert r.status_code == 200, r.text
            got = {h["image_id"] for h in r.json()["hits"]}
            assert ({ids["pool"], ids["pool_copy"]} <= got) is include, (include, got)
            r = httpx.post(f"{base}/api/search", json={"image_id": ids["pool"], "k": 5,
                                                       "include_query_image": include},
                           timeout=60)
            assert (ids["pool"] in {h["image_id"] for h in r.json()["hits"]}) is include


def test_cli_flag_keeps_the_query_image(pool, root, monkeypatch, capsys):
    ids, _, _ = pool
    monkeypatch.setenv("MAGICLENS_SEARCH_ADDR", root[1])
    for flag, present in (([], False), (["--include-query-image"], True)):
        assert main(["search", "--image", str(ids["pool"]), "-k", "5", "--json", *flag]) == 0
        got = {h["image_id"] for h in json.loads(capsys.readouterr().out)["hits"]}
        assert (ids["pool"] in got) is present and (ids["pool_copy"] in got) is present


def test_gateway_sends_an_instruction_alone_to_the_root(fresh_db, pool, root):
    """JSON with an instruction and no image is not refused by the gateway: it goes to the
    root as it is, and the gateway answers what the root answers (a refusal with its HTTP
    status in the root's words, or the root's hits)."""
    _, _, d = pool
    stub, addr = root
    text = "a cup of coffee"
    try:
        direct = [h.image_id for h in stub.Search(
            search_pb2.SearchRequest(instruction=text, k=3), timeout=60).hits]
        refused = None
    except grpc.RpcError as exc:
        direct, refused = None, exc
    with running_gateway(database_url=fresh_db, blob_uri=f"file://{d / 'blobs'}",
                         search_addr=addr) as base:
        r = httpx.post(f"{base}/api/search", json={"instruction": text, "k": 3}, timeout=60)
    if refused is not None:  # a model version without a text-only path: 409 in its words
        http = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 409}
        assert refused.code() in http, refused
        assert r.status_code == http[refused.code()], r.text
        assert " ".join((refused.details() or "").split())[:80] in r.json()["error"]
    else:
        assert r.status_code == 200, r.text
        assert [h["image_id"] for h in r.json()["hits"]] == direct
