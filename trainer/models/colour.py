"""A joint RGB colour histogram computed inside the model from the preprocessed pixels.

Why: ImageNet features are trained to ignore colour (colour jitter is one of their
augmentations), so a frozen MobileNetV2 cannot tell a light from a dark skin tone or a red
from a blue car: on the demo corpus a linear probe recovers skin tone from the pooled
features 31-51% of the time (chance 20%) but 89% from an 8x8x8 histogram. The histogram is
part of the image tower's features, so training, the index and every query see the same
numbers whatever path the pixels took.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

POOL = 4  # average 4x4 blocks first: 224 px -> 56 px, so JPEG noise does not fill bins
# Bump when the histogram changes: cached features (trainer.features) key on it. Version 2
# (leave out a colour filling half the border, as background) lost 1.8 points R@1 and hurt
# flags, whose border is the flag itself: docs/quality.md.
VERSION = 1


def colour_histogram(images: jax.Array, mean: np.ndarray, std: np.ndarray,
                     bins: int) -> jax.Array:
    """[B,H,W,3] normalised pixels -> [B, bins**3] square-rooted colour frequencies.

    `mean`/`std` undo the preprocessor's normalisation. The square root (Hellinger map)
    makes the vector unit-length and keeps a small area of a telling colour visible
    beside a large background.
    """
    x = images.astype(jnp.float32) * jnp.asarray(std) + jnp.asarray(mean)
    b, h, w, c = x.shape
    hp, wp = h // POOL, w // POOL
    x = x[:, :hp * POOL, :wp * POOL].reshape(b, hp, POOL, wp, POOL, c).mean(axis=(2, 4))
    q = jnp.clip(jnp.floor(jnp.clip(x, 0.0, 1.0) * bins), 0, bins - 1).astype(jnp.int32)
    idx = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    idx = idx.reshape(b, -1)
    counts = jax.vmap(lambda i: jnp.bincount(i, length=bins ** 3))(idx)
    return jnp.sqrt(counts.astype(jnp.float32) / idx.shape[1])
