"""A tiny real Flax stand-in backbone with the backbone interface (for fast tests).

It is not a mock of our code: it is a small genuine model (pixel pooling + Dense image tower,
embedding-bag text tower, linear projections) exercising the same MagicLens code paths, so a
training job runs in seconds; the production path builds the MobileNetV2 + MiniLM backbone
instead (minutes of XLA compilation on CPU). Used by tests/trainer (its conftest re-exports it)
and tests/training (training_fixtures).
"""

from __future__ import annotations

import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image


class StandInBackbone(nn.Module):
    embed_dim: int = 64
    image_feature_dim: int = 48
    text_feature_dim: int = 32
    vocab_size: int = 997

    def setup(self) -> None:
        self.img_tower = nn.Dense(self.image_feature_dim)
        self.tok_embed = nn.Embed(self.vocab_size, self.text_feature_dim)
        self.img_proj = nn.Dense(self.embed_dim)
        self.txt_proj = nn.Dense(self.embed_dim)

    def image_features(self, images: jax.Array) -> jax.Array:
        b, h, w, c = images.shape
        x = images.reshape(b, 8, h // 8, 8, w // 8, c).mean(axis=(2, 4)).reshape(b, -1)
        return jnp.tanh(self.img_tower(x))

    def text_features(self, tokens: jax.Array) -> jax.Array:
        mask = (tokens > 0).astype(jnp.float32)[..., None]
        e = self.tok_embed(tokens) * mask
        return e.sum(1) / jnp.maximum(mask.sum(1), 1.0)

    def project_image(self, f: jax.Array) -> jax.Array:
        return self.img_proj(f)

    def project_text(self, f: jax.Array) -> jax.Array:
        return self.txt_proj(f)

    def encode_image(self, images: jax.Array) -> jax.Array:
        return self.project_image(self.image_features(images))

    def encode_text(self, tokens: jax.Array) -> jax.Array:
        return self.project_text(self.text_features(tokens))

    def __call__(self, images: jax.Array, tokens: jax.Array):
        return self.encode_image(images), self.encode_text(tokens)


class StandInPreprocessor:
    image_size = 32
    max_len = 12

    def tokenize(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.max_len), np.int32)
        for i, t in enumerate(texts):
            ids = [1] + [2 + zlib.crc32(w.encode()) % 995 for w in t.lower().split()]
            ids = ids[: self.max_len]
            out[i, : len(ids)] = ids
        return out

    def texts(self, texts: list[str]) -> np.ndarray:
        return self.tokenize(texts)

    def images(self, images) -> np.ndarray:
        """PIL images -> [B,S,S,3] float32 in [0,1] (same contract as backbone.Preprocessor)."""
        out = []
        for pil in images:
            pil = pil.convert("RGB").resize((self.image_size, self.image_size), Image.BILINEAR)
            out.append(np.asarray(pil, np.float32) / 255.0)
        return np.stack(out)
