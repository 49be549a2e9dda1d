"""Fixtures for the serving tests: real checkpoints, a real Triton server, real images.

The compact model with pretrained towers + a seeded random fusion head is a genuine servable
version; it is cached under data/cache/serving-test (building it compiles the full model once).
A second version is derived by perturbing the fusion head (a different model, same shapes).
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "data" / "cache" / "serving-test"
TRITON_PY = ROOT / ".venv-triton" / "bin" / "python"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field",
          "retina", "immunohistochemistry", "colorwheel", "logo", "cat", "coins")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png(arr: np.ndarray | Image.Image) -> bytes:
    img = arr if isinstance(arr, Image.Image) else Image.fromarray(arr)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def photo(name: str) -> Image.Image:
    import skimage.data

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
    training would: compact's residual head starts at exactly the image embedding (query ==
    target), which would hide a server that ignores the instruction."""
    import jax

    from trainer.checkpoints import load_params, save_params

    params, meta = load_params(src)
    rng = np.random.default_rng(seed)

    def perturb(path, x):
        keys = [getattr(p, "key", "") for p in path]
        if keys and keys[0] in ("multimodal_encoder", "contrastive_multimodal_pooler"):
            return np.asarray(x) + rng.normal(0, 0.05, np.shape(x)).astype(np.float32)
        return x

    params = jax.tree_util.tree_map_with_path(perturb, params)
    save_params(dst, params, {**meta, "model_version": version, "seed": seed,
                              "origin": "pretrained-towers+perturbed-head"})


@pytest.fixture(scope="session")
def checkpoints() -> dict[str, Path]:
    """{'serving-a': dir, 'serving-b': dir}: two real model versions with distinct heads.

    Cached under data/cache/serving-test, keyed by the current compact architecture so a
    change to it rebuilds them."""
    import json
    import shutil

    from services.embedding.model import create_initial_checkpoint
    from trainer.models.magiclens import CONFIGS, arch_meta

    arch = arch_meta(CONFIGS["compact"])["arch"]
    root = CACHE / ("residual" if arch["image_residual"] else "plain")
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


@pytest.fixture(scope="session")
def triton(checkpoints, tmp_path_factory) -> TritonProc:
    """The real Triton embedding server (PyTriton, .venv-triton), started once."""
    from services.embedding.client import EmbeddingClient

    if not TRITON_PY.exists():
        pytest.skip(".venv-triton is missing (./taskw sets it up)")
    d = tmp_path_factory.mktemp("triton")
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    current = d / "current_model.json"
    log = d / "server.log"
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'gen'}")
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [str(TRITON_PY), "-m", "services.embedding.server", "--current-file", str(current),
             "--checkpoint", str(checkpoints["serving-a"]), "--model-version", "serving-a",
             "--grpc-port", str(grpc_port), "--http-port", str(http_port),
             "--metrics-port", str(metrics_port)],
            cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    url = f"127.0.0.1:{grpc_port}"
    client = EmbeddingClient(url)
    deadline = time.monotonic() + 240
    while not client.ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("Triton server did not start:\n" + log.read_text()[-3000:])
        time.sleep(0.5)
    client.close()
    server = TritonProc(proc, url, current, log)
    yield server
    stop_triton(server)


def descendants(pid: int) -> list[int]:
    from services.embedding.server import _children

    return _children(pid)


def stop_triton(server: TritonProc) -> list[int]:
    """SIGTERM the server; returns descendants still alive afterwards (should be none)."""
    if server.proc.poll() is not None:
        return []
    kids = descendants(server.proc.pid)
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(60)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
    deadline = time.monotonic() + 5  # multiprocessing's resource tracker exits on EOF
    alive = kids
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [k for k in kids if Path(f"/proc/{k}").exists()]
    for k in alive:  # never leave them behind, even when the test fails
        os.kill(k, signal.SIGKILL)
    return alive


@pytest.fixture(scope="session")
def model_a(checkpoints):
    from services.embedding.model import load_checkpoint

    return load_checkpoint(checkpoints["serving-a"], "serving-a")


sys.path.insert(0, str(ROOT))
