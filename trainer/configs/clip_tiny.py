"""The released architecture at test size (CLIP vit_tiny): fine-tune an imported checkpoint
(--init) through the base/large code path in seconds; see trainer.models.magiclens."""

from trainer.configs import TrainConfig


def get_config() -> TrainConfig:
    return TrainConfig(model="clip_tiny", mode="frozen", steps=20, batch_size=8,
                       learning_rate=1e-3, warmup_steps=5, temperature=0.02)
