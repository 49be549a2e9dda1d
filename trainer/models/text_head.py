"""The text-query head: a text-only query ("a red double-decker bus") embedded in the index's
space, so text-to-image search runs against the same vectors as image queries.

    text query = unit( MLP(text features) + L·(text features) )

Why a head of its own, and not the paper's reading (a blank query image through the fusion
head): the index holds g(image) (the edit head's image embedding, or the transformer head's
(image, empty text) embedding). The instruction MLP of the edit head was trained to *move*
an image's g, not to place a description, and a blank image's g is one fixed point in the
space, so "blank image + instruction" lands near wherever that grey image sits (docs/
quality.md measures both: the blank image ranks far below this head). The head is trained
after the fusion stage, in the same job, contrastively against the final g(image) of the
mined (image, alt text / caption) pairs, with everything else frozen: the index, the edit
head and image queries are exactly what they would be without it.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from trainer.models.fusion import l2_normalize


class TextQueryHead(nn.Module):
    """[B, Ft] text-tower features -> [B, D] unit vectors in the index's space."""

    embed_dim: int
    hidden: int = 512
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, text_features: jax.Array) -> jax.Array:
        x = text_features.astype(jnp.float32)
        h = jax.nn.gelu(nn.Dense(self.hidden, dtype=self.dtype, name="hidden")(x))
        out = (nn.Dense(self.embed_dim, dtype=self.dtype, name="out")(h).astype(jnp.float32)
               + nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype,
                          name="linear")(x).astype(jnp.float32))
        return l2_normalize(out)
