"""CLIP towers: scenic param names/shapes/counts, the OpenAI->scenic converter (against a numpy
re-implementation of OpenAI's forward pass on the torch-layout weights), and the BPE tokenizer."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import traverse_util

from trainer.models import clip_tokenizer
from trainer.models.backbone import build_backbone
from trainer.models.clip import CLIP, ClipConfig, clip_model
from trainer.models.clip_tokenizer import (
    EOT_ID,
    SOT_ID,
    ClipTokenizer,
    ClipVocabMissing,
    clip_tokenize_fn,
    find_vocab,
)
from trainer.weights.convert_clip import (
    convert_openai_clip,
    infer_config,
    load_params,
    load_weights_file,
    main,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TINY = ClipConfig(embed_dim=32, vocab_size=50, vision_features=128, vision_num_layers=2,
                  vision_patch_size=8, text_features=64, text_num_heads=1, text_num_layers=2,
                  image_size=32, context_length=12)


def _shapes(model: CLIP) -> dict[str, tuple[int, ...]]:
    tree = jax.eval_shape(model.init, jax.random.key(0), *model.dummy_inputs())["params"]
    return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


@pytest.mark.parametrize(("name", "total", "layers", "width", "patch", "embed"), [
    ("vit_b16", 149_620_737, 12, 768, 16, 512),
    ("vit_l14", 427_616_513, 24, 1024, 14, 768),
])
def test_clip_param_tree_matches_scenic(name, total, layers, width, patch, embed):
    shapes = _shapes(clip_model(name))
    assert sum(int(np.prod(s)) for s in shapes.values()) == total
    grid = 224 // patch
    heads = width // 64
    text_w = 512 if name == "vit_b16" else 768
    text_h = text_w // 64
    expect = {
        "logit_scale": (),
        "visual/conv1/kernel": (patch, patch, 3, width),
        "visual/class_embedding": (width,),
        "visual/positional_embedding": (grid * grid + 1, width),
        "visual/proj/kernel": (width, embed),
        f"visual/transformer/resblocks_{layers - 1}/attn/query/kernel": (width, heads, 64),
        f"visual/transformer/resblocks_{layers - 1}/attn/out/kernel": (heads, 64, width),
        "visual/transformer/resblocks_0/mlp/c_fc/kernel": (width, 4 * width),
        "visual/ln_post/scale": (width,),
        "text/token_embedding/embedding": (49408, text_w),
        "text/positional_embedding": (77, text_w),
        "text/text_projection/kernel": (text_w, embed),
        "text/ln_final/bias": (text_w,),
        "text/transformer/resblocks_11/attn/value/bias": (text_h, 64),
        "text/transformer/resblocks_11/mlp/c_proj/kernel": (4 * text_w, text_w),
    }
    for k, s in expect.items():
        assert shapes[k] == s, k
    assert not any("resblocks." in k or f"resblocks_{layers}" in k for k in shapes)
    assert sum("/attn/query/kernel" in k for k in shapes) == layers + 12


# ------------------------------------------------------------------ synthetic OpenAI checkpoint

def synthetic_openai_state(cfg: ClipConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def r(*shape, scale=0.05):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    sd: dict[str, np.ndarray] = {}

    def blocks(prefix: str, w: int, n: int):
        for i in range(n):
            p = f"{prefix}transformer.resblocks.{i}."
            sd.update({p + "attn.in_proj_weight": r(3 * w, w), p + "attn.in_proj_bias": r(3 * w),
                   p + "attn.out_proj.weight": r(w, w), p + "attn.out_proj.bias": r(w),
                   p + "ln_1.weight": 1 + r(w), p + "ln_1.bias": r(w),
                   p + "ln_2.weight": 1 + r(w), p + "ln_2.bias": r(w),
                   p + "mlp.c_fc.weight": r(4 * w, w), p + "mlp.c_fc.bias": r(4 * w),
                   p + "mlp.c_proj.weight": r(w, 4 * w), p + "mlp.c_proj.bias": r(w)})

    vw, tw, p = cfg.vision_features, cfg.text_features, cfg.vision_patch_size
    grid = cfg.image_size // p
    sd |= {"visual.conv1.weight": r(vw, 3, p, p), "visual.class_embedding": r(vw, scale=0.5),
           "visual.positional_embedding": r(grid * grid + 1, vw, scale=0.5),
           "visual.ln_pre.weight": 1 + r(vw), "visual.ln_pre.bias": r(vw),
           "visual.ln_post.weight": 1 + r(vw), "visual.ln_post.bias": r(vw),
           "visual.proj": r(vw, cfg.embed_dim, scale=0.2)}
    blocks("visual.", vw, cfg.vision_num_layers)
    sd |= {"token_embedding.weight": r(cfg.vocab_size, tw, scale=0.5),
           "positional_embedding": r(cfg.context_length, tw, scale=0.3),
           "ln_final.weight": 1 + r(tw), "ln_final.bias": r(tw),
           "text_projection": r(tw, cfg.embed_dim, scale=0.2),
           "logit_scale": np.array(4.6052, np.float32)}
    blocks("", tw, cfg.text_num_layers)
    return sd


def _np_ln(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _np_block(x, sd, p, heads, key_mask):
    """OpenAI ResidualAttentionBlock on torch-layout weights; key_mask [B, Lq, Lk] bool."""
    b, n, w = x.shape
    h = _np_ln(x, sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
    qkv = h @ sd[p + "attn.in_proj_weight"].T + sd[p + "attn.in_proj_bias"]
    q, k, v = (t.reshape(b, n, heads, w // heads) for t in np.split(qkv, 3, axis=-1))
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(w // heads)
    s = np.where(key_mask[:, None], s, -1e30)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    ctx = np.einsum("bhqk,bkhd->bqhd", a, v).reshape(b, n, w)
    x = x + ctx @ sd[p + "attn.out_proj.weight"].T + sd[p + "attn.out_proj.bias"]
    h = _np_ln(x, sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
    h = h @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"]
    h = h / (1 + np.exp(-1.702 * h))
    return x + h @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]


def np_openai_image(sd, cfg: ClipConfig, img: np.ndarray) -> np.ndarray:
    p, b = cfg.vision_patch_size, img.shape[0]
    g = cfg.image_size // p
    patches = img.reshape(b, g, p, g, p, 3).transpose(0, 1, 3, 5, 2, 4).reshape(b, g * g, -1)
    x = patches @ sd["visual.conv1.weight"].reshape(cfg.vision_features, -1).T
    cls = np.broadcast_to(sd["visual.class_embedding"], (b, 1, cfg.vision_features))
    x = np.concatenate([cls, x], 1) + sd["visual.positional_embedding"]
    x = _np_ln(x, sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"])
    allow = np.ones((b, x.shape[1], x.shape[1]), bool)
    for i in range(cfg.vision_num_layers):
        x = _np_block(x, sd, f"visual.transformer.resblocks.{i}.", cfg.vision_num_heads, allow)
    return _np_ln(x[:, 0], sd["visual.ln_post.weight"], sd["visual.ln_post.bias"]) @ sd[
        "visual.proj"]


def np_openai_text(sd, cfg: ClipConfig, ids: np.ndarray) -> np.ndarray:
    b, n = ids.shape
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"]
    allow = np.tril(np.ones((n, n), bool))[None] & (ids > 0)[:, None, :]
    for i in range(cfg.text_num_layers):
        x = _np_block(x, sd, f"transformer.resblocks.{i}.", cfg.text_num_heads, allow)
    x = _np_ln(x, sd["ln_final.weight"], sd["ln_final.bias"])
    return x[np.arange(b), ids.argmax(-1)] @ sd["text_projection"]


def test_converter_is_shape_exact_bijective_and_matches_openai_forward(tmp_path):
    sd = synthetic_openai_state(TINY)
    assert infer_config(sd) == TINY
    params = convert_openai_clip(sd)
    n_in = sum(v.size for v in sd.values())
    n_out = sum(v.size for v in jax.tree.leaves(params))
    assert n_in == n_out  # every number lands exactly once

    model = CLIP(TINY)
    rng = np.random.default_rng(1)
    img = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
    ids = np.zeros((2, TINY.context_length), np.int32)
    ids[0, :5] = [48, 7, 3, 9, 49]  # EOT = the largest id, padding after it
    ids[1, :8] = [48, 11, 2, 5, 6, 30, 1, 49]
    v = {"params": jax.tree.map(np.asarray, params)}
    got_i = np.asarray(model.apply(v, img, method=CLIP.encode_image))
    got_t = np.asarray(model.apply(v, ids, method=CLIP.encode_text))
    np.testing.assert_allclose(got_i, np_openai_image(sd, TINY, img), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(got_t, np_openai_text(sd, TINY, ids), atol=1e-4, rtol=1e-4)
    unit = np.asarray(model.apply(v, img, True, method=CLIP.encode_image))
    np.testing.assert_allclose(np.linalg.norm(unit, axis=-1), 1.0, atol=1e-5)

    # CLI round trip through .npz (safe format) -> msgpack.
    np.savez(tmp_path / "tiny.npz", **sd)
    main([str(tmp_path / "tiny.npz"), str(tmp_path / "tiny.msgpack")])
    back = load_params(tmp_path / "tiny.msgpack")
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert load_weights_file(tmp_path / "tiny.npz").keys() == sd.keys()


def test_converter_rejects_unknown_missing_and_misshaped():
    sd = synthetic_openai_state(TINY)
    with pytest.raises(ValueError, match="unexpected"):
        convert_openai_clip({**sd, "visual.extra.weight": np.zeros(3, np.float32)}, TINY)
    missing = dict(sd)
    del missing["visual.ln_post.bias"]
    with pytest.raises(ValueError, match="missing"):
        convert_openai_clip(missing, TINY)
    bad = {**sd, "text_projection": np.zeros((64, 31), np.float32)}
    with pytest.raises(ValueError, match="shape"):
        convert_openai_clip(bad, TINY)


# ------------------------------------------------------------------ tokenizer

def _tiny_vocab(tmp_path: Path) -> Path:
    merges = ["#version: 0.2", "c a", "ca t</w>", "t h", "th e</w>"]
    p = tmp_path / "bpe.txt.gz"
    p.write_bytes(gzip.compress("\n".join(merges).encode()))
    return p


def test_bpe_mechanics_on_a_tiny_vocab(tmp_path):
    tok = ClipTokenizer(_tiny_vocab(tmp_path))
    ids = tok(["The  CAT!", "x" * 5], context_length=6)
    cat, the = tok.encoder["cat</w>"], tok.encoder["the</w>"]
    assert ids[0].tolist() == [tok.sot, the, cat, tok.encoder["!</w>"], tok.eot, 0]
    assert ids[1, 0] == tok.sot and ids[1, -1] == tok.eot  # truncated, EOT kept last
    assert ids.dtype == np.int32


def test_empty_text_needs_no_vocab_and_other_text_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MAGICLENS_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.delenv("MAGICLENS_CLIP_VOCAB", raising=False)
    fn = clip_tokenize_fn(str(tmp_path / "absent.txt.gz"))
    out = fn(["", "  "])
    assert out.shape == (2, 77) and out[:, :2].tolist() == [[SOT_ID, EOT_ID]] * 2
    assert not out[:, 2:].any()
    # an installed open_clip package would supply the vocab: hide it, whatever is installed
    real_find_spec = clip_tokenizer.importlib.util.find_spec
    monkeypatch.setattr(clip_tokenizer.importlib.util, "find_spec",
                        lambda name, *a: None if name == "open_clip" else real_find_spec(name, *a))
    with pytest.raises(ClipVocabMissing) as e:
        find_vocab(str(tmp_path / "absent.txt.gz"))
    assert "bpe_simple_vocab_16e6.txt.gz" in str(e.value) and "open_clip_torch" in str(e.value)
    with pytest.raises(ClipVocabMissing):
        fn(["a photo"])


def test_clip_tokenizer_matches_open_clip_reference():
    try:
        vocab = find_vocab()
    except ClipVocabMissing as exc:  # ./taskw extracts it from the pinned open_clip_torch wheel
        pytest.fail(f"{exc} (./taskw installs it; run any task once)")
    ref = json.loads((FIXTURES / "clip_tokenizer_reference.json").read_text())
    tok = ClipTokenizer(vocab)
    assert (tok.sot, tok.eot) == (SOT_ID, EOT_ID)
    np.testing.assert_array_equal(tok(ref["texts"]), np.array(ref["ids"], np.int32))
    _model, pre = build_backbone("clip_b16")
    assert pre.texts(["a photo of a cat"])[0, :7].tolist() == [
        49406, 320, 1125, 539, 320, 2368, 49407]
