"""Text-to-image search through the real stack: a model version with a text-query head on
Triton (the `text_query` model), the search root and the ScaNN shards of the serving tests,
the CLI; and a version without the head (every export made before it) still serving image
queries and refusing text-only ones with FAILED_PRECONDITION in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
from magiclens.v1 import common_pb2, search_pb2, search_pb2_grpc

from runtime.embedding_client import BadImageError, EmbeddingClient, NoTextPathError
from services.embedding.model import NO_TEXT_PATH, load_checkpoint
from tests.serving.serving_support import CACHE, PHOTOS, running_triton
from tests.serving.test_serving_search import N_PER_PHOTO, cluster, corpus  # noqa: F401
from tests.support.processes import free_port, start, stop, wait_grpc
from tools.cli.main import main

# What each photo of the serving pool shows: the captions the head is trained on.
CAPTIONS = {
    "astronaut": "an astronaut in a white space suit", "coffee": "a cup of coffee on a saucer",
    "chelsea": "a tabby cat", "rocket": "a rocket on the launch pad",
    "camera": "a man holding a camera on a tripod", "hubble_deep_field": "galaxies in deep space",
    "retina": "a photo of the retina of an eye", "immunohistochemistry": "stained tissue cells",
    "colorwheel": "a colour wheel", "logo": "a python logo", "cat": "a cat lying on a rug",
    "coins": "old coins",
}


def _text_checkpoint(checkpoints, corpus) -> Path:  # noqa: F811 - the imported fixture
    """serving-a plus a text-query head fitted (trainer.text_query) to the pool's own index
    embeddings and the captions above: everything image queries use is serving-a's."""
    import jax

    from trainer.checkpoints import load_params, save_params
    from trainer.configs import get_config
    from trainer.models.magiclens import arch_meta, build_model, config_for_checkpoint
    from trainer.text_query import fit_text_query, with_text_query
    from trainer.train import make_mesh

    src = checkpoints["serving-a"]
    params, meta = load_params(src)
    cfg = get_config("compact", text_query_steps=150, batch_size=32)
    arch = with_text_query(config_for_checkpoint(meta), cfg)
    dst = CACHE / "text-head" / "model-a-text"
    marker = dst / "magiclens_meta.json"
    if marker.exists() and json.loads(marker.read_text()).get("base") == meta.get("arch"):
        return dst
    _, vecs = corpus
    texts = [CAPTIONS[p] for p in PHOTOS for _ in range(N_PER_PHOTO)]
    feats = load_checkpoint(src, "serving-a").text_features(texts)
    model, _ = build_model("compact", config=arch)
    params, _ = fit_text_query(model, cfg, jax.tree.map(np.asarray, params), feats, vecs,
                               make_mesh())
    shutil.rmtree(dst, ignore_errors=True)
    save_params(dst, params, {**meta, **arch_meta(arch), "base": meta.get("arch"),
                              "origin": "serving-a+text-query-head"})
    return dst


@pytest.fixture(scope="module")
def text_stack(cluster, checkpoints, corpus, tmp_path_factory):  # noqa: F811
    """A second Triton serving serving-a *with* the text-query head (same version name, the
    same index embeddings), and a root over the cluster's shards that embeds through it."""
    ckpt = _text_checkpoint(checkpoints, corpus)
    d = tmp_path_factory.mktemp("text-triton")
    with running_triton(ckpt, d) as triton:
        port = free_port()
        log = d / "root.log"
        root = start("services.search.root", env=dict(
            cluster.env_base, MAGICLENS_GRPC_PORT=str(port), MAGICLENS_TRITON_URL=triton.url,
            MAGICLENS_SHARDS=",".join(cluster.shard_addrs), MAGICLENS_SHARD_TIMEOUT_S="2"),
            log=log)
        try:
            ch = wait_grpc(port, proc=root, log=log)

            class Stack:
                stub = search_pb2_grpc.SearchServiceStub(ch)
                root_addr = f"127.0.0.1:{port}"
                triton_url = triton.url
                checkpoint = ckpt

            yield Stack
        finally:
            stop(root)


def _text(stub, instruction: str, k: int = 5):
    return stub.Search(search_pb2.SearchRequest(query=common_pb2.ImageInput(),
                                                instruction=instruction, k=k), timeout=30)


