"""Compact backbone (MobileNetV2 + MiniLM, offline weights): align projections, then fuse."""

from trainer.configs import TrainConfig


def get_config() -> TrainConfig:
    return TrainConfig(model="compact", mode="frozen", steps=300, batch_size=32,
                       learning_rate=1e-3, warmup_steps=30, temperature=0.05,
                       align_steps=200, align_learning_rate=1e-3)
