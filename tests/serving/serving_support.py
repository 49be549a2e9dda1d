"""Helpers for the serving tests: real photos and their augmentations, PNG bytes, real
model checkpoints, and stopping the Triton server with everything it started."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import jax
import numpy as np
import skimage.data
from PIL import Image, ImageEnhance, ImageOps

from runtime.embedding_client import EmbeddingClient
from services.embedding.model import create_initial_checkpoint
from services.embedding.server import _children
from tests.support.processes import ROOT, free_port, start, stop, wait_for
from trainer.checkpoints import load_params, save_params
from trainer.models.magiclens import CONFIGS, arch_meta

CACHE = ROOT / "data" / "cache" / "serving-test"
TRITON_PY = ROOT / ".venv-triton" / "bin" / "python"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field",
          "retina", "immunohistochemistry", "colorwheel", "logo", "cat", "coins")


def png(arr: np.ndarray | Image.Image) -> bytes:
    img = arr if isinstance(arr, Image.Image) else Image.fromarray(arr)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def photo(name: str) -> Image.Image:
    a = getattr(skimage.data, name)()
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    return Image.fromarray(a[..., :3].astype(np.uint8))


def augmented_images(per_photo: int = 25, seed: int = 0) -> list[bytes]:
    """Real photos under random crops, flips, rotations, tints and contrast: neighbours exist."""
    rng = np.random.default_rng(seed)
    out = []
    for name in PHOTOS:
        base = photo(name)
        w, h = base.size
        for _ in range(per_photo):
            f = rng.uniform(0.5, 1.0)
            cw, ch = int(w * f), int(h * f)
            x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
            im = base.crop((x, y, x + cw, y + ch)).resize((160, 160))
            if rng.random() < 0.5:
                im = ImageOps.mirror(im)
            im = im.rotate(float(rng.uniform(-20, 20)))
            im = ImageEnhance.Color(im).enhance(float(rng.uniform(0.3, 1.7)))
            im = ImageEnhance.Contrast(im).enhance(float(rng.uniform(0.6, 1.4)))
            out.append(png(im))
    return out


def _head_perturbed(src: Path, dst: Path, version: str, seed: int) -> None:
    """Copy checkpoint `src` to `dst` with the fusion head moved off its initialisation, as
    training would: compact's heads start at exactly the image embedding (query == target),
    which would hide a server that ignores the instruction. The edit head's frozen pooled
    projection stays as it is (training never moves it)."""
    params, meta = load_params(src)
    rng = np.random.default_rng(seed)

    def perturb(path, x):
        keys = [getattr(p, "key", "") for p in path]
        if keys and keys[0] in ("multimodal_encoder", "contrastive_multimodal_pooler"):
            return np.asarray(x) + rng.normal(0, 0.05, np.shape(x)).astype(np.float32)
        if keys[:1] == ["edit_head"] and "pooled_proj" not in keys:
            return np.asarray(x) + rng.normal(0, 0.05, np.shape(x)).astype(np.float32)
        return x

    params = jax.tree_util.tree_map_with_path(perturb, params)
    save_params(dst, params, {**meta, "model_version": version, "seed": seed,
                              "origin": "pretrained-towers+perturbed-head"})


def serving_checkpoints() -> dict[str, Path]:
    """{'serving-a': dir, 'serving-b': dir}: two real model versions with distinct heads.

    Cached under data/cache/serving-test, keyed by the current compact architecture so a
    change to it rebuilds them."""
    arch = arch_meta(CONFIGS["compact"])["arch"]
    root = CACHE / ("residual" if arch["image_residual"] else "plain") if arch["head"] == \
        "transformer" else CACHE / f"edit-colour{arch['colour_bins']}"
    a, b = root / "model-a", root / "model-b"

    def current(d: Path) -> bool:
        meta = d / "magiclens_meta.json"
        return meta.exists() and json.loads(meta.read_text()).get("arch") == arch

    if not (current(a) and current(b)):
        shutil.rmtree(root, ignore_errors=True)
        init = root / "init"
        create_initial_checkpoint(init, "init", seed=0)
        _head_perturbed(init, a, "serving-a", seed=0)
        _head_perturbed(init, b, "serving-b", seed=1)
        shutil.rmtree(init)
    return {"serving-a": a, "serving-b": b}


class TritonProc:
    def __init__(self, proc: subprocess.Popen, url: str, current: Path, log: Path) -> None:
        self.proc, self.url, self.current, self.log = proc, url, current, log


@contextmanager
def running_triton(checkpoint: Path, d: Path,
                   extra_env: dict[str, str] | None = None) -> Iterator[TritonProc]:
    """A real Triton embedding server (PyTriton, .venv-triton) serving `checkpoint` as
    serving-a, its files under `d`, with `extra_env` (e.g. tracing); stopped (with everything
    it started) on the way out."""
    assert TRITON_PY.exists(), ".venv-triton is missing (./taskw sets it up)"
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    current = d / "current_model.json"
    log = d / "server.log"
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'gen'}", **(extra_env or {}))
    proc = start("services.embedding.server", "--current-file", str(current),
                 "--checkpoint", str(checkpoint), "--model-version", "serving-a",
                 "--grpc-port", str(grpc_port), "--http-port", str(http_port),
                 "--metrics-port", str(metrics_port), "--workspace", str(d / "workspace"),
                 env=env, log=log, python=TRITON_PY)
    server = TritonProc(proc, f"127.0.0.1:{grpc_port}", current, log)
    try:
        client = EmbeddingClient(server.url)
        try:
            wait_for(client.ready, 240, "the Triton server to load its models", interval=0.5,
                     proc=proc, log=log)
        finally:
            client.close()
        yield server
    finally:
        stop_triton(server)


def descendants(pid: int) -> list[int]:
    return _children(pid)


def stop_triton(server: TritonProc) -> list[int]:
    """SIGTERM the server; returns descendants still alive afterwards (should be none)."""
    if server.proc.poll() is not None:
        return []
    kids = descendants(server.proc.pid)
    stop(server.proc, 60)
    deadline = time.monotonic() + 5  # multiprocessing's resource tracker exits on EOF
    alive = kids
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [k for k in kids if Path(f"/proc/{k}").exists()]
    for k in alive:  # never leave them behind, even when the test fails
        os.kill(k, signal.SIGKILL)
    return alive
