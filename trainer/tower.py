"""Tower tuning: the compact image tower's last layer learns with the head (issue 13).

Why: heads trained on frozen ImageNet features are bounded by what the pooled features
already separate. MobileNetV2's last layer (`features_18`, a 1x1 conv 320 -> 1280, then
relu6 and the mean over the 7x7 positions) is cheap to train on cached activations: what
it reads (`last_input`, [7,7,320] per image) is computed once per image, and each step only
re-runs the 1x1 conv for the unique images of its batch.

Kinds (`TrainConfig.tower_tune`), each a delta on the pretrained kernel W [320,1280] and
bias b, zero at start so training starts exactly at the pretrained tower:

- `lora`:   W + D·U (D [320,r] random, U [r,1280] zero), b + db
- `affine`: W·diag(1+s), b·(1+s) + t (a per-channel scale and shift, as tuning a BatchNorm)
- `full`:   W + ΔW, b + db

During training the pretrained pre-activations z = x·W + b are cached too (float16), so
`lora` and `affine` cost O(r) and O(1) per position instead of a 320x1280 matmul. Every kind
merges into an ordinary kernel and bias at export (`merge_into`): the checkpoint has the
usual param tree and serving runs the trained tower unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from trainer.features import map_images

KINDS = ("lora", "affine", "full")
LAYER = ("backbone", "image_tower", "features_18")
CACHE_VERSION = 1


def _check(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"tower_tune must be one of {KINDS} (or empty), not {kind!r}")


def base_layer(params: Any) -> tuple[jax.Array, jax.Array]:
    """(kernel [C_in, C_out], bias [C_out]) of the pretrained last layer in `params`."""
    layer = params
    for k in LAYER:
        layer = layer[k]
    kernel = jnp.asarray(layer["kernel"])
    return kernel.reshape(kernel.shape[-2], kernel.shape[-1]), jnp.asarray(layer["bias"])


def init_delta(kind: str, c_in: int, c_out: int, rank: int, rng: jax.Array) -> dict:
    _check(kind)
    def zeros() -> jax.Array:  # a fresh buffer per leaf: training donates each one
        return jnp.zeros((c_out,), jnp.float32)

    if kind == "lora":
        down = jax.random.normal(rng, (c_in, rank), jnp.float32) / np.sqrt(c_in)
        return {"down": down, "up": jnp.zeros((rank, c_out), jnp.float32), "bias": zeros()}
    if kind == "affine":
        return {"scale": zeros(), "shift": zeros()}
    return {"kernel": jnp.zeros((c_in, c_out), jnp.float32), "bias": zeros()}


def effective(kind: str, delta: dict, kernel: jax.Array, bias: jax.Array
              ) -> tuple[jax.Array, jax.Array]:
    """The trained layer's (kernel [C_in, C_out], bias) as one ordinary 1x1 conv."""
    _check(kind)
    if kind == "lora":
        return kernel + delta["down"] @ delta["up"], bias + delta["bias"]
    if kind == "affine":
        s = 1.0 + delta["scale"]
        return kernel * s, bias * s + delta["shift"]
    return kernel + delta["kernel"], bias + delta["bias"]


def pooled_from_cache(kind: str, delta: dict, x: jax.Array, z: jax.Array) -> jax.Array:
    """[U, 1280] pooled features with the delta applied, from cached inputs x [U, P, C_in]
    and pretrained pre-activations z [U, P, C_out] (any float dtype)."""
    _check(kind)
    x = x.astype(jnp.float32)
    z = z.astype(jnp.float32)
    if kind == "lora":
        pre = z + (x @ delta["down"]) @ delta["up"] + delta["bias"]
    elif kind == "affine":
        pre = z * (1.0 + delta["scale"]) + delta["shift"]
    else:
        pre = z + x @ delta["kernel"] + delta["bias"]
    return jnp.mean(jax.nn.relu6(pre), axis=1)


