"""Load a MagicLens checkpoint and encode raw inputs: the one model path serving uses.

Why here (not in trainer/): serving needs raw-bytes decoding with size limits, a fixed set of
jit batch shapes (so the Triton server never recompiles under load) and params that can be
swapped while requests run. Everything model-related is delegated to trainer's public API
(build_model, abstract_params, load_params, the backbone's Preprocessor), so preprocessing is
identical to training. Imports only numpy/jax/flax/PIL: it runs in both environments.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from runtime.image_input import BadInput, decode_image
from runtime.limits import MAX_INSTRUCTION_CHARS
from trainer.checkpoints import load_params, save_params
from trainer.models.magiclens import (
    abstract_params,
    arch_meta,
    build_model,
    config_for_checkpoint,
    pretrained_params,
)
from trainer.weights.compact import weights_dir

BATCH_BUCKETS = (1, 4, 16)  # jit shapes; a batch is padded to the next bucket


def enable_compile_cache() -> None:
    """Persist XLA compilations (keyed by jax version, shapes and flags) so restarts of the
    server, the tests and the benches do not recompile the towers (~10 s per batch shape)."""

    cache = os.environ.get("MAGICLENS_JAX_CACHE_DIR",
                           str(weights_dir().parent / "cache" / "jax"))
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def bucket(n: int) -> int:
    for b in BATCH_BUCKETS:
        if n <= b:
            return b
    raise ValueError(f"batch {n} exceeds {BATCH_BUCKETS[-1]}")


@dataclass
class LoadedModel:
    """A checkpoint bound to its jitted encoders. Params are an argument of the jitted
    functions, so a new version of the same config swaps without recompiling."""

    model_version: str
    config_name: str
    params: Any
    model: Any
    preprocessor: Any
    _query: Any = None
    _target: Any = None

    def __post_init__(self) -> None:
        m = self.model
        self._query = jax.jit(lambda p, x, t: m.apply({"params": p}, x, t,
                                                      method=m.encode_query))
        self._target = jax.jit(lambda p, x: m.apply({"params": p}, x, method=m.encode_target))

    @property
    def embed_dim(self) -> int:
        return self.model.config.embed_dim

    @property
    def image_size(self) -> int:
        return self.preprocessor.image_size

    def preprocess_images(self, images: list[bytes]) -> np.ndarray:
        return self.preprocessor.images([decode_image(b) for b in images])

    def tokens(self, instructions: list[str]) -> np.ndarray:
        for t in instructions:
            if len(t) > MAX_INSTRUCTION_CHARS:
                raise BadInput(f"instruction has {len(t)} characters; limit "
                               f"{MAX_INSTRUCTION_CHARS}")
        return self.preprocessor.texts(instructions)

    def _run(self, fn, *arrays: np.ndarray) -> np.ndarray:
        n = arrays[0].shape[0]
        out = []
        for start in range(0, n, BATCH_BUCKETS[-1]):
            chunk = [a[start:start + BATCH_BUCKETS[-1]] for a in arrays]
            m = chunk[0].shape[0]
            b = bucket(m)
            padded = [np.concatenate([c, np.repeat(c[-1:], b - m, 0)]) if b > m else c
                      for c in chunk]
            out.append(np.asarray(fn(self.params, *padded))[:m])
        return np.concatenate(out).astype(np.float32)

    def encode_query_pixels(self, pixels: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        return self._run(self._query, pixels.astype(np.float32), tokens.astype(np.int32))

    def encode_target_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self._run(self._target, pixels.astype(np.float32))

    def encode_query(self, images: list[bytes], instructions: list[str]) -> np.ndarray:
        return self.encode_query_pixels(self.preprocess_images(images), self.tokens(instructions))

    def encode_target(self, images: list[bytes]) -> np.ndarray:
        return self.encode_target_pixels(self.preprocess_images(images))

    def warmup(self, buckets: tuple[int, ...] = (1,)) -> None:
        s = self.image_size
        for b in buckets:
            x = np.zeros((b, s, s, 3), np.float32)
            self.encode_target_pixels(x)
            self.encode_query_pixels(x, self.tokens([""] * b))

    def with_params(self, model_version: str, params: Any) -> LoadedModel:
        """Same config and compiled functions, new params (for hot swap)."""
        new = LoadedModel.__new__(LoadedModel)
        new.__dict__.update(self.__dict__)
        new.model_version, new.params = model_version, params
        return new


def load_checkpoint(checkpoint_dir: str | Path, model_version: str | None = None) -> LoadedModel:
    """Restore an exported checkpoint (trainer.checkpoints layout) with exact structure."""
    enable_compile_cache()
    checkpoint_dir = Path(checkpoint_dir)
    meta = json.loads((checkpoint_dir / "magiclens_meta.json").read_text())
    config_name = meta.get("config", "compact")
    model, pre = build_model(config_name, config=config_for_checkpoint(meta))
    params, _ = load_params(checkpoint_dir, abstract_params(model, pre.image_size))
    params = jax.tree.map(jnp.asarray, params)
    version = model_version or meta.get("model_version") or checkpoint_dir.name
    return LoadedModel(version, config_name, params, model, pre)


def create_initial_checkpoint(directory: str | Path, model_version: str, seed: int = 0,
                              config_name: str = "compact") -> Path:
    """Pretrained towers + randomly initialised fusion head (deterministic seed), saved as a
    checkpoint: a real, servable model version before any training has run."""
    model, pre = build_model(config_name)
    params = pretrained_params(model, jax.random.PRNGKey(seed), pre.image_size)
    return save_params(directory, params, {"config": config_name, "model_version": model_version,
                                           "seed": seed, "origin": "pretrained-towers+init",
                                           **arch_meta(model.config)})
