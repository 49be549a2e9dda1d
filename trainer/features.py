"""Backbone features computed once per image / text (frozen-backbone training and evaluation).

What is cached is `MagicLens.backbone_features`: raw tower features for backbones with
trainable projections (compact), the final embeddings otherwise (CLIP).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from trainer.data.triples import load_image
from trainer.models import colour
from trainer.models.magiclens import MagicLens, MagicLensConfig

BATCH = 32


def feature_kind(config: MagicLensConfig) -> str:
    """What decides the cached features' values besides the inputs: the backbone and the
    colour histogram (its bins and its algorithm's version)."""
    if not config.colour_bins:
        return config.backbone
    return f"{config.backbone}-colour{config.colour_bins}-v{colour.VERSION}"


def _jitted(model: MagicLens):
    def img(params, images):
        return model.apply({"params": params}, images, method=MagicLens.image_features_only)

    def txt(params, tokens):
        return model.apply({"params": params}, tokens, method=MagicLens.text_features_only)

    return jax.jit(img), jax.jit(txt)


def map_images(fn: Any, params: Any, preprocessor: Any, image_paths: Sequence[str],
               progress: bool = False, desc: str = "images") -> list[np.ndarray]:
    """`fn(params, preprocessed batch)` over the images in fixed-shape batches (one compile),
    as a list of per-batch numpy outputs without the padding."""
    out = []
    rng = range(0, len(image_paths), BATCH)
    if progress:
        from tqdm import tqdm
        rng = tqdm(rng, desc=desc, unit="batch")
    for s in rng:
        chunk = [load_image(p) for p in image_paths[s:s + BATCH]]
        n = len(chunk)
        batch = preprocessor.images(chunk + [chunk[-1]] * (BATCH - n))
        out.append(np.asarray(fn(params, batch))[:n])
    return out


def compute_features(model: MagicLens, params: Any, preprocessor: Any,
                     image_paths: Sequence[str], texts: Sequence[str],
                     progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """([N_img, Fi], [N_txt, Ft]) float32 features for the given images and texts."""
    img_fn, txt_fn = _jitted(model)
    feats_i = map_images(img_fn, params, preprocessor, image_paths, progress,
                         "image features")
    feats_t = []
    for s in range(0, len(texts), BATCH):
        chunk = list(texts[s:s + BATCH])
        n = len(chunk)
        toks = preprocessor.texts(chunk + [chunk[-1]] * (BATCH - n))
        feats_t.append(np.asarray(txt_fn(params, toks))[:n])
    fi = np.concatenate(feats_i) if feats_i else np.zeros((0, 0), np.float32)
    ft = np.concatenate(feats_t) if feats_t else np.zeros((0, 0), np.float32)
    return fi.astype(np.float32), ft.astype(np.float32)


def cached_features(cache_file: Path | None, model: MagicLens, params: Any, preprocessor: Any,
                    image_paths: Sequence[str], texts: Sequence[str], progress: bool = False,
                    params_tag: str = "") -> tuple[np.ndarray, np.ndarray]:
    """`compute_features`, reusing `cache_file` (npz) when it holds the same inputs."""
    key = hashlib.sha256(json.dumps([list(image_paths), list(texts), params_tag,
                                     feature_kind(model.config)]).encode()).hexdigest()
    if cache_file is not None and cache_file.exists():
        with np.load(cache_file, allow_pickle=False) as z:
            if str(z["key"]) == key:
                return z["image"], z["text"]
    fi, ft = compute_features(model, params, preprocessor, image_paths, texts, progress)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache_file, key=np.asarray(key), image=fi, text=ft)
    return fi, ft
