"""OpenAI CLIP (ViT image tower + causal text transformer) in Flax Linen, with scenic's
parameter names (``use_underscore_module_name=True``), so the released MagicLens checkpoints'
``clip/...`` subtree loads into it unchanged.

Why our own module instead of scenic: scenic is not installable here. Names, shapes and maths
follow scenic's ``projects/baselines/clip/layers.py`` (read for facts): LayerNorm eps 1e-5,
quick_gelu MLPs, pre-LN residual blocks, multi-head attention named like ``nn.SelfAttention``
(q/k/v/out DenseGeneral kernels ``[W, heads, 64]`` / ``[heads, 64, W]``), a padding+causal
text mask (token 0 = pad), EOT = argmax of the ids, and the pooled outputs projected without bias.

``encode_image``/``encode_text`` return the *unnormalised* projections by default, as
MagicLens calls scenic's CLIP with ``normalize=False``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LayerNorm = functools.partial(nn.LayerNorm, epsilon=1e-5)
IMAGE_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
IMAGE_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
CONTEXT_LENGTH = 77


@dataclass(frozen=True)
class ClipConfig:
    embed_dim: int
    vocab_size: int
    vision_features: int
    vision_num_layers: int
    vision_patch_size: int
    text_features: int
    text_num_heads: int
    text_num_layers: int
    vision_head_dim: int = 64
    image_size: int = 224
    context_length: int = CONTEXT_LENGTH

    @property
    def vision_num_heads(self) -> int:
        return self.vision_features // self.vision_head_dim


CONFIGS: dict[str, ClipConfig] = {
    "vit_b16": ClipConfig(embed_dim=512, vocab_size=49408, vision_features=768,
                          vision_num_layers=12, vision_patch_size=16, text_features=512,
                          text_num_heads=8, text_num_layers=12),
    "vit_l14": ClipConfig(embed_dim=768, vocab_size=49408, vision_features=1024,
                          vision_num_layers=24, vision_patch_size=14, text_features=768,
                          text_num_heads=12, text_num_layers=12),
    # The released tree at test size (same names, nesting and head layout; tiny widths, 32 px,
    # CLIP's real vocabulary and context so the real tokenizer feeds it): tests and CI run
    # import -> serve -> fine-tune through exactly the base/large code path on 2 CPU cores.
    "vit_tiny": ClipConfig(embed_dim=32, vocab_size=49408, vision_features=64,
                           vision_num_layers=2, vision_patch_size=8, text_features=64,
                           text_num_heads=2, text_num_layers=2, vision_head_dim=32,
                           image_size=32),
}


def quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ch = x.shape[-1]
        x = quick_gelu(nn.Dense(4 * ch, name="c_fc")(x))
        return nn.Dense(ch, name="c_proj")(x)


class ResidualAttentionBlock(nn.Module):
    num_heads: int

    @nn.compact
    def __call__(self, x: jax.Array, attn_mask: jax.Array | None = None) -> jax.Array:
        xn = LayerNorm(name="ln_1")(x)
        x = x + nn.MultiHeadDotProductAttention(self.num_heads, deterministic=True, name="attn")(
            xn, xn, mask=attn_mask)
        return x + MLP(name="mlp")(LayerNorm(name="ln_2")(x))


class Transformer(nn.Module):
    num_layers: int
    num_heads: int

    @nn.compact
    def __call__(self, x: jax.Array, attn_mask: jax.Array | None = None) -> jax.Array:
        for i in range(self.num_layers):
            x = ResidualAttentionBlock(self.num_heads, name=f"resblocks_{i}")(x, attn_mask)
        return x


class VisionTransformer(nn.Module):
    patch_size: int
    features: int
    num_layers: int
    num_heads: int
    out_features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(self.features, (self.patch_size, self.patch_size),
                    strides=(self.patch_size, self.patch_size), use_bias=False,
                    name="conv1")(x)
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        scale = 1.0 / np.sqrt(self.features)
        cls = self.param("class_embedding", nn.initializers.normal(stddev=scale),
                         (self.features,))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.features)), x], axis=1)
        pos = self.param("positional_embedding", nn.initializers.normal(stddev=scale),
                         (x.shape[1], self.features))
        x = LayerNorm(name="ln_pre")(x + pos[None])
        x = Transformer(self.num_layers, self.num_heads, name="transformer")(x)
        x = LayerNorm(name="ln_post")(x[:, 0])
        return nn.Dense(self.out_features, use_bias=False, name="proj")(x)


class TextEncoder(nn.Module):
    vocab_size: int
    features: int
    num_layers: int
    num_heads: int
    out_features: int

    @nn.compact
    def __call__(self, text: jax.Array) -> jax.Array:
        pos = self.param("positional_embedding", nn.initializers.zeros,
                         (text.shape[1], self.features))
        mask = nn.combine_masks(nn.make_attention_mask(text > 0, text > 0),
                                nn.make_causal_mask(text))
        x = nn.Embed(self.vocab_size, self.features, name="token_embedding")(text) + pos[None]
        x = Transformer(self.num_layers, self.num_heads, name="transformer")(x, mask)
        x = LayerNorm(name="ln_final")(x)
        x = x[jnp.arange(x.shape[0]), jnp.argmax(text, axis=-1)]
        return nn.Dense(self.out_features, use_bias=False, name="text_projection")(x)


class CLIP(nn.Module):
    """CLIP towers; params ``visual/...``, ``text/...``, ``logit_scale`` as in scenic."""

    config: ClipConfig

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def setup(self) -> None:
        c = self.config
        self.visual = VisionTransformer(c.vision_patch_size, c.vision_features,
                                        c.vision_num_layers, c.vision_num_heads, c.embed_dim)
        self.text = TextEncoder(c.vocab_size, c.text_features, c.text_num_layers,
                                c.text_num_heads, c.embed_dim)
        self.logit_scale = self.param("logit_scale", nn.initializers.zeros, ())

    def encode_image(self, images: jax.Array, normalize: bool = False) -> jax.Array:
        """[B,H,W,3] CLIP-normalised images -> [B, embed_dim]."""
        x = self.visual(images)
        return x / jnp.linalg.norm(x, axis=-1, keepdims=True) if normalize else x

    def encode_text(self, tokens: jax.Array, normalize: bool = False) -> jax.Array:
        """[B,77] int32 BPE ids (0 = padding, EOT = largest id) -> [B, embed_dim]."""
        x = self.text(tokens)
        return x / jnp.linalg.norm(x, axis=-1, keepdims=True) if normalize else x

    def __call__(self, images: jax.Array, tokens: jax.Array,
                 normalize: bool = False) -> tuple[jax.Array, jax.Array]:
        return self.encode_image(images, normalize), self.encode_text(tokens, normalize)

    def dummy_inputs(self, batch: int = 1) -> tuple[jax.Array, jax.Array]:
        """Inputs of the shapes the param tree is defined for (positional tables depend on them)."""
        c = self.config
        return (jnp.zeros((batch, c.image_size, c.image_size, 3), jnp.float32),
                jnp.zeros((batch, c.context_length), jnp.int32))


def clip_model(name: str) -> CLIP:
    """``vit_b16`` or ``vit_l14``."""
    try:
        return CLIP(CONFIGS[name])
    except KeyError:
        raise ValueError(f"unknown CLIP config {name!r}; known: {sorted(CONFIGS)}") from None
