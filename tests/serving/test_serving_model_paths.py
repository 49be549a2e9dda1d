"""The serving model's fast paths give the trained model's own numbers: a query encoded as
image tower + cached text features at the instruction's length + head equals the model's
`encode_query` on the tokenizer's full-length tokens; batches cut into buckets equal
one-at-a-time encoding."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from services.embedding.model import TEXT_BUCKETS, chunks, text_bucket
from tests.serving.serving_support import PHOTOS, photo, png

INSTRUCTIONS = ["same but blue", "", "a flag of a country next to this one, in the same region",
                "the same one as a line drawing " * 8]  # the last fills all 64 tokens


def _reference_query(model, pixels, tokens):
    """The model's fused `encode_query`, jitted whole (as training evaluates it; eager
    execution rounds differently, by up to 3e-4 here)."""
    m = model.model
    fused = jax.jit(lambda p, x, t: m.apply({"params": p}, x, t, method=m.encode_query))
    return np.asarray(fused(model.params, pixels, tokens))


# The split path with the image tower on JAX gives the model's own numbers (to float32
# rounding of separately jitted pieces); on onnxruntime (the compact backbone's default),
# other convolution kernels: within 1e-4 (tests/serving/test_serving_onnx_tower.py).
ATOL = {"jax": 1e-5, "onnxruntime": 1e-4}


@pytest.mark.parametrize("runtime", ["jax", "onnxruntime"])
def test_split_query_path_equals_the_models_encode_query(model_a, model_a_jax, runtime):
    model = {"jax": model_a_jax, "onnxruntime": model_a}[runtime]
    assert model.image_runtime_used == runtime
    atol = ATOL[runtime]
    imgs = [png(photo(PHOTOS[i % len(PHOTOS)]).rotate(5 * i)) for i in range(len(INSTRUCTIONS))]
    pixels = model.preprocess_images(imgs)
    tokens = model.tokens(INSTRUCTIONS)
    assert model.variable_text_length  # the compact model's MiniLM
    want = _reference_query(model, pixels, tokens)
    np.testing.assert_allclose(model.encode_query_texts(pixels, INSTRUCTIONS), want,
                               atol=atol, rtol=0)
    # again: now every instruction's text features come from the cache
    hits = model.text_cache.hits
    np.testing.assert_allclose(model.encode_query_texts(pixels, INSTRUCTIONS), want,
                               atol=atol, rtol=0)
    assert model.text_cache.hits >= hits + len(INSTRUCTIONS)
    # and the instruction matters
    other = model.encode_query_texts(pixels, ["as a cartoon"] * len(INSTRUCTIONS))
    assert np.abs(other - want).max() > 1e-3


def test_trimmed_text_length_changes_nothing(model_a):
    tokens = model_a.tokens(INSTRUCTIONS[:3])
    m = model_a.model
    full = np.asarray(jax.jit(lambda p, t: m.apply({"params": p}, t,
                                                   method=m.text_features_only))(
        model_a.params, tokens))
    np.testing.assert_allclose(model_a._text_features_of_tokens(tokens), full, atol=1e-5, rtol=0)


def test_a_new_version_starts_with_an_empty_text_cache(model_a):
    model_a.text_features(["warm the cache"])
    swapped = model_a.with_params("other", jax.tree.map(lambda x: x, model_a.params))
    assert swapped.text_cache.get("warm the cache") is None
    assert model_a.text_cache.get("warm the cache") is not None


@pytest.mark.parametrize("n", [1, 5, 13, 16, 17, 40])
def test_batches_are_cut_into_buckets_without_padding(n):
    assert sum(chunks(n)) == n and chunks(n) == sorted(chunks(n), reverse=True)
    assert chunks(n, frozenset({4})) == [4] * (n // 4) + [1] * (n % 4)  # only what is ready


def test_bucketed_batch_equals_one_at_a_time(model_a):
    model_a.warm_rest((2, 4))
    assert {2, 4} <= model_a.ready
    imgs = [png(photo(PHOTOS[i % len(PHOTOS)]).rotate(3 * i)) for i in range(7)]  # 4 + 2 + 1
    pixels = model_a.preprocess_images(imgs)
    together = model_a.encode_target_pixels(pixels)
    alone = np.concatenate([model_a.encode_target_pixels(pixels[i:i + 1]) for i in range(7)])
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0)


def test_text_buckets():
    assert [text_bucket(n, 64) for n in (1, 8, 9, 17, 33, 64)] == [8, 8, 16, 32, 64, 64]
    assert text_bucket(20, 16) == 16 and TEXT_BUCKETS[-1] == 64


def test_a_batch_decoded_on_threads_equals_images_decoded_one_by_one(model_a, monkeypatch):
    """A batch's images are decoded on one thread per core; each row must be what the same
    bytes give alone, in the batch's order, whatever the thread count."""
    import services.embedding.model as serving_model

    monkeypatch.setattr(serving_model, "_decode_threads", lambda: 2)  # threaded on any machine
    imgs = [png(photo(PHOTOS[i % len(PHOTOS)]).rotate(5 * i)) for i in range(9)]
    together = model_a.preprocess_images(imgs)
    alone = np.concatenate([model_a.preprocess_images([b]) for b in imgs])
    assert together.dtype == np.float32 and together.shape == alone.shape
    np.testing.assert_array_equal(together, alone)
