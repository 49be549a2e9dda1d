"""Shared helpers for the gateway tests: a pool in a private database, a running gateway."""

from __future__ import annotations

import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from services.gateway.config import GatewaySettings
from services.gateway.server import GatewayServer, make_server
from tests.support.processes import wait_for
from tools.cli.cmd_index import index_folder
from tools.cli.settings import ClientSettings

PHOTOS = {"astronaut": "an astronaut in a spacesuit", "coffee": "a cup of coffee",
          "chelsea": "a tabby cat", "rocket": "a rocket on the launch pad",
          "camera": "a photographer with a camera", "moon": "the surface of the moon"}


def build_pool(database_url: str, root: Path) -> dict[str, int]:
    """Index real photos through the CLI's index path; returns {name: image_id}."""
    folder = root / "photos"
    folder.mkdir(parents=True)
    for name in PHOTOS:
        arr = np.asarray(getattr(skimage.data, name)())
        Image.fromarray(arr).save(folder / f"{name}.jpg", quality=90)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DATABASE_URL", database_url)
        mp.setenv("MAGICLENS_BLOB_URI", f"file://{root / 'blobs'}")
        captions = {f"{name}.jpg": text for name, text in PHOTOS.items()}
        result = index_folder(ClientSettings(), folder, captions, "Test photos", "upload",
                              False, False)
    return {r["file"].removesuffix(".jpg"): r["image_id"] for r in result["results"]}


@contextmanager
def running_gateway(**overrides: object) -> Iterator[str]:
    """A gateway on a free port in this process; yields its base URL."""
    with serving(make_server(GatewaySettings(gateway_port=0, **overrides))) as base:
        yield base


@contextmanager
def serving(server: GatewayServer) -> Iterator[str]:
    """Serve `server` in a thread until the block ends; yields its base URL."""
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.server.started, 30, "the gateway to start")
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.stop()
        thread.join(30)
        server.close()

CHROMIUM = Path("/usr/bin/chromium")


def chromium(url: str, *, screenshot: Path | None = None, budget_ms: int = 8000) -> str:
    """Load url headless; return the DOM after scripts ran (and optionally screenshot it)."""
    with tempfile.TemporaryDirectory() as profile:
        cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
               f"--user-data-dir={profile}", "--window-size=1280,900",
               f"--virtual-time-budget={budget_ms}"]
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            cmd.append(f"--screenshot={screenshot}")
        else:
            cmd.append("--dump-dom")
        proc = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout
