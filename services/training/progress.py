"""Where a training run stands on disk (its latest Orbax checkpoint step).

Per-step losses reach the service through `trainer.train.train(..., on_loss=...)`.
"""

from __future__ import annotations

from pathlib import Path

import orbax.checkpoint as ocp


def latest_checkpoint_step(workdir: Path) -> int:
    """The step a resumed `train()` starts from (its CheckpointManager's latest step)."""
    ckpt = workdir / "checkpoints"
    if not ckpt.is_dir():
        return 0

    mngr = ocp.CheckpointManager(ckpt.absolute())
    try:
        return int(mngr.latest_step() or 0)
    finally:
        mngr.close()
