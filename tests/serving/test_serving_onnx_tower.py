"""The compact backbone's image tower runs on onnxruntime (issue 16: faster than XLA:CPU on
the same cores); its features are the Flax tower's within 2e-5 on real photos, targets and
queries the JAX model's within 1e-4, after a hot swap too, and every way back to JAX works
(MAGICLENS_IMAGE_RUNTIME=jax, JAX on a GPU, no onnxruntime, another backbone)."""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from services.embedding.model import LoadedModel
from services.embedding.onnx_tower import OnnxImageTower, available_cores
from tests.serving.serving_support import PHOTOS, photo, png

FEATURES_ATOL = 2e-5  # pooled MobileNetV2 features (values up to ~6)
EMBEDDING_ATOL = 1e-4  # unit-norm embeddings after the head


def _images(n: int) -> list[bytes]:
    return [png(photo(PHOTOS[i % len(PHOTOS)]).rotate(11 * i)) for i in range(n)]


def _flax_features(model, pixels: np.ndarray) -> np.ndarray:
    fn = jax.jit(lambda p, x: model.model.apply(
        {"params": p}, x, method=lambda m, x: m.encoder.image_tower.features(x)))
    return np.asarray(fn(model.params, pixels))


@pytest.mark.parametrize("n", [1, 5, 16])
def test_onnx_tower_equals_the_flax_tower(model_a, n):
    """Batch 1 (one multi-threaded run) and batches (split over single-threaded runs)."""
    tower = OnnxImageTower(jax.tree.map(np.asarray, model_a.params["backbone"]["image_tower"]))
    pixels = model_a.preprocess_images(_images(n))
    got = tower.features(pixels)
    assert got.shape == (n, 1280) and got.dtype == np.float32
    np.testing.assert_allclose(got, _flax_features(model_a, pixels), atol=FEATURES_ATOL, rtol=0)


@pytest.mark.parametrize("n", [1, 7, 16])
def test_targets_and_queries_equal_the_jax_runtime(model_a, model_a_jax, n):
    assert model_a.image_runtime_used == "onnxruntime"
    assert model_a_jax.image_runtime_used == "jax"
    pixels = model_a.preprocess_images(_images(n))
    got = model_a.encode_target_pixels(pixels)
    np.testing.assert_allclose(got, model_a_jax.encode_target_pixels(pixels),
                               atol=EMBEDDING_ATOL, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    texts = ["same but blue", "as a line drawing"] * n
    np.testing.assert_allclose(model_a.encode_query_texts(pixels, texts[:n]),
                               model_a_jax.encode_query_texts(pixels, texts[:n]),
                               atol=EMBEDDING_ATOL, rtol=0)


def test_a_hot_swapped_version_gets_its_own_tower(model_a, model_a_jax):
    """New params (here a changed image tower) must not run on the old version's graph."""
    params = jax.tree.map(lambda x: x, model_a.params)
    stem = params["backbone"]["image_tower"]["features_0"]
    stem["kernel"] = stem["kernel"] * 1.5
    model_b = model_a.with_params("tower-changed", params)
    model_b.warmup()
    assert model_b.onnx_tower() is not model_a.onnx_tower()
    pixels = model_a.preprocess_images(_images(3))
    b = model_b.encode_target_pixels(pixels)
    np.testing.assert_allclose(b, model_a_jax.with_params("tower-changed", params)
                               .encode_target_pixels(pixels), atol=EMBEDDING_ATOL, rtol=0)
    assert np.abs(b - model_a.encode_target_pixels(pixels)).max() > 1e-3


def _fresh(model, **kw) -> LoadedModel:
    return LoadedModel(model.model_version, model.config_name, model.params, model.model,
                       model.preprocessor, **kw)


def test_falls_back_to_jax(model_a, monkeypatch):
    monkeypatch.setenv("MAGICLENS_IMAGE_RUNTIME", "jax")
    assert _fresh(model_a).image_runtime_used == "jax"
    monkeypatch.delenv("MAGICLENS_IMAGE_RUNTIME")
    assert _fresh(model_a).image_runtime_used == "onnxruntime"  # the default
    with monkeypatch.context() as m:
        m.setattr(jax, "default_backend", lambda: "gpu")  # the GPU overlay's server
        assert _fresh(model_a).image_runtime_used == "jax"
    monkeypatch.setitem(sys.modules, "services.embedding.onnx_tower", None)  # not installed
    assert _fresh(model_a).image_runtime_used == "jax"
    # another backbone (e.g. the official CLIP weights): no ONNX graph for it
    clip = SimpleNamespace(backbone_def=object(), config=model_a.model.config)
    assert LoadedModel("clip", "clip_b16", {}, clip, None).image_runtime_used == "jax"
    with pytest.raises(ValueError, match="MAGICLENS_IMAGE_RUNTIME"):
        _fresh(model_a, image_runtime="tensorrt")


def test_cores_follow_a_cgroup_cpu_limit(tmp_path):
    """A pod limited to 1.5 CPUs on a big node gets 2 threads, not one per node core."""
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    assert available_cores(cpu_max) == min(2, len(os.sched_getaffinity(0)))
    cpu_max.write_text("max 100000\n")
    assert available_cores(cpu_max) == len(os.sched_getaffinity(0))
    assert available_cores(tmp_path / "absent") == len(os.sched_getaffinity(0))
