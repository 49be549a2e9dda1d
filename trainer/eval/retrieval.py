"""Retrieval evaluation: MagicLens and the zero-shot baselines through the same code path.

Embeddings come from cached backbone features (`trainer.features`), so the model and the
baselines (image-only, text-only, image+text sum of the backbone embeddings) see identical
inputs. The gallery is every distinct image of the split; each query's reference image is
excluded from its ranking (as CIRR and CIRCO do).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from trainer.data.triples import TripleSource
from trainer.eval.metrics import rank_gallery, recall_at_k
from trainer.features import cached_features
from trainer.models.magiclens import MagicLens

METHODS = ("magiclens", "image_only", "text_only", "image_text_sum")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def backbone_image_only(model: MagicLens, image_features: np.ndarray) -> np.ndarray:
    """Search-by-image with the backbone alone: its own pooled image features, before any
    trained layer (for the compact tower the MobileNetV2 part, without the colour
    histogram), unit-normalised. This is the baseline the trained model has to beat."""
    pooled = getattr(model.backbone_def, "pooled", None)
    f = np.asarray(pooled(image_features) if pooled is not None else image_features)
    return _unit(f.astype(np.float32))


def embed_all(model: MagicLens, params: Any, qf: np.ndarray, xf: np.ndarray, gf: np.ndarray,
              ef: np.ndarray, model_features: tuple[np.ndarray, np.ndarray] | None = None
              ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{method: (query embeddings, gallery embeddings)} from backbone features.

    text_only and image_text_sum use the backbone's (aligned) projections, the shared
    space where text and images meet; image_only uses the raw backbone features.
    `model_features` = (query, gallery) features for magiclens alone, when its tower differs
    from the pretrained one the baselines use (trainer.tower)."""
    p = {"params": params}
    e_g = np.broadcast_to(ef, (gf.shape[0], ef.shape[-1]))
    enc = jax.jit(lambda a, b: model.apply(p, a, b, method=MagicLens.encode_features))
    tgt = jax.jit(lambda a, b: model.apply(p, a, b, method=MagicLens.encode_target_features))
    proj = jax.jit(lambda a, b: model.apply(p, a, b, method=MagicLens.project_features))
    mq, mg = model_features if model_features is not None else (qf, gf)
    q_ml, g_ml = np.asarray(enc(mq, xf)), np.asarray(tgt(mg, e_g))
    qi, qt = (np.asarray(a, np.float32) for a in proj(qf, xf))
    gi, _ = (np.asarray(a, np.float32) for a in proj(gf, e_g))
    gi = _unit(gi)
    return {
        "magiclens": (q_ml, g_ml),
        "image_only": (backbone_image_only(model, qf), backbone_image_only(model, gf)),
        "text_only": (_unit(qt), gi),
        "image_text_sum": (_unit(_unit(qi) + _unit(qt)), gi),
    }


def evaluate_triples(model: MagicLens, params: Any, preprocessor: Any, triples: TripleSource,
                     ks: Sequence[int] = (1, 5, 10), cache_file: Path | None = None,
                     methods: Sequence[str] = METHODS) -> dict[str, float]:
    """Recall@K (single target per query) for MagicLens and the baselines, keyed
    `"<method>/R@<k>"`, in %."""
    trip = list(triples)
    gallery = sorted({t.query_image for t in trip} | {t.target_image for t in trip})
    texts = sorted({t.instruction for t in trip})
    fi, ft = cached_features(cache_file, model, params, preprocessor, gallery, [*texts, ""],
                             params_tag=_params_tag(params))
    ef, ft = ft[-1], ft[:-1]
    gidx = {g: i for i, g in enumerate(gallery)}
    tidx = {t: i for i, t in enumerate(texts)}
    qf = fi[[gidx[t.query_image] for t in trip]]
    xf = ft[[tidx[t.instruction] for t in trip]]
    embs = embed_all(model, params, qf, xf, fi, ef)
    refs = [t.query_image for t in trip]
    targets = [t.target_image for t in trip]
    out: dict[str, float] = {}
    for m in methods:
        q, g = embs[m]
        ranks = rank_gallery(q @ g.T, gallery, exclude=refs, top=max(ks))
        for k, v in recall_at_k(ranks, targets, ks).items():
            out[f"{m}/R@{k}"] = v
    return out


def _params_tag(params: Any) -> str:
    """A cheap fingerprint of the backbone params so stale cached features are not reused."""
    leaves = jax.tree_util.tree_leaves(params)
    return f"{len(leaves)}:" + ",".join(f"{float(jnp.sum(jnp.abs(x))):.6g}" for x in leaves[:8])
