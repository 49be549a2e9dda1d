"""Contrastive losses: MagicLens InfoNCE (with query negatives, or with hard negatives and
weights), and CLIP's symmetric loss."""

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


def info_nce(queries: jax.Array, targets: jax.Array, query_targets: jax.Array,
             hard_negatives: jax.Array, hard_mask: jax.Array, duplicate_targets: jax.Array,
             weights: jax.Array, temperature: jax.Array, query_negatives: float = 0.0,
             keep: jax.Array | None = None, identity_weight: float = 0.0) -> jax.Array:
    """Weighted InfoNCE of each query against its target, the batch's other targets, its own
    hard negatives and (optionally) the batch's query images.

    queries, targets, query_targets: [B, D] unit vectors; hard_negatives: [B, K, D] with
    hard_mask [B, K] (False = padding); duplicate_targets: [B, B], True where target j is
    the same image as target i (j != i): a valid answer, so not a negative; weights: [B].
    `query_negatives` > 0 adds the query images as negatives (the paper's recipe) with that
    weight on their logits' probability mass (log w added to the logits); 0 leaves them out.
    `keep` [B] marks the triples whose query should stay near its own image (vague requests:
    "another one of the same kind", "more from this region"): `identity_weight` times the
    mean of (1 - cos(query, its own image)) over them is added, so the shift such requests
    learn from training pages cannot carry the query away from what it shows.
    """
    q = queries.astype(jnp.float32)
    t = targets.astype(jnp.float32)
    neg_inf = jnp.float32(-1e9)
    logits = q @ t.T / temperature  # [B, B]
    logits = jnp.where(duplicate_targets, neg_inf, logits)
    hard = jnp.einsum("bd,bkd->bk", q, hard_negatives.astype(jnp.float32)) / temperature
    hard = jnp.where(hard_mask, hard, neg_inf)
    parts = [logits, hard]
    if query_negatives > 0:
        qn = q @ query_targets.astype(jnp.float32).T / temperature + jnp.log(query_negatives)
        parts.append(qn)
    all_logits = jnp.concatenate(parts, axis=1)
    idx = jnp.arange(q.shape[0])
    per_example = jax.nn.logsumexp(all_logits, axis=1) - logits[idx, idx]
    w = weights.astype(jnp.float32)
    loss = jnp.sum(w * per_example) / jnp.maximum(jnp.sum(w), 1e-9)
    if keep is not None and identity_weight > 0:
        own = jnp.sum(q * query_targets.astype(jnp.float32), axis=-1)  # [B]
        k = keep.astype(jnp.float32)
        loss = loss + identity_weight * jnp.sum(k * (1.0 - own)) / jnp.maximum(jnp.sum(k), 1.0)
    return loss
