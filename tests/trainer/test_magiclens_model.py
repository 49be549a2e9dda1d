"""MagicLens head: released param names/shapes, numerics, released-file round trip & safety."""

from __future__ import annotations

import os
import pickle

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.models.magiclens import (
    CONFIGS,
    MagicLensConfig,
    abstract_params,
    arch_meta,
    build_model,
    config_for_checkpoint,
    init_params,
)
from trainer.weights.formats import looks_like_pickle, pickle_refusal
from trainer.weights.released import (
    UnsafePickleError,
    load_payload,
    load_released,
    restore_payload,
    save_released_format,
)
from trainer.weights.released import main as convert_released


def expected_head_shapes(d: int, heads: int) -> dict[str, tuple[int, ...]]:
    """The released fusion-head + pooler tree, written out from the brief's table."""
    h, ph = d // heads, 4 * d // heads
    out: dict[str, tuple[int, ...]] = {}
    for i in range(4):
        p = f"multimodal_encoder/x_layers_{i}"
        out |= {f"{p}/layer_norm/scale": (d,), f"{p}/layer_norm/bias": (d,)}
        for n in ("query", "key", "value"):
            out |= {f"{p}/self_attention/{n}/w": (d, heads, h),
                    f"{p}/self_attention/{n}/b": (heads, h)}
        out |= {f"{p}/self_attention/post/w": (d, heads, h), f"{p}/self_attention/post/b": (d,)}
        f = f"{p}/ff_layer"
        out |= {f"{f}/layer_norm/scale": (d,), f"{f}/layer_norm/bias": (d,),
                f"{f}/ffn_layer1/linear/w": (d, 4 * d), f"{f}/ffn_layer1/bias/b": (4 * d,),
                f"{f}/ffn_layer2/linear/w": (4 * d, d), f"{f}/ffn_layer2/bias/b": (d,)}
    p = "contrastive_multimodal_pooler"
    out[f"{p}/pooling_attn_query"] = (1, d)
    for n in ("query", "key", "value"):
        out |= {f"{p}/pool_attn/{n}/w": (d, heads, ph), f"{p}/pool_attn/{n}/b": (heads, ph)}
    out |= {f"{p}/pool_attn/post/w": (d, heads, ph), f"{p}/pool_attn/post/b": (d,),
            f"{p}/pool_attn/per_dim_scale/per_dim_scale": (ph,),
            f"{p}/pool_attn_ln/scale": (d,), f"{p}/pool_attn_ln/bias": (d,)}
    return out


def flat_shapes(tree) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(tree, sep="/").items()}


@pytest.mark.parametrize("name,d,heads", [("base", 512, 8), ("large", 768, 16)])
def test_head_tree_matches_released_names(name, d, heads, standin_backbone):
    model, pre = build_model(name, backbone=standin_backbone(d))
    shapes = flat_shapes(abstract_params(model, pre.image_size))
    head = {k: v for k, v in shapes.items() if not k.startswith("clip/")}
    assert head == expected_head_shapes(d, heads)
    n_head = sum(int(np.prod(s)) for s in head.values())
    # base head ~16.8M + CLIP-B/16 149.6M = 166M; large head ~37.8M + CLIP-L/14 427.6M = 465M
    assert n_head == {"base": 16_812_288, "large": 37_801_152}[name]