def _photo_ids(cluster, name: str) -> set[int]:  # noqa: F811
    i = PHOTOS.index(name)
    return set(cluster.image_ids[i * N_PER_PHOTO:(i + 1) * N_PER_PHOTO])


def test_text_only_search_finds_the_described_photos(text_stack, cluster):  # noqa: F811
    for name in ("coffee", "rocket", "chelsea"):
        r = _text(text_stack.stub, CAPTIONS[name], k=5)
        assert r.model_version == "serving-a" and not r.partial and len(r.hits) == 5
        got = {h.image_id for h in r.hits}
        assert len(got & _photo_ids(cluster, name)) >= 4, (name, got)
        scores = [h.score for h in r.hits]
        assert scores == sorted(scores, reverse=True)
        assert r.hits[0].context.page_title == "Test photos"


def test_triton_text_query_model_equals_the_checkpoint(text_stack):
    client = EmbeddingClient(text_stack.triton_url)
    try:
        got = client.embed_text_queries(["a cup of coffee", "a rocket"])
        want = load_checkpoint(text_stack.checkpoint, "x").encode_text_queries(
            ["a cup of coffee", "a rocket"])
        assert got.model_version == "serving-a"
        np.testing.assert_allclose(got.vectors, want, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(got.vectors, axis=1), 1.0, atol=1e-5)
        with pytest.raises(BadImageError, match="non-empty instruction"):
            client.embed_text_queries(["   "])
    finally:
        client.close()


def test_image_queries_are_unchanged_by_the_text_head(text_stack, cluster):  # noqa: F811
    """The same image query through either server: the same hits and scores."""
    req = search_pb2.SearchRequest(query=common_pb2.ImageInput(image_id=cluster.image_ids[7]),
                                   instruction="the same thing", k=10)
    a = cluster.stub.Search(req, timeout=30)
    b = text_stack.stub.Search(req, timeout=30)
    assert [h.image_id for h in a.hits] == [h.image_id for h in b.hits]
    np.testing.assert_allclose([h.score for h in a.hits], [h.score for h in b.hits], atol=1e-4)


def test_a_version_without_the_head_answers_failed_precondition(cluster, triton):  # noqa: F811
    with pytest.raises(grpc.RpcError) as err:
        _text(cluster.stub, "a cup of coffee")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details() == NO_TEXT_PATH
    client = EmbeddingClient(triton.url)  # the serving tests' server: serving-a, no head
    try:
        with pytest.raises(NoTextPathError) as no_path:
            client.embed_text_queries(["a cup of coffee"])
        assert str(no_path.value) == NO_TEXT_PATH
    finally:
        client.close()
    # ... and its image queries still work
    r = cluster.stub.Search(search_pb2.SearchRequest(
        query=common_pb2.ImageInput(image_id=cluster.image_ids[0]), k=3), timeout=30)
    assert len(r.hits) == 3


def test_bad_text_only_requests_are_invalid_argument(text_stack):
    for instruction in ("   ", "x" * 1001):
        with pytest.raises(grpc.RpcError) as err:
            _text(text_stack.stub, instruction)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, instruction[:5]
    with pytest.raises(grpc.RpcError) as err:  # neither an image nor an instruction
        _text(text_stack.stub, "")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "an instruction" in err.value.details()


def test_cli_searches_by_text_alone(text_stack, cluster, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setenv("MAGICLENS_SEARCH_ADDR", text_stack.root_addr)
    assert main(["search", "--instruction", CAPTIONS["rocket"], "-k", "5", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model_version"] == "serving-a" and len(data["hits"]) == 5
    assert len({h["image_id"] for h in data["hits"]} & _photo_ids(cluster, "rocket")) >= 4
    assert main(["search", "-q", CAPTIONS["coffee"], "-k", "3"]) == 0  # the human table
    out = capsys.readouterr().out
    assert out.startswith("model serving-a, 3 results") and "Test photos" in out
    # neither --image nor --instruction: one usage line, exit 2
    assert main(["search"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--instruction" in lines[0]
    # a version without the head: one line, exit 1
    monkeypatch.setenv("MAGICLENS_SEARCH_ADDR", cluster.root_addr)
    assert main(["search", "-q", "a cup of coffee"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and NO_TEXT_PATH in lines[0], lines


def test_cli_help_says_text_alone_works(capsys):
    with pytest.raises(SystemExit) as done:
        main(["search", "--help"])
    assert done.value.code == 0
    assert "--instruction alone" in " ".join(capsys.readouterr().out.split())