def merge_into(params: Any, kind: str, delta: dict) -> dict:
    """`params` with the last layer's kernel and bias replaced by the trained ones."""
    kernel, bias = base_layer(params)
    new_k, new_b = effective(kind, delta, kernel, bias)
    out = jax.tree_util.tree_map(lambda a: a, params)  # copy the containers
    layer = out
    for k in LAYER[:-1]:
        layer[k] = dict(layer[k])
        layer = layer[k]
    old = layer[LAYER[-1]]
    layer[LAYER[-1]] = {**old, "kernel": np.asarray(new_k).reshape(old["kernel"].shape)
                        .astype(old["kernel"].dtype),
                        "bias": np.asarray(new_b).astype(old["bias"].dtype)}
    return out


def precompute_z(x: np.ndarray, kernel: jax.Array, bias: jax.Array,
                 dtype: Any = np.float16) -> np.ndarray:
    """[N, P, C_out] pretrained pre-activations of cached inputs, in `dtype`."""
    f = jax.jit(lambda a: a.astype(jnp.float32) @ kernel + bias)
    return np.concatenate([np.asarray(f(x[s:s + 256])).astype(dtype)
                           for s in range(0, len(x), 256)]) if len(x) else \
        np.zeros((0, x.shape[1], kernel.shape[1]), dtype)


def compute_inputs(model: Any, params: Any, preprocessor: Any, image_paths: Sequence[str],
                   progress: bool = False) -> np.ndarray:
    """[N, P, C_in] float32: the activations the image tower's last layer reads."""
    from trainer.models.magiclens import MagicLens

    fn = jax.jit(lambda p, im: model.apply({"params": p}, im,
                                           method=MagicLens.image_tower_input))
    out = map_images(fn, params, preprocessor, image_paths, progress, "tower inputs")
    out = [a.reshape(len(a), -1, a.shape[-1]) for a in out]
    return np.concatenate(out).astype(np.float32)


def cached_inputs(cache_file: Path | None, model: Any, params: Any, preprocessor: Any,
                  image_paths: Sequence[str], progress: bool = False,
                  dtype: Any = np.float32) -> np.ndarray:
    """`compute_inputs`, reusing `cache_file` (npz) when it holds the same images; stored
    in `dtype` (training stores float16: half the memory, and only training reads it)."""
    key = hashlib.sha256(json.dumps([list(image_paths), CACHE_VERSION,
                                     model.config.backbone, np.dtype(dtype).name]
                                    ).encode()).hexdigest()
    if cache_file is not None and cache_file.exists():
        with np.load(cache_file, allow_pickle=False) as z:
            if str(z["key"]) == key:
                return z["x"]
    x = compute_inputs(model, params, preprocessor, image_paths, progress).astype(dtype)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache_file, key=np.asarray(key), x=x)
    return x


def pooled_with_params(model: Any, params: Any, x: np.ndarray) -> np.ndarray:
    """[N, 1280] pooled features of cached inputs through the last layer `params` hold (the
    same flax conv serving runs), float32."""
    from trainer.models.magiclens import MagicLens

    side = math.isqrt(x.shape[1])
    fn = jax.jit(lambda p, a: model.apply({"params": p}, a, method=MagicLens.image_tower_pool))
    return np.concatenate([np.asarray(fn(params, x[s:s + 256].astype(np.float32).reshape(
        -1, side, side, x.shape[-1]))) for s in range(0, len(x), 256)]).astype(np.float32)


def features_through(model: Any, params: Any, x: np.ndarray, features: np.ndarray
                     ) -> np.ndarray:
    """`features` (pooled, then any colour dims) with the pooled part recomputed from cached
    inputs `x` through the last layer `params` hold; the colour dims are unchanged."""
    pooled = pooled_with_params(model, params, x)
    return np.concatenate([pooled, features[:, pooled.shape[1]:]], axis=1).astype(
        features.dtype)


def unique_batch(parts: Sequence[np.ndarray], size: int) -> tuple[np.ndarray, list]:
    """(unique image ids padded to `size`, each part as indices into them): a step encodes
    every image of its batch (queries, targets, hard negatives) once."""
    flat = np.concatenate([p.ravel() for p in parts])
    uniq, inv = np.unique(flat, return_inverse=True)
    if len(uniq) > size:
        raise ValueError(f"{len(uniq)} unique images in a batch, room for {size}")
    ids = np.concatenate([uniq, np.full(size - len(uniq), uniq[0])])
    out, at = [], 0
    for p in parts:
        out.append(inv[at:at + p.size].reshape(p.shape))
        at += p.size
    return ids, out
