"""The Triton embedding server against the same model in-process: equality, errors, hot
swap, shutdown. Both run the compact image tower on onnxruntime (test_serving_onnx_tower.py
compares that with JAX)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from runtime.embedding_client import EmbeddingClient, EmbeddingError
from services.embedding.current import write_current
from tests.serving.serving_support import PHOTOS, photo, png, running_triton, stop_triton
from trainer.checkpoints import load_params


def _images(n: int) -> list[bytes]:
    return [png(photo(PHOTOS[i % len(PHOTOS)]).rotate(7 * i)) for i in range(n)]


@pytest.mark.parametrize("n", [1, 3, 8])
def test_triton_equals_in_process_jax(triton, model_a, n):
    client = EmbeddingClient(triton.url)
    imgs = _images(n)
    instr = [f"make it look like picture {i}" for i in range(n)]
    t = client.embed_targets(imgs)
    q = client.embed_queries(imgs, instr)
    assert t.model_version == q.model_version == "serving-a"
    assert t.vectors.shape == q.vectors.shape == (n, model_a.embed_dim)
    np.testing.assert_allclose(t.vectors, model_a.encode_target(imgs), atol=1e-5, rtol=0)
    np.testing.assert_allclose(q.vectors, model_a.encode_query(imgs, instr), atol=1e-5, rtol=0)
    # preprocessed-pixels input gives the same vectors as encoded bytes
    px = model_a.preprocess_images(imgs)
    np.testing.assert_allclose(client.embed_targets(px).vectors, t.vectors, atol=1e-5, rtol=0)
    # instructions matter, and vectors are unit norm
    assert np.abs(q.vectors - t.vectors).max() > 1e-3
    np.testing.assert_allclose(np.linalg.norm(t.vectors, axis=1), 1.0, atol=1e-5)
    assert "image tower on onnxruntime" in triton.log.read_text()  # the server's default


def test_triton_rejects_bad_inputs(triton):
    client = EmbeddingClient(triton.url)
    with pytest.raises(EmbeddingError, match="cannot decode image"):
        client.embed_targets([b"definitely not an image"])
    with pytest.raises(EmbeddingError, match="not loaded"):
        client.embed_targets(_images(1), model_version="no-such-version")
    with pytest.raises(EmbeddingError, match="instruction"):
        client.embed_queries(_images(1), ["x" * 1001])


def test_hot_swap_under_load_has_no_failed_requests(triton, checkpoints, model_a):
    imgs = _images(2)
    errors, versions = [], []
    stop = threading.Event()

    def load() -> None:
        c = EmbeddingClient(triton.url)
        while not stop.is_set():
            try:
                versions.append(c.embed_targets(imgs).model_version)
            except Exception as exc:  # any failure counts
                errors.append(repr(exc))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(2)
    write_current(triton.current, "serving-b", str(checkpoints["serving-b"]))
    deadline = time.monotonic() + 120
    while "serving-b" not in versions[-8:] and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert "serving-a" in versions and versions[-1] == "serving-b"
    first_b = versions.index("serving-b")
    assert "serving-a" not in versions[first_b + 8:]  # swapped once, for good
    params_b, _ = load_params(checkpoints["serving-b"])
    model_b = model_a.with_params("serving-b", params_b)
    client = EmbeddingClient(triton.url)
    np.testing.assert_allclose(client.embed_targets(imgs).vectors, model_b.encode_target(imgs),
                               atol=1e-5, rtol=0)
    # the previous version stays addressable for blue/green query embedding
    old = client.embed_targets(imgs, model_version="serving-a")
    np.testing.assert_allclose(old.vectors, model_a.encode_target(imgs), atol=1e-5, rtol=0)
    write_current(triton.current, "serving-a", str(checkpoints["serving-a"]))
    deadline = time.monotonic() + 60
    while client.embed_targets(imgs).model_version != "serving-a":
        assert time.monotonic() < deadline
        time.sleep(0.3)


def test_shutdown_leaves_no_tritonserver(checkpoints, tmp_path):
    """A server of its own (the shared one serves the other tests, in any order): SIGTERM
    ends it cleanly, with every process it started."""
    with running_triton(checkpoints["serving-a"], tmp_path) as server:
        assert EmbeddingClient(server.url).embed_targets(_images(1)).model_version == "serving-a"
        assert stop_triton(server) == []
        assert server.proc.returncode == 0, server.log.read_text()[-2000:]
