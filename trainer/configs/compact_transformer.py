"""The previous compact default: transformer head with an image residual, query negatives.

Kept so `python -m trainer.experiments` can show what the edit head replaced (docs/quality.md).
"""

from trainer.configs import TrainConfig


def get_config() -> TrainConfig:
    return TrainConfig(model="compact_transformer", mode="frozen", steps=300, batch_size=32,
                       learning_rate=1e-3, warmup_steps=30, temperature=0.2,
                       align_steps=200, align_learning_rate=1e-3)
