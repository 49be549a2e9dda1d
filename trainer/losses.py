"""Contrastive losses: MagicLens InfoNCE with query negatives, and CLIP's symmetric loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def info_nce_query_negatives(
    queries: jax.Array, targets: jax.Array, query_targets: jax.Array, temperature: jax.Array
) -> jax.Array:
    """Mean over i of -log softmax_i over [targets; query images as targets] at index i.

    queries, targets, query_targets: [B, D] unit vectors (query_targets[j] is query j's image
    encoded as a target). The query's own image is a negative so "return the identical image"
    never wins (the paper's "query negatives").
    """
    q = queries.astype(jnp.float32)
    cands = jnp.concatenate([targets, query_targets], axis=0).astype(jnp.float32)  # [2B, D]
    logits = q @ cands.T / temperature  # [B, 2B]
    idx = jnp.arange(q.shape[0])
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[idx, idx])


def clip_symmetric(images: jax.Array, texts: jax.Array, temperature: jax.Array) -> jax.Array:
    """CLIP loss: mean of image->text and text->image cross-entropies over the batch."""
    i = images.astype(jnp.float32)
    t = texts.astype(jnp.float32)
    logits = i @ t.T / temperature
    idx = jnp.arange(i.shape[0])
    diag = logits[idx, idx]
    return 0.5 * (
        jnp.mean(jax.nn.logsumexp(logits, axis=1) - diag)
        + jnp.mean(jax.nn.logsumexp(logits, axis=0) - diag)
    )