def _reference_forward(p: dict, img: np.ndarray, txt: np.ndarray, heads: int,
                       residual: bool = False) -> np.ndarray:
    """Independent numpy forward of the released architecture (brief + model.py facts)."""
    def ln(x, q):
        m = x.mean(-1, keepdims=True)
        v = ((x - m) ** 2).mean(-1, keepdims=True)
        return (x - m) / np.sqrt(v + 1e-6) * (1 + q["scale"]) + q["bias"]

    def attn(qx, kx, q, pds=False):
        Q = np.einsum("btd,dnh->btnh", qx, q["query"]["w"]) + q["query"]["b"]
        K = np.einsum("bsd,dnh->bsnh", kx, q["key"]["w"]) + q["key"]["b"]
        V = np.einsum("bsd,dnh->bsnh", kx, q["value"]["w"]) + q["value"]["b"]
        h = Q.shape[-1]
        if pds:
            sp = np.log1p(np.exp(q["per_dim_scale"]["per_dim_scale"]))
            Q = Q * 1.442695041 / np.sqrt(h) * sp
        else:
            Q = Q * h**-0.5
        lg = np.einsum("btnh,bsnh->bnts", Q, K)
        lg = 50 * np.tanh(lg / 50)
        pr = np.exp(lg - lg.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        o = np.einsum("bnts,bsnh->btnh", pr, V)
        return np.einsum("btnh,dnh->btd", o, q["post"]["w"]) + q["post"]["b"]

    x = np.stack([img, txt], 1)
    for i in range(4):
        lp = p["multimodal_encoder"][f"x_layers_{i}"]
        h = ln(x, lp["layer_norm"])
        x = x + attn(h, h, lp["self_attention"])
        f = lp["ff_layer"]
        h = ln(x, f["layer_norm"])
        h = np.maximum(h @ f["ffn_layer1"]["linear"]["w"] + f["ffn_layer1"]["bias"]["b"], 0)
        x = x + h @ f["ffn_layer2"]["linear"]["w"] + f["ffn_layer2"]["bias"]["b"]
    pp = p["contrastive_multimodal_pooler"]
    qt = np.broadcast_to(pp["pooling_attn_query"][None], (x.shape[0], 1, x.shape[-1]))
    o = ln(attn(qt, x, pp["pool_attn"], pds=True), pp["pool_attn_ln"])[:, 0]
    if residual:
        o = o + img
    return o / np.sqrt((o * o).sum(-1, keepdims=True) + 1e-12)


@pytest.mark.parametrize("residual", [False, True])
def test_fuse_matches_numpy_reference(standin_backbone, residual):
    model, pre = build_model("compact", backbone=standin_backbone(32),
                             config=MagicLensConfig("compact", 32, 4, image_residual=residual))
    params = init_params(model, jax.random.PRNGKey(0), pre.image_size)
    # Perturb the zero-initialised LN/per-dim scales so (1+scale) and softplus are exercised.
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda a: np.asarray(a) + 0.1 * rng.standard_normal(a.shape),
                                    params)
    img = rng.standard_normal((3, 32)).astype(np.float32)
    txt = rng.standard_normal((3, 32)).astype(np.float32)
    ours = model.apply({"params": params}, jnp.asarray(img), jnp.asarray(txt),
                       method=model.fuse)
    ref = _reference_forward(jax.tree_util.tree_map(np.asarray, params), img, txt, heads=4,
                             residual=residual)
    np.testing.assert_allclose(np.asarray(ours), ref, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(ours), axis=-1), 1.0, atol=1e-5)


def test_image_residual_starts_as_image_only_and_learns_from_text(standin_backbone):
    """compact's residual head starts at exactly the image embedding (zero pooler output), so
    training starts from image-only retrieval; once the pooler's LN scale moves off -1 the
    instruction changes the embedding."""
    model, pre = build_model("compact", backbone=standin_backbone(32),
                             config=MagicLensConfig("compact", 32, 4, image_residual=True))
    params = init_params(model, jax.random.PRNGKey(0), pre.image_size)
    rng = np.random.default_rng(1)
    img = rng.standard_normal((3, 32)).astype(np.float32)
    txt_a, txt_b = (rng.standard_normal((3, 32)).astype(np.float32) for _ in range(2))
    fuse = lambda p, t: np.asarray(model.apply({"params": p}, img, t, method=model.fuse))  # noqa: E731
    unit = img / np.linalg.norm(img, axis=-1, keepdims=True)
    np.testing.assert_allclose(fuse(params, txt_a), unit, atol=1e-6)
    np.testing.assert_allclose(fuse(params, txt_b), unit, atol=1e-6)
    moved = jax.tree_util.tree_map(np.array, params)
    moved["contrastive_multimodal_pooler"]["pool_attn_ln"]["scale"] += 0.05
    assert np.abs(fuse(moved, txt_a) - fuse(moved, txt_b)).max() > 1e-3


