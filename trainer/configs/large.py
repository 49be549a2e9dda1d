"""MagicLens-L (CLIP ViT-L/14): fine-tune from the released checkpoint (--init)."""

from trainer.configs import TrainConfig


def get_config() -> TrainConfig:
    return TrainConfig(model="large", mode="frozen", steps=1000, batch_size=64,
                       learning_rate=5e-5, warmup_steps=100, temperature=0.02)
