"""The "edit" head: an instruction moves the query image's embedding; targets are images.

    g(image) = unit( P·unit(pooled) + C·colour )        P frozen orthonormal, C learned (0 at start)
    query    = unit( g(query image) + MLP(instruction[, g]) ) last MLP layer starts at zero
    target   = g(target image)

Why this shape and not the paper's transformer over [image, text] tokens: with a frozen
ImageNet tower and a few thousand mined triples, the transformer head (and a residual
around it) never beat plain search-by-image on the demo corpus (R@1 30.4 vs 29.2), while
this head, trained without query negatives and with same-page hard negatives, reaches about
+20 points R@1 (docs/quality.md has every configuration tried). Starting exactly at image-only
retrieval (C = 0, MLP output 0) means training can only move away from a sound baseline, and
the frozen projection keeps "another photo of the same thing" as good as the backbone.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from trainer.models.fusion import l2_normalize


class EditHead(nn.Module):
    """`image(features)` -> g; `query(g, text_features)` -> query embedding (both unit)."""

    embed_dim: int
    colour_dim: int = 0  # trailing feature dims that are the colour histogram
    hidden: int = 512
    # The shift also sees the query's g: "its neighbour's flag" or "darker skin" moves each
    # image differently, which a shift from the instruction alone cannot express.
    image_conditioned: bool = False
    # The instruction (and the colour term) move the embedding only along its first
    # `shift_dim` axes (0 = all of them); with the PCA projection those are the directions
    # the images span most. In a wide space (1,280 = a rotation of the backbone's own
    # features) Adam's per-coordinate steps otherwise grow the shift along axes no image
    # uses, which makes every candidate score alike (docs/quality.md, round 6).
    shift_dim: int = 0
    dtype: Any = jnp.float32

    def setup(self) -> None:
        if not 0 <= self.shift_dim <= self.embed_dim:
            raise ValueError(f"edit_shift_dim must be in 0..{self.embed_dim} (the embedding's "
                             f"width), not {self.shift_dim}")
        self.pooled_proj = FrozenDense(self.embed_dim, dtype=self.dtype)
        if self.colour_dim:
            self.colour_proj = nn.Dense(self.shift_dim or self.embed_dim, use_bias=False,
                                        dtype=self.dtype,
                                        kernel_init=nn.initializers.zeros)
        self.text_hidden = nn.Dense(self.hidden, dtype=self.dtype)
        if self.image_conditioned:
            self.image_hidden = nn.Dense(self.hidden, use_bias=False, dtype=self.dtype)
        self.text_out = nn.Dense(self.shift_dim or self.embed_dim, dtype=self.dtype,
                                 kernel_init=nn.initializers.zeros)

    def image(self, features: jax.Array) -> jax.Array:
        """[B, F] tower features (pooled, then `colour_dim` histogram dims) -> [B, D] unit."""
        f = features.astype(jnp.float32)
        pooled = f[:, :f.shape[1] - self.colour_dim]
        # Frozen: the orthonormal map keeps the backbone's cosines (so image-only retrieval
        # is intact) and gradients cannot trade them away for the training triples. Only the
        # map is frozen: when the tower's last layer trains (trainer.tower), its gradient
        # flows through the map into the pooled features.
        g = self.pooled_proj(l2_normalize(pooled)).astype(jnp.float32)
        if self.colour_dim:
            g = g + self._widen(self.colour_proj(f[:, f.shape[1] - self.colour_dim:]))
        return l2_normalize(g)

    def shift(self, image_emb: jax.Array, text_features: jax.Array) -> jax.Array:
        """[B, D] the instruction's move (from the text alone unless `image_conditioned`)."""
        pre = self.text_hidden(text_features.astype(jnp.float32))
        if self.image_conditioned:
            pre = pre + self.image_hidden(image_emb.astype(jnp.float32))
        return self._widen(self.text_out(jax.nn.gelu(pre)))

    def _widen(self, x: jax.Array) -> jax.Array:
        """A learned term on the first `shift_dim` axes, zero on the rest."""
        x = x.astype(jnp.float32)
        pad = self.embed_dim - x.shape[-1]
        return jnp.pad(x, ((0, 0), (0, pad))) if pad > 0 else x

    def query(self, image_emb: jax.Array, text_features: jax.Array) -> jax.Array:
        """Unit query embedding: the image's g moved by the instruction."""
        return l2_normalize(image_emb.astype(jnp.float32) + self.shift(image_emb, text_features))

    def __call__(self, image_features: jax.Array, text_features: jax.Array) -> jax.Array:
        return self.query(self.image(image_features), text_features)


class FrozenDense(nn.Module):
    """A bias-free Dense whose kernel gets no gradient (its input still does). Same param
    tree as nn.Dense(use_bias=False): `kernel [in, out]`."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", _scaled_orthogonal, (x.shape[-1], self.features),
                            jnp.float32)
        return x.astype(self.dtype) @ jax.lax.stop_gradient(kernel).astype(self.dtype)


def _scaled_orthogonal(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32):
    """Orthonormal columns scaled by sqrt(in/out): a unit input maps to about unit length."""
    fan_in, fan_out = shape
    return nn.initializers.orthogonal(scale=(fan_in / fan_out) ** 0.5)(key, shape, dtype)