def test_checkpoint_arch_is_recorded_and_old_exports_keep_theirs():
    assert CONFIGS["compact"].head == "edit" and CONFIGS["compact"].colour_bins == 8
    assert CONFIGS["compact_transformer"].image_residual
    assert not CONFIGS["base"].image_residual and not CONFIGS["large"].image_residual
    for name, cfg in CONFIGS.items():
        assert config_for_checkpoint({"config": name, **arch_meta(cfg)}) == cfg
    # An export from before `arch` was recorded was trained without the residual, and with
    # the transformer head and no colour features.
    old = config_for_checkpoint({"config": "compact"})
    assert not old.image_residual and old.head == "transformer" and old.colour_bins == 0
    # An export that recorded `arch` before `head`/`colour_bins` existed keeps the
    # transformer head it was trained with.
    before = {k: v for k, v in arch_meta(CONFIGS["compact_transformer"])["arch"].items()
              if k not in ("head", "colour_bins", "text_hidden")}
    assert config_for_checkpoint({"config": "compact", "arch": before}) == CONFIGS[
        "compact_transformer"]


def test_edit_head_starts_at_image_only_and_targets_are_images(standin_backbone):
    cfg = MagicLensConfig("compact", 64, 4, head="edit")
    model, pre = build_model("compact", backbone=standin_backbone(64), config=cfg)
    params = init_params(model, jax.random.PRNGKey(3), pre.image_size)
    assert "edit_head" in params and "multimodal_encoder" not in params
    imgs = jnp.asarray(np.random.default_rng(1).random((3, 32, 32, 3), np.float32))
    toks = jnp.asarray(pre.tokenize(["make it red", "as a drawing", ""]))
    q = np.asarray(model.apply({"params": params}, imgs, toks, method=model.encode_query))
    t = np.asarray(model.apply({"params": params}, imgs, method=model.encode_target))
    # Untrained, the instruction moves nothing: query == its own image's target embedding.
    np.testing.assert_allclose(q, t, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(t, axis=-1), 1.0, atol=1e-5)
    # The frozen orthonormal projection keeps the backbone's cosines (up to JL noise).
    feats = np.asarray(model.apply({"params": params}, imgs,
                                   method=model.image_features_only))
    unit = feats / np.linalg.norm(feats, axis=-1, keepdims=True)
    assert np.abs((t @ t.T) - (unit @ unit.T)).max() < 0.35
    # Once its last layer is non-zero the instruction does move the query.
    moved = jax.tree_util.tree_map(np.array, params)
    moved["edit_head"]["text_out"]["kernel"] += 0.1
    q2 = np.asarray(model.apply({"params": moved}, imgs, toks, method=model.encode_query))
    assert np.abs(q2[0] - q2[1]).max() > 1e-3


def test_colour_histogram_sees_colour_that_the_pooled_features_ignore():
    from trainer.models.backbone import IMAGENET_MEAN, IMAGENET_STD
    from trainer.models.colour import colour_histogram

    def norm(rgb):
        img = np.zeros((1, 224, 224, 3), np.float32)
        img[:, 60:160, 60:160] = rgb
        return jnp.asarray((img - IMAGENET_MEAN) / IMAGENET_STD)

    light, dark = (np.asarray(colour_histogram(norm(c), IMAGENET_MEAN, IMAGENET_STD, 8))[0]
                   for c in ((0.95, 0.8, 0.7), (0.35, 0.2, 0.1)))
    assert light.shape == (512,) and np.linalg.norm(light) == pytest.approx(1.0, abs=1e-5)
    assert float(light @ dark) < 0.9  # share only the black background bin
    assert np.argmax(light) == 0 and np.count_nonzero(light) >= 2


