"""Convert OpenAI CLIP weights (PyTorch names) into our scenic-named Flax CLIP tree.

    python -m trainer.weights.convert_clip IN OUT.msgpack [--config vit_b16|vit_l14]

IN is a state dict with OpenAI's names (``visual.transformer.resblocks.0.attn.in_proj_weight``,
``token_embedding.weight``, ``text_projection``, ``logit_scale`` …) saved by ``torch.save``
(zip or legacy format, read with our restricted unpickler), as ``.safetensors``, or as ``.npz``.
OpenAI's released ``ViT-B-16.pt`` is a TorchScript archive: re-save it once with
``torch.save(torch.jit.load(p, map_location="cpu").state_dict(), "vit_b16_state.pt")``.

OUT holds ``flax.serialization.msgpack_serialize`` of the CLIP subtree
(``{"visual", "text", "logit_scale"}``); under MagicLens it goes to ``params["clip"]``.

Why: base/large MagicLens sit on CLIP, and no CLIP weights install offline here, so users bring
their own; the mapping is bijective and checked against the initialised tree's shapes.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization, traverse_util

from trainer.models.clip import CLIP, CONFIGS, ClipConfig
from trainer.weights.torch_zip import load_state_dict

IGNORED_KEYS = {"input_resolution", "context_length", "vocab_size"}  # scalars in jit exports
_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")


def load_weights_file(path: str | Path) -> dict[str, np.ndarray]:
    """``{name: array}`` from .safetensors, .npz or a torch.save file (no arbitrary pickles)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return load_file(str(path))
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    return load_state_dict(path)


def infer_config(sd: dict[str, np.ndarray], head_dim: int = 64) -> ClipConfig:
    """Read a ViT CLIP's hyper-parameters off its tensor shapes (OpenAI: heads = width / 64)."""

    def layers(prefix: str) -> int:
        pat = re.compile(rf"^{re.escape(prefix)}transformer\.resblocks\.(\d+)\.")
        return 1 + max(int(m.group(1)) for k in sd if (m := pat.match(k)))

    width = sd["visual.conv1.weight"].shape[0]
    patch = sd["visual.conv1.weight"].shape[-1]
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width = sd["ln_final.weight"].shape[0]
    return ClipConfig(
        embed_dim=sd["text_projection"].shape[1], vocab_size=sd["token_embedding.weight"].shape[0],
        vision_features=width, vision_num_layers=layers("visual."), vision_patch_size=patch,
        text_features=text_width, text_num_heads=text_width // head_dim,
        text_num_layers=layers(""), vision_head_dim=head_dim, image_size=grid * patch,
        context_length=sd["positional_embedding"].shape[0])


