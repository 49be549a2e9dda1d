"""MagicLens-B (CLIP ViT-B/16): fine-tune from the released checkpoint (--init)."""

from trainer.configs import TrainConfig


def get_config() -> TrainConfig:
    return TrainConfig(model="base", mode="frozen", steps=1000, batch_size=64,
                       learning_rate=1e-4, warmup_steps=100, temperature=0.02)
