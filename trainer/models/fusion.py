"""Fusion-head layers of MagicLens (Linen), named so the param tree matches the released weights.

Each module does one thing and is composed by name (scenic/paxml style), so a checkpoint reads
like the architecture: `multimodal_encoder/x_layers_i/...` and `contrastive_multimodal_pooler/...`.
Numerics follow the released model: LayerNorm scales by (1 + scale) with eps 1e-6, attention
logits are soft-capped at 50, the pooler uses a learned per-dimension query scale.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
R_SOFTPLUS_0 = 1.442695041  # 1 / softplus(0): makes a zero-initialised per-dim scale neutral
LOGIT_CAP = 50.0


class LayerNorm(nn.Module):
    """Pre-norm LayerNorm; stats in float32, `(1 + scale)` so a zero init is the identity."""

    dim: int
    epsilon: float = 1e-6
    dtype: Dtype = jnp.float32
    scale_init: float = 0.0  # -1 starts the layer at exactly zero output

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.constant(self.scale_init), (self.dim,),
                           jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.dim,), jnp.float32)
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
        return (y * (1.0 + scale) + bias).astype(self.dtype)


class Weight(nn.Module):
    """A bare matrix `w` (paxml's `linear`)."""

    input_dim: int
    output_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.param("w", nn.initializers.lecun_normal(), (self.input_dim, self.output_dim))
        return jnp.matmul(x.astype(self.dtype), w.astype(self.dtype))


class Bias(nn.Module):
    """A bare bias vector `b` (paxml's `bias`)."""

    dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b = self.param("b", nn.initializers.zeros, (self.dim,))
        return x + b.astype(self.dtype)


class FeedForward(nn.Module):
    """`linear` then `bias`, optional ReLU."""

    input_dim: int
    output_dim: int
    relu: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = Weight(self.input_dim, self.output_dim, self.dtype, name="linear")(x)
        x = Bias(self.output_dim, self.dtype, name="bias")(x)
        return jax.nn.relu(x) if self.relu else x


class TransformerFFN(nn.Module):
    """Residual FFN block: x + W2(relu(W1(LN(x))))."""

    dim: int
    hidden_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = LayerNorm(self.dim, dtype=self.dtype, name="layer_norm")(x)
        h = FeedForward(self.dim, self.hidden_dim, True, self.dtype, name="ffn_layer1")(h)
        h = FeedForward(self.hidden_dim, self.dim, False, self.dtype, name="ffn_layer2")(h)
        return x + h


class AttentionProjection(nn.Module):
    """q/k/v projection `w:[D,N,H], b:[N,H]`, or the output projection `w:[D,N,H], b:[D]`."""

    input_dim: int
    num_heads: int
    dim_per_head: int
    output_proj: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (self.input_dim, self.num_heads, self.dim_per_head)
        if self.output_proj:
            init = nn.initializers.lecun_normal(in_axis=(1, 2), out_axis=0)
        else:
            init = nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
        w = self.param("w", init, shape).astype(self.dtype)
        x = x.astype(self.dtype)
        if self.output_proj:
            b = self.param("b", nn.initializers.zeros, (self.input_dim,))
            return jnp.einsum("...nh,dnh->...d", x, w) + b.astype(self.dtype)
        b = self.param("b", nn.initializers.zeros, (self.num_heads, self.dim_per_head))
        return jnp.einsum("...d,dnh->...nh", x, w) + b.astype(self.dtype)


class PerDimScale(nn.Module):
    """Learned query scale: q * (1.442695041/sqrt(H)) * softplus(per_dim_scale)."""

    dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, q: jax.Array) -> jax.Array:
        # Zero init (paxml's) makes the product exactly 1/sqrt(H) at the start of training.
        p = self.param("per_dim_scale", nn.initializers.zeros, (self.dim,))
        scale = (R_SOFTPLUS_0 / np.sqrt(self.dim)) * jax.nn.softplus(p)
        return q * scale.astype(q.dtype)


class DotProductAttention(nn.Module):
    """Multi-head attention with logits soft-capped at 50 (no mask: sequences are 2 tokens)."""

    input_dim: int
    hidden_dim: int
    num_heads: int
    per_dim_scale: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, q_in: jax.Array, kv_in: jax.Array) -> jax.Array:
        assert self.hidden_dim % self.num_heads == 0, (self.hidden_dim, self.num_heads)
        h = self.hidden_dim // self.num_heads

        def proj(name: str, output_proj: bool = False) -> AttentionProjection:
            return AttentionProjection(
                self.input_dim, self.num_heads, h, output_proj, self.dtype, name=name
            )

        q = proj("query")(q_in)
        k = proj("key")(kv_in)
        v = proj("value")(kv_in)
        if self.per_dim_scale:
            q = PerDimScale(h, self.dtype, name="per_dim_scale")(q)
        else:
            q = q * jnp.asarray(h**-0.5, q.dtype)
        logits = jnp.einsum("btnh,bsnh->bnts", q, k).astype(jnp.float32)
        logits = LOGIT_CAP * jnp.tanh(logits / LOGIT_CAP)
        probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bnts,bsnh->btnh", probs, v)
        return proj("post", output_proj=True)(out)


class TransformerLayer(nn.Module):
    """Pre-LN block: y = x + Attn(LN(x)); out = y + FFN(LN(y))."""

    dim: int
    num_heads: int
    ff_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = LayerNorm(self.dim, dtype=self.dtype, name="layer_norm")(x)
        h = DotProductAttention(
            self.dim, self.dim, self.num_heads, dtype=self.dtype, name="self_attention"
        )(h, h)
        x = x + h
        return TransformerFFN(self.dim, self.ff_dim, self.dtype, name="ff_layer")(x)


class StackedTransformer(nn.Module):
    """`num_layers` TransformerLayers named `x_layers_{i}`."""

    num_layers: int
    dim: int
    num_heads: int
    ff_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.num_layers):
            x = TransformerLayer(
                self.dim, self.num_heads, self.ff_dim, self.dtype, name=f"x_layers_{i}"
            )(x)
        return x


class AttentionPooler(nn.Module):
    """One learned query token attends over the sequence (inner width 4D), then LayerNorm.

    `zero_init` starts the final LayerNorm at scale 0 (its `(1 + scale)` at -1), so the
    pooler outputs exactly zero until training moves it: used when its output is added to a
    residual (see MagicLensConfig.image_residual).
    """

    dim: int
    num_heads: int
    num_query_tokens: int = 1
    dtype: Dtype = jnp.float32
    zero_init: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        query = self.param(
            "pooling_attn_query", nn.initializers.lecun_normal(), (self.num_query_tokens, self.dim)
        )
        query = jnp.broadcast_to(query.astype(self.dtype), (x.shape[0], *query.shape))
        pooled = DotProductAttention(
            self.dim, 4 * self.dim, self.num_heads, per_dim_scale=True, dtype=self.dtype,
            name="pool_attn",
        )(query, x)
        return LayerNorm(self.dim, dtype=self.dtype, scale_init=-1.0 if self.zero_init else 0.0,
                         name="pool_attn_ln")(pooled)


def l2_normalize(x: jax.Array) -> jax.Array:
    """L2 normalisation in float32 with eps 1e-12 inside the sqrt (as released)."""
    x = x.astype(jnp.float32)
    return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)