def _block(name: str, v: np.ndarray, heads: int) -> dict[tuple[str, ...], np.ndarray]:
    """One resblock tensor -> flax leaves (relative to the block)."""
    if name == "attn.in_proj_weight":  # [3W, W] -> 3 x [W, heads, hd]
        w = v.shape[1]
        k = v.reshape(3, heads, w // heads, w).transpose(0, 3, 1, 2)
        return {("attn", n, "kernel"): k[i] for i, n in enumerate(("query", "key", "value"))}
    if name == "attn.in_proj_bias":  # [3W] -> 3 x [heads, hd]
        b = v.reshape(3, heads, -1)
        return {("attn", n, "bias"): b[i] for i, n in enumerate(("query", "key", "value"))}
    if name == "attn.out_proj.weight":  # [W_out, W_in] -> [heads, hd, W_out]
        return {("attn", "out", "kernel"): v.T.reshape(heads, -1, v.shape[0])}
    if name == "attn.out_proj.bias":
        return {("attn", "out", "bias"): v}
    m = re.fullmatch(r"(ln_1|ln_2)\.(weight|bias)", name)
    if m:
        return {(m.group(1), "scale" if m.group(2) == "weight" else "bias"): v}
    m = re.fullmatch(r"mlp\.(c_fc|c_proj)\.(weight|bias)", name)
    if m:
        return {("mlp", m.group(1), "kernel" if m.group(2) == "weight" else "bias"):
                v.T if m.group(2) == "weight" else v}
    raise KeyError(name)


def _ln(prefix: tuple[str, ...], kind: str, v: np.ndarray) -> dict[tuple[str, ...], np.ndarray]:
    return {(*prefix, "scale" if kind == "weight" else "bias"): v}


def convert_openai_clip(sd: dict[str, np.ndarray],
                        config: ClipConfig | None = None) -> dict[str, Any]:
    """OpenAI-named CLIP state dict -> nested float32 params of trainer.models.clip.CLIP.

    Raises on any tensor that has no place in the tree, any missing leaf, and any shape that
    differs from the initialised model's."""
    config = config or infer_config(sd)
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for key, value in sd.items():
        if key in IGNORED_KEYS:
            continue
        v = np.asarray(value, dtype=np.float32)
        new: dict[tuple[str, ...], np.ndarray]
        if m := _BLOCK.match(key):
            tower = "visual" if m.group(1) else "text"
            heads = config.vision_num_heads if m.group(1) else config.text_num_heads
            try:
                rel = _block(m.group(3), v, heads)
            except KeyError:
                raise ValueError(f"unexpected CLIP tensor {key}") from None
            new = {(tower, "transformer", f"resblocks_{m.group(2)}", *k): t
                   for k, t in rel.items()}
        elif key == "visual.conv1.weight":
            new = {("visual", "conv1", "kernel"): v.transpose(2, 3, 1, 0)}
        elif key in ("visual.class_embedding", "visual.positional_embedding"):
            new = {("visual", key.split(".")[1]): v}
        elif key == "visual.proj":
            new = {("visual", "proj", "kernel"): v}
        elif m := re.fullmatch(r"visual\.(ln_pre|ln_post)\.(weight|bias)", key):
            new = _ln(("visual", m.group(1)), m.group(2), v)
        elif m := re.fullmatch(r"ln_final\.(weight|bias)", key):
            new = _ln(("text", "ln_final"), m.group(1), v)
        elif key == "token_embedding.weight":
            new = {("text", "token_embedding", "embedding"): v}
        elif key == "positional_embedding":
            new = {("text", "positional_embedding"): v}
        elif key == "text_projection":
            new = {("text", "text_projection", "kernel"): v}
        elif key == "logit_scale":
            new = {("logit_scale",): v.reshape(())}
        else:
            raise ValueError(f"unexpected CLIP tensor {key}")
        for k, t in new.items():
            if k in flat:
                raise ValueError(f"two tensors map to {'/'.join(k)}")
            flat[k] = np.array(t, dtype=np.float32, order="C")  # keeps 0-d
    check_against_init(flat, config)
    return traverse_util.unflatten_dict(flat)


def expected_shapes(config: ClipConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Leaf path -> shape of a freshly initialised CLIP (no weights allocated)."""
    model = CLIP(config)
    tree = jax.eval_shape(model.init, jax.random.key(0), *model.dummy_inputs())["params"]
    return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(tree).items()}


def check_against_init(flat: dict[tuple[str, ...], np.ndarray], config: ClipConfig) -> None:
    want = expected_shapes(config)
    missing = sorted("/".join(k) for k in set(want) - set(flat))
    extra = sorted("/".join(k) for k in set(flat) - set(want))
    if missing or extra:
        raise ValueError(f"CLIP tree mismatch: missing {missing[:5]}, unexpected {extra[:5]}")
    bad = [f"{'/'.join(k)}: {flat[k].shape} != {s}" for k, s in want.items()
           if tuple(flat[k].shape) != s]
    if bad:
        raise ValueError("CLIP shape mismatch: " + "; ".join(bad[:5]))


def save_params(params: dict[str, Any], out: str | Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(serialization.msgpack_serialize(params))


def load_params(path: str | Path) -> dict[str, Any]:
    """The CLIP subtree written by this converter (msgpack: plain data, no code)."""
    return serialization.msgpack_restore(Path(path).read_bytes())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="OpenAI CLIP state dict -> scenic-named Flax msgpack")
    ap.add_argument("input", type=Path)
    ap.add_argument("output", type=Path)
    ap.add_argument("--config", choices=sorted(CONFIGS), default=None,
                    help="check against this config (default: infer from shapes)")
    args = ap.parse_args(argv)
    sd = load_weights_file(args.input)
    params = convert_openai_clip(sd, CONFIGS[args.config] if args.config else None)
    save_params(params, args.output)
    n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
    print(f"wrote {args.output} ({n:,} parameters)")


if __name__ == "__main__":
    main()
