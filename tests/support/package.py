"""The project as a user installs it: a wheel (built from an sdist, as `uv build` does) of
this checkout, installed with its declared dependencies into a fresh virtual environment that
sees nothing of the checkout (no PYTHONPATH, run from another folder).

The dependencies resolve from PyPI (through uv's cache) under env/main.lock as constraints,
so the test installs the pinned, tested versions; the ranges in pyproject.toml are what the
resolver must satisfy."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import ROOT

UV = Path(sys.executable).with_name("uv")
LOCK = ROOT / "env" / "main.lock"


@dataclass(frozen=True)
class InstalledWheel:
    venv: Path
    wheel: Path
    home: Path  # HOME of the processes it runs (a user's, empty)

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def magiclens(self) -> Path:
        return self.venv / "bin" / "magiclens"

    def env(self, **extra: str) -> dict[str, str]:
        """A user's environment: the venv on PATH, nothing of the checkout or the tests'."""
        env = {"PATH": f"{self.venv / 'bin'}:/usr/bin:/bin", "HOME": str(self.home),
               "LANG": "C.UTF-8"}
        env.update(extra)
        return env

    def run(self, *argv: str | Path, timeout: float = 120, **extra: str
            ) -> subprocess.CompletedProcess:
        return subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                              env=self.env(**extra), cwd=self.home, timeout=timeout, check=False)


def _run(cmd: list[str], timeout: float) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"


def install_wheel(tmp: Path) -> InstalledWheel:
    """Build the wheel into tmp/dist and install it (core dependencies) into tmp/venv."""
    dist, venv, home = tmp / "dist", tmp / "venv", tmp / "home"
    home.mkdir(parents=True, exist_ok=True)
    _run([str(UV), "build", "-q", "--out-dir", str(dist), str(ROOT)], 300)
    wheels = sorted(dist.glob("magiclens_suite-*.whl"))
    assert len(wheels) == 1, wheels
    _run([str(UV), "venv", "-q", "--python", sys.executable, str(venv)], 60)
    _run([str(UV), "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
          "-c", str(LOCK), str(wheels[0])], 600)
    return InstalledWheel(venv, wheels[0], home)
