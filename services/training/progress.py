"""Per-step loss reporting from `trainer.train.train`, which has no progress callback yet.

Adapter (to be replaced by a `train(..., on_step=...)` hook in the trainer): while a job
runs, `trainer.train.make_step` is wrapped so each fusion step's loss is passed to
`report(loss)`. The trainer's own loop already turns every loss into a Python float, so
this adds no device synchronisation. Alignment steps (`_align_pair`) are not reported.
Only one job runs per process (the worker is single-threaded), and a lock makes sure of it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

_LOCK = threading.Lock()


@contextmanager
def report_steps(report: Callable[[float], None]) -> Iterator[None]:
    import trainer.train as tt

    original = tt.make_step
    align = getattr(tt, "_align_pair", None)

    def make_step(model, cfg, opt, embed, *args, **kwargs):
        step_fn = original(model, cfg, opt, embed, *args, **kwargs)
        if embed is align:
            return step_fn

        def step(*a):
            out = step_fn(*a)
            report(float(out[2]))
            return out

        return step

    with _LOCK:
        tt.make_step = make_step
        try:
            yield
        finally:
            tt.make_step = original


def latest_checkpoint_step(workdir: Path) -> int:
    """The step a resumed `train()` starts from (its CheckpointManager's latest step)."""
    ckpt = workdir / "checkpoints"
    if not ckpt.is_dir():
        return 0
    import orbax.checkpoint as ocp

    mngr = ocp.CheckpointManager(ckpt.absolute())
    try:
        return int(mngr.latest_step() or 0)
    finally:
        mngr.close()
