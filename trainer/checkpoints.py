"""Our checkpoint format: an Orbax directory of params plus a small JSON of metadata.

Exported model checkpoints (what serving loads) hold only params; training checkpoints
(CheckpointManager, see trainer.train) additionally hold optimizer state and step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

META_FILE = "magiclens_meta.json"


def save_params(directory: str | Path, params: Any, meta: dict[str, Any]) -> Path:
    """Write `params` to `directory/params` and `meta` (config name etc.) beside it."""
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "params"
    params = jax.tree_util.tree_map(np.asarray, params)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(target, params, force=True)
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return directory


def load_params(directory: str | Path, target: Any | None = None) -> tuple[Any, dict[str, Any]]:
    """(params, meta) from a directory written by `save_params`.

    `target` (e.g. `abstract_params(model, size)`) restores with exact structure and dtypes.
    """
    directory = Path(directory).absolute()
    meta = json.loads((directory / META_FILE).read_text())
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(directory / "params", target)
    return params, meta
