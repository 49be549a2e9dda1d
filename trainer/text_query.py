"""The text-query stage: train the text-query head (trainer.models.text_head) on the mined
(image, alt text / caption) pairs, against the finished model's index embeddings.

It runs in the same training job, after the fusion stage, on the captions the alignment stage
already read (their tower features are cached in `align_features.npz`). Targets are the
final params' index embeddings of the captioned images, fixed; only the head learns, with the
CLIP loss (both directions over the batch). So the head maps a description to where the
index already holds its images, and nothing image queries use changes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from trainer import losses
from trainer.configs import TrainConfig
from trainer.features import cached_features, compute_features
from trainer.models.magiclens import MagicLens, MagicLensConfig

MAX_PAIRS = 1_000_000


def with_text_query(config: MagicLensConfig, cfg: TrainConfig) -> MagicLensConfig:
    """The architecture a run exports: `config` plus the text-query head when the stage runs."""
    if cfg.text_query_steps <= 0:
        return config
    return dataclasses.replace(config, text_query_hidden=cfg.text_query_hidden)


def pair_features(model: MagicLens, params: Any, pre: Any, captions: list[tuple[str, str]],
                  workdir: Path | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(image features [Ni, Fi], text features [Nt, Ft], image index per pair, text index per
    pair), from the alignment stage's cache when it ran in this workdir."""
    if not 0 < len(captions) <= MAX_PAIRS:
        raise ValueError(f"{len(captions)} caption pairs; expected 1..{MAX_PAIRS}")
    paths = sorted({p for p, _ in captions})
    texts = sorted({t for _, t in captions})
    cache = None if workdir is None else workdir / "align_features.npz"
    fi, ft = cached_features(cache, model, params, pre, paths, texts, progress=True)
    pi = {p: i for i, p in enumerate(paths)}
    ti = {t: i for i, t in enumerate(texts)}
    return (fi, ft, np.asarray([pi[p] for p, _ in captions]),
            np.asarray([ti[t] for _, t in captions]))


def index_embeddings(model: MagicLens, params: Any, pre: Any, image_features: np.ndarray
                     ) -> np.ndarray:
    """[N, D] what the index holds for these images under `params` (their target embeddings)."""
    _, ef = compute_features(model, params, pre, [], [""])
    out = []
    fn = jax.jit(lambda p, fi, e: model.apply({"params": p}, fi, e,
                                              method=MagicLens.encode_target_features))
    for s in range(0, len(image_features), 256):
        chunk = image_features[s:s + 256]
        out.append(np.asarray(fn(params, chunk, np.repeat(ef, len(chunk), 0))))
    return np.concatenate(out).astype(np.float32)


def _pair(m: MagicLens, texts, targets):
    return m.encode_text_query_features(texts), targets


def train_text_query(model: MagicLens, cfg: TrainConfig, params: Any, pre: Any,
                     captions: list[tuple[str, str]], workdir: Path | None, mesh: Mesh
                     ) -> tuple[dict, list[float]]:
    """`params` (the finished model's) with a trained `text_query_head`, and the losses."""
    fi, ft, img_idx, txt_idx = pair_features(model, params, pre, captions, workdir)
    if cfg.tower_tune or cfg.tower_lit:  # the cache holds the pretrained tower's features
        from trainer import tower

        x = tower.cached_inputs(None if workdir is None else workdir / "lit_inputs.npz",
                                model, params, pre, sorted({p for p, _ in captions}),
                                progress=True, dtype=np.float16)
        fi = tower.features_through(model, params, x, fi)
    targets = index_embeddings(model, params, pre, fi)
    return fit_text_query(model, cfg, params, ft[txt_idx], targets[img_idx], mesh)


def fit_text_query(model: MagicLens, cfg: TrainConfig, params: Any, text_features: np.ndarray,
                   targets: np.ndarray, mesh: Mesh) -> tuple[dict, list[float]]:
    """The stage on given pairs: text features [N, Ft] and the index embeddings [N, D] of
    their images. Returns `params` with the trained head, and the losses."""
    from trainer.train import (
        _run_loop,
        batch_indices,
        init_trainable,
        make_optimizer,
        make_step,
        merge,
    )

    if not model.has_text_query:
        raise ValueError("the model has no text-query head (text_query_hidden = 0)")
    if len(text_features) != len(targets) or not 0 < len(targets) <= MAX_PAIRS:
        raise ValueError(f"{len(text_features)} texts for {len(targets)} targets")
    head = model.init(jax.random.PRNGKey(cfg.seed + 5), jnp.zeros((1, text_features.shape[1])),
                      method=MagicLens.encode_text_query_features)["params"]
    tcfg = dataclasses.replace(cfg, learn_temperature=False,
                               temperature=cfg.text_query_temperature)
    trainable = init_trainable(head, tcfg)
    opt = make_optimizer(tcfg, cfg.text_query_steps, cfg.text_query_learning_rate)
    data_sh = NamedSharding(mesh, P("data"))
    step_fn = make_step(model, tcfg, opt, _pair, losses.clip_symmetric, mesh, 2)
    xf = np.asarray(text_features, np.float32)
    tg = np.asarray(targets, np.float32)

    def get_batch(s: int):
        idx = batch_indices(cfg.seed + 2, s, len(tg), cfg.batch_size)
        return jax.device_put(xf[idx], data_sh), jax.device_put(tg[idx], data_sh)

    trainable, _, hist = _run_loop(step_fn, trainable, opt.init(trainable), get_batch, 0,
                                   cfg.text_query_steps, cfg.batch_size, "text query")
    return merge(params, jax.device_get(trainable["model"])), hist