def test_encode_target_is_query_with_empty_text(standin_backbone):
    model, pre = build_model("compact", backbone=standin_backbone(64),
                             config=MagicLensConfig("compact", 64, 4))
    params = {"params": init_params(model, jax.random.PRNGKey(1), pre.image_size)}
    imgs = jnp.asarray(np.random.default_rng(0).random((2, 32, 32, 3), np.float32))
    t = model.apply(params, imgs, method=model.encode_target)
    q = model.apply(params, imgs, jnp.asarray(pre.tokenize(["", ""])), method=model.encode_query)
    np.testing.assert_allclose(np.asarray(t), np.asarray(q), atol=1e-6)


def test_released_format_round_trip(tmp_path, standin_backbone):
    model, pre = build_model("base", backbone=standin_backbone(512))
    params = init_params(model, jax.random.PRNGKey(2), pre.image_size)
    path = tmp_path / "magic_lens_clip_base.pkl"
    save_released_format(params, path)
    loaded = load_released(path, abstract_params(model, pre.image_size))
    a = flax.traverse_util.flatten_dict(params)
    b = flax.traverse_util.flatten_dict(loaded)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), b[k])


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("obj", [_Exploit(), {"params": b"x"}, [b"x"], "text", 42])
def test_refuses_anything_but_bytes(tmp_path, obj):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=4))
    with pytest.raises(UnsafePickleError):
        load_payload(path)


def test_refuses_reduce_in_protocol0(tmp_path):
    path = tmp_path / "evil0.pkl"
    path.write_bytes(b"cos\nsystem\n(S'echo hi'\ntR.")
    with pytest.raises(UnsafePickleError):
        load_payload(path)


def test_tree_mismatch_is_an_error(tmp_path, standin_backbone):
    model, pre = build_model("base", backbone=standin_backbone(512))
    params = init_params(model, jax.random.PRNGKey(3), pre.image_size)
    params["multimodal_encoder"]["x_layers_0"]["layer_norm"]["scale"] = np.zeros(7, np.float32)
    path = tmp_path / "bad.pkl"
    save_released_format(params, path)
    with pytest.raises(ValueError, match="layer_norm/scale"):
        load_released(path, abstract_params(model, pre.image_size))


def test_safe_format_is_the_payload_checked_and_cast():
    """`magiclens models import`'s format: to_bytes(params) alone. bfloat16 exports are cast
    to the model's dtype; anything that is not a numeric array, or not msgpack, is refused."""
    target = {"w": jax.ShapeDtypeStruct((2, 3), jnp.float32)}
    half = flax.serialization.to_bytes({"w": np.ones((2, 3), jnp.bfloat16)})
    got = restore_payload(half, target)["w"]
    assert got.dtype == np.float32 and (got == 1).all()
    for bad, msg in (({"w": np.zeros((2, 3), bool)}, "not a numeric array"),
                     ({"w": "text"}, "not a numeric array"),
                     ({"v": np.zeros((2, 3), np.float32)}, "missing \\['w'\\]")):
        with pytest.raises(ValueError, match=msg):
            restore_payload(flax.serialization.msgpack_serialize(bad), target)
    with pytest.raises(ValueError, match="a pickle, not a flax msgpack"):
        restore_payload(pickle.dumps(half, protocol=4), target)
    with pytest.raises(ValueError, match="not a flax msgpack"):
        restore_payload(b"PK\x03\x04 a zip", target)


def test_pickles_are_told_from_msgpack_by_name_and_first_bytes():
    payload = flax.serialization.to_bytes({"a": np.zeros(2, np.float32)})
    assert not looks_like_pickle(payload[:16], "x.msgpack")
    assert not looks_like_pickle(flax.serialization.msgpack_serialize({})[:16], "x.msgpack")
    for proto in (2, 3, 4, 5):
        assert looks_like_pickle(pickle.dumps(payload, protocol=proto)[:16], "x.msgpack")
    assert looks_like_pickle(payload[:16], "magic_lens_clip_base.pkl")
    assert "--config large --msgpack magic_lens_clip_large.msgpack" in pickle_refusal(
        "magic_lens_clip_large.pkl", "large")


