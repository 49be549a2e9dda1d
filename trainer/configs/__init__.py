"""Experiment configs, big_vision style: `trainer/configs/<name>.py` has `get_config()`."""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrainConfig:
    model: str = "compact"  # trainer.models.magiclens.CONFIGS key
    mode: str = "frozen"  # frozen | full
    steps: int = 300
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 30
    weight_decay: float = 1e-4
    temperature: float = 0.05  # MegaPairs uses 0.02
    # Loss (trainer.losses.info_nce): weight of the paper's query negatives (0 = off), other
    # targets of the same query on the same page as hard negatives for triples at least this
    # specific (0 negatives = off), and the weight of vaguer triples.
    query_negatives: float = 1.0
    hard_negatives: int = 0
    specific_from: float = 8.0
    vague_weight: float = 1.0
    # Identity (issue 19): weight of a term keeping the query near its own image for the
    # vague triples (below `specific_from`); 0 = off (trainer.losses.info_nce's `keep`).
    identity_weight: float = 0.0
    # Relation-balanced sampling: a triple is drawn with probability ∝ (its relation's
    # triple count)^-balance; 0 = uniform epochs, 1 = every relation equally often.
    relation_balance: float = 0.0
    # Edit head, frozen mode (full mode and the transformer head keep the random init): the
    # frozen projection of the pooled features. "random" (orthonormal) or "pca": the top
    # principal directions of the training images' unit pooled features, which keep their
    # cosines (search-by-image) far better at 512 dims.
    pooled_projection: str = "random"
    # Tower tuning (trainer.tower; frozen mode, compact backbone): the image tower's last
    # layer learns with the head, as a delta on its pretrained weights merged at export.
    # "" = off, "lora" (rank `tower_rank`), "affine" (per-channel scale and shift), "full".
    tower_tune: str = ""
    tower_rank: int = 16
    tower_learning_rate: float = 2e-4
    # LiT stage (issue 19; frozen mode, compact backbone, needs captions): before fusion, the
    # tower's last layer (a `tower_lit` delta as above: lora | affine | full; "" = off) and
    # both projections learn a CLIP loss over the mined (image, caption) pairs against the
    # locked text tower; the delta merges into the tower that fusion and serving then use.
    tower_lit: str = ""
    tower_lit_steps: int = 300
    tower_lit_learning_rate: float = 1e-3
    learn_temperature: bool = False
    seed: int = 0
    checkpoint_every: int = 100
    # compact only: CLIP-style alignment of the projections on captions, before fusion
    align_steps: int = 0
    align_learning_rate: float = 1e-3
    align_temperature: float = 0.05
    # Text-only queries (trainer.text_query): after fusion, a text-query head learns to place
    # a caption next to its image's index embedding (0 steps = no text-only path). Needs
    # captions, like the alignment stage.
    text_query_steps: int = 0
    text_query_hidden: int = 512
    text_query_learning_rate: float = 1e-3
    text_query_temperature: float = 0.05


def get_config(name: str, **overrides: Any) -> TrainConfig:
    """`trainer.configs.<name>.get_config()` with field overrides."""
    if not name.isidentifier():
        raise ValueError(f"bad config name {name!r}")
    cfg = importlib.import_module(f"trainer.configs.{name}").get_config()
    return dataclasses.replace(cfg, **overrides)
