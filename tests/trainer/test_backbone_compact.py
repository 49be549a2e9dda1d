"""Compact backbone: restricted torch unpickler, MobileNetV2 and MiniLM ports against torch /
sentence-transformers references, ImageNet classification of real photos, and the
CompactBackbone interface (standalone and nested in a parent module)."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization
from PIL import Image
from skimage import data as skdata

from trainer.models.backbone import (
    Backbone,
    CompactBackbone,
    build_backbone,
    load_pretrained_towers,
)
from trainer.models.minilm import MiniLM
from trainer.models.mobilenet_v2 import MobileNetV2
from trainer.weights import compact
from trainer.weights.torch_zip import UnsafePickleError, load_state_dict

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CLASSES = (Path(__file__).resolve().parents[2] / "trainer/data/imagenet_classes.txt"
           ).read_text().splitlines()


# ------------------------------------------------------------------ restricted unpickler

def test_legacy_pth_loads_as_numpy():
    sd = load_state_dict(compact.mobilenet_checkpoint())
    assert len(sd) == 314
    assert sd["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert sd["classifier.1.weight"].dtype == np.float32
    assert sd["features.0.1.num_batches_tracked"].dtype == np.int64


def test_zip_format_views_and_dtypes():
    sd = load_state_dict(FIXTURES / "tiny_state_dict.pt")  # written by torch 2.13 (see script)
    np.testing.assert_array_equal(sd["w_t"], sd["w"].T)  # shared storage, transposed strides
    np.testing.assert_array_equal(sd["row"], sd["w"][1])  # shared storage with an offset
    np.testing.assert_array_equal(sd["i64"], np.arange(5))
    np.testing.assert_allclose(sd["f16"], np.linspace(-1, 1, 7), atol=1e-3)
    np.testing.assert_array_equal(sd["bf16"], np.array([1.5, -2.25, 3.0], np.float32))
    np.testing.assert_array_equal(sd["param"], np.ones((2, 3), np.float32))
    assert sd["w"].shape == (4, 6) and abs(float(sd["w"].std()) - 1) < 0.5


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_unpickler_refuses_foreign_globals(tmp_path):
    # zip format with a malicious data.pkl
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"x": _Evil()}, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"print is not allowed"):
        load_state_dict(evil)
    # legacy format: valid headers, then a malicious object
    legacy = tmp_path / "evil_legacy.pth"
    buf = io.BytesIO()
    for obj in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
        pickle.dump(obj, buf, protocol=2)
    pickle.dump({"x": _Evil()}, buf, protocol=2)
    legacy.write_bytes(buf.getvalue())
    with pytest.raises(UnsafePickleError):
        load_state_dict(legacy)
    # headers themselves may not carry globals either
    legacy.write_bytes(pickle.dumps(_Evil(), protocol=2))
    with pytest.raises(UnsafePickleError):
        load_state_dict(legacy)


# ------------------------------------------------------------------ numerical proofs

@pytest.fixture(scope="module")
def mobilenet():
    return MobileNetV2(), {"params": compact.mobilenet_params()}


def test_mobilenet_matches_torch_reference(mobilenet):
    model, params = mobilenet
    ref = json.loads((FIXTURES / "mobilenet_reference.json").read_text())
    x = np.random.default_rng(0).standard_normal((2, 224, 224, 3)).astype(np.float32)
    pooled, logits = jax.jit(model.apply)(params, x)
    np.testing.assert_allclose(np.asarray(logits)[:, :16], ref["logits_first16"], atol=1e-4)
    np.testing.assert_allclose(np.asarray(pooled)[:, :16], ref["pooled_first16"], atol=1e-4)
    np.testing.assert_allclose(np.asarray(logits).max(1), ref["logits_max"], atol=1e-4)
    assert np.asarray(logits).argmax(1).tolist() == ref["logits_argmax"]


def test_mobilenet_classifies_real_photos(mobilenet):
    model, params = mobilenet
    _, pre = build_backbone("compact")
    imgs = pre.images([Image.fromarray(skdata.chelsea()), Image.fromarray(skdata.coffee())])
    assert imgs.shape == (2, 224, 224, 3) and imgs.dtype == np.float32
    _, logits = jax.jit(model.apply)(params, imgs)
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    top = probs.argmax(1)
    assert [CLASSES[i] for i in top] == ["Egyptian cat", "espresso"]
    assert probs[0, top[0]] == pytest.approx(0.71, abs=0.05)
    assert probs[1, top[1]] == pytest.approx(0.99, abs=0.02)


def test_minilm_matches_sentence_transformers():
    ref = json.loads((FIXTURES / "minilm_reference.json").read_text())
    _, pre = build_backbone("compact")
    ids = pre.texts(ref["sentences"])
    for row, want in zip(ids, ref["input_ids"], strict=True):
        assert row[: len(want)].tolist() == want and not row[len(want):].any()
    model = MiniLM()
    emb = jax.jit(lambda p, t: model.apply(p, t, method=MiniLM.sentence_embedding))(
        {"params": compact.minilm_params()}, ids)
    diff = np.abs(np.asarray(emb) - np.array(ref["embeddings"])).max()
    assert diff < 1e-4, diff


def test_conversion_is_deterministic_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MAGICLENS_WEIGHTS_DIR", str(tmp_path))
    sd = load_state_dict(compact.mobilenet_checkpoint())
    a = serialization.msgpack_serialize(compact.mobilenet_params_from_torch(sd))
    b = serialization.msgpack_serialize(compact.mobilenet_params_from_torch(
        load_state_dict(compact.mobilenet_checkpoint())))
    assert a == b
    compact.mobilenet_params()
    (cache,) = tmp_path.glob("mobilenet_v2-*.msgpack")
    assert cache.read_bytes() == a
    with pytest.raises(ValueError, match="unmapped"):
        compact.mobilenet_params_from_torch({**sd, "extra.weight": np.zeros(1, np.float32)})


# ------------------------------------------------------------------ CompactBackbone

class _Parent(nn.Module):
    """How MagicLens holds the backbone: as a submodule attribute named ``backbone``."""

    def setup(self) -> None:
        self.backbone = CompactBackbone(embed_dim=32)

    def __call__(self, images, tokens):
        return self.backbone(images, tokens)

    def both(self, images, tokens):
        return self.backbone.encode_image(images), self.backbone.encode_text(tokens)


def test_compact_backbone_interface_and_pretrained_towers():
    model, pre = build_backbone("compact", embed_dim=32)
    assert isinstance(model, Backbone) and model.embed_dim == 32 and pre.image_size == 224
    imgs = pre.images([Image.fromarray(skdata.chelsea()), Image.fromarray(skdata.coffee())])
    toks = pre.texts(["a cat", "a cup of coffee"])
    assert toks.dtype == np.int32 and toks.shape == (2, pre.text_len)

    parent = _Parent()
    params = jax.jit(parent.init)(jax.random.key(0), *CompactBackbone.dummy_inputs(1, pre.text_len))
    params = {"params": {**params["params"],
                         "backbone": load_pretrained_towers(params["params"]["backbone"])}}
    img_e, txt_e = jax.jit(lambda p, i, t: parent.apply(p, i, t, method=_Parent.both))(
        params, imgs, toks)
    assert img_e.shape == (2, 32) and txt_e.shape == (2, 32)

    # The same subtree drives the standalone module; features -> projections == encode_*.
    sub = {"params": params["params"]["backbone"]}

    def run(method, x):
        return jax.jit(lambda p, x: model.apply(p, x, method=method))(sub, x)

    feats = run(CompactBackbone.image_features, imgs)
    tfeats = run(CompactBackbone.text_features, toks)
    assert feats.shape == (2, 1280) and tfeats.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(tfeats, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(run(CompactBackbone.project_image, feats), img_e, atol=1e-4)
    np.testing.assert_allclose(run(CompactBackbone.project_text, tfeats), txt_e, atol=1e-4)
    logits = run(CompactBackbone.image_logits, imgs)
    assert [CLASSES[i] for i in jnp.argmax(logits, -1).tolist()] == ["Egyptian cat", "espresso"]

    with pytest.raises(ValueError, match="does not match"):
        bad = dict(params["params"]["backbone"])
        bad["image_tower"] = {**bad["image_tower"], "classifier": {
            "kernel": jnp.zeros((1280, 10)), "bias": jnp.zeros(10)}}
        load_pretrained_towers(bad)


def test_preprocessor_validates_inputs():
    _, pre = build_backbone("compact")
    with pytest.raises(ValueError):
        pre.texts([])
    with pytest.raises(ValueError):
        pre.texts(["x" * 20_000])
    with pytest.raises(ValueError):
        build_backbone("resnet")
    # a portrait image is centre-cropped, not squashed
    tall = Image.fromarray(np.zeros((500, 300, 3), np.uint8))
    assert pre.images([tall]).shape == (1, 224, 224, 3)