def test_converter_writes_the_checked_payload(tmp_path, monkeypatch, capsys):
    model, pre = build_model("clip_tiny")
    params = init_params(model, jax.random.PRNGKey(4), pre.image_size)
    save_released_format(params, tmp_path / "m.pkl")
    convert_released([str(tmp_path / "m.pkl"), "--config", "clip_tiny",
                      "--msgpack", str(tmp_path / "m.msgpack")])
    assert "magiclens models import" in capsys.readouterr().out
    assert (tmp_path / "m.msgpack").read_bytes() == flax.serialization.to_bytes(
        jax.device_get(params))
    with pytest.raises(ValueError, match="param tree mismatch"):  # checked against the config
        convert_released([str(tmp_path / "m.pkl"), "--config", "base",
                          "--msgpack", str(tmp_path / "b.msgpack")])
    assert not (tmp_path / "b.msgpack").exists()


def _shift_after_training_starts(model, pre, params, imgs, instructions) -> np.ndarray:
    """Checks that the untrained edit head leaves each query at its own image, then returns
    the instructions' shifts once the head's last layer is non-zero ([B, D])."""
    toks = jnp.asarray(pre.tokenize(instructions))
    g = np.asarray(model.apply({"params": params}, imgs, method=model.encode_target))
    q0 = np.asarray(model.apply({"params": params}, imgs, toks, method=model.encode_query))
    np.testing.assert_allclose(q0, g, atol=1e-6)
    moved = jax.tree_util.tree_map(np.array, params)
    moved["edit_head"]["text_out"]["kernel"] += 0.1
    text = np.asarray(model.apply({"params": moved}, toks, method=model.text_features_only))
    return np.asarray(model.apply({"params": moved}, jnp.asarray(g), jnp.asarray(text),
                                  method=lambda m, a, b: m.edit_head.shift(a, b)))


def test_image_conditioned_edit_head_shifts_each_image_differently(standin_backbone):
    """With `edit_image_conditioned` the same instruction moves two images by different
    vectors (without it, by one vector); untrained it still starts at image-only."""
    imgs = jnp.asarray(np.random.default_rng(2).random((2, 32, 32, 3), np.float32))
    shifts = {}
    for cond in (False, True):
        cfg = MagicLensConfig("compact", 64, 4, head="edit", edit_image_conditioned=cond)
        model, pre = build_model("compact", backbone=standin_backbone(64), config=cfg)
        params = init_params(model, jax.random.PRNGKey(3), pre.image_size)
        assert ("image_hidden" in params["edit_head"]) is cond
        delta = _shift_after_training_starts(model, pre, params, imgs, ["make it red"] * 2)
        shifts[cond] = float(np.abs(delta[0] - delta[1]).max())
    assert shifts[False] < 1e-6 < 1e-3 < shifts[True]


def test_edit_shift_dim_moves_the_query_only_along_its_first_axes(standin_backbone):
    """`edit_shift_dim`: the instruction's shift (and the colour term) live on the first axes
    of the embedding and are zero on the rest; untrained, query == its own image."""
    cfg = MagicLensConfig("compact", 64, 4, head="edit", edit_shift_dim=16)
    model, pre = build_model("compact", backbone=standin_backbone(64), config=cfg)
    params = init_params(model, jax.random.PRNGKey(3), pre.image_size)
    assert params["edit_head"]["text_out"]["kernel"].shape[-1] == 16
    imgs = jnp.asarray(np.random.default_rng(2).random((2, 32, 32, 3), np.float32))
    delta = _shift_after_training_starts(model, pre, params, imgs, ["make it red", "as a drawing"])
    assert delta.shape == (2, 64)
    assert np.abs(delta[:, :16]).max() > 1e-3 and not delta[:, 16:].any()


def test_edit_shift_dim_wider_than_the_embedding_is_refused(standin_backbone):
    cfg = MagicLensConfig("compact", 64, 4, head="edit", edit_shift_dim=65)
    model, pre = build_model("compact", backbone=standin_backbone(64), config=cfg)
    with pytest.raises(ValueError, match=r"edit_shift_dim must be in 0\.\.64"):
        init_params(model, jax.random.PRNGKey(3), pre.image_size)
