"""Compact backbone (MobileNetV2 + colour histogram + MiniLM, offline weights), edit head.

Chosen on the demo corpus with `python -m trainer.experiments` (docs/quality.md has every
configuration tried, 3 seeds each): no query negatives (with a frozen tower they push
queries away from their own image and cost "same kind of thing" queries half their hits),
8 same-page hard negatives for specific instructions (without them skin tone and gender
variants of the query stay tied), vague one-to-many triples ("another one from this page")
weighted 0.3, temperature 0.1, and the frozen 1280 -> 512 projection of the pooled features
set to their principal directions (a random one blurred search-by-image: flags of one region
lost 9 points of R@10 by it alone). The alignment stage trains the projections the text-only
and image+text baselines (and text search) use.
"""

from trainer.configs import TrainConfig


def get_config() -> TrainConfig:
    return TrainConfig(model="compact", mode="frozen", steps=600, batch_size=64,
                       learning_rate=2e-3, warmup_steps=30, temperature=0.1,
                       query_negatives=0.0, hard_negatives=8, vague_weight=0.3,
                       pooled_projection="pca",
                       align_steps=200, align_learning_rate=1e-3,
                       text_query_steps=300)
