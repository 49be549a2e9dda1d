"""Fetch openly licensed image collections from Debian and npm into a local cache.

Nothing is installed system-wide: Debian packages are fetched with ``apt-get download``
and unpacked with ``dpkg-deb``; npm packages with ``npm pack`` and a safe tar extraction.
Every source is optional: a failure yields ``None`` and one clear line on stderr.
Unpacked trees are marked complete with a stamp file, so re-runs do no network I/O.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

# Pinned versions: the corpus must be reproducible byte for byte.
NPM_PACKAGES: dict[str, str] = {
    "openmoji": "17.0.0",
    "svg-country-flags": "1.2.10",
    "world-countries": "5.1.0",
    "@lobehub/fluent-emoji-3d": "1.1.0",
}
# Debian packages and the members we need from them (glob patterns for tar).
DEB_PACKAGES: dict[str, list[str]] = {
    "gcompris-qt-data": ["./usr/share/gcompris-qt/rcc/*"],
    "fonts-noto-color-emoji": ["./usr/share/fonts/*", "./usr/share/doc/*"],
    "openclipart-png": ["./usr/share/openclipart/png/*", "./usr/share/doc/*"],
    "tuxpaint-stamps-default": ["*.png", "*.txt", "./usr/share/doc/*"],
}
MAX_ARCHIVE_BYTES = 400 * 1024 * 1024
STAMP = ".complete"


class SourceUnavailable(RuntimeError):
    """A source could not be fetched; the message is user-facing."""


@dataclass
class Fetcher:
    cache: Path  # data/cache/sources
    timeout_s: int = 600
    _apt_updated: bool = False

    def _stamp_ok(self, dest: Path) -> bool:
        return (dest / STAMP).is_file()

    def _run(self, cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                cmd, cwd=cwd, capture_output=True, text=True, timeout=self.timeout_s, check=False
            )
        except FileNotFoundError as exc:
            raise SourceUnavailable(f"{cmd[0]} not installed") from exc
        except subprocess.TimeoutExpired as exc:
            raise SourceUnavailable(f"{cmd[0]} timed out") from exc

    def deb(self, package: str) -> Path:
        """Return the unpacked root of a Debian package, fetching it if needed."""
        dest = self.cache / "deb" / package
        if self._stamp_ok(dest):
            return dest
        dl = self.cache / "downloads"
        dl.mkdir(parents=True, exist_ok=True)
        debs = sorted(dl.glob(f"{package}_*.deb"))
        if not debs:
            res = self._run(["apt-get", "download", package], dl)
            if res.returncode != 0 and not self._apt_updated:
                # Fresh machines have no package lists yet ("no candidate" / "unable to
                # locate"): refresh them once per build and retry.
                self._apt_updated = True
                self._run(["apt-get", "update"], dl)
                res = self._run(["apt-get", "download", package], dl)
            debs = sorted(dl.glob(f"{package}_*.deb"))
            if res.returncode != 0 or not debs:
                last = (res.stderr.strip().splitlines() or ["unknown error"])[-1]
                raise SourceUnavailable(f"apt-get download failed: {last}")
        deb = debs[-1]
        if deb.stat().st_size > MAX_ARCHIVE_BYTES:
            raise SourceUnavailable(f"{deb.name} larger than {MAX_ARCHIVE_BYTES} bytes")
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        # Extract only what we use (tuxpaint ships ~8k sound files we don't need).
        fsys = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        tar = subprocess.run(
            ["tar", "-x", "--no-same-owner", "--wildcards", "-C", str(tmp),
             *DEB_PACKAGES.get(package, ["*"])],
            stdin=fsys.stdout, capture_output=True, text=True, check=False,
        )
        fsys.wait()
        if fsys.returncode != 0 or tar.returncode != 0:
            raise SourceUnavailable(f"could not unpack {deb.name}: {tar.stderr.strip()[:200]}")
        (tmp / STAMP).write_text(deb.name + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        return dest

    def npm(self, package: str) -> Path:
        """Return the unpacked ``package/`` dir of a pinned npm package."""
        version = NPM_PACKAGES[package]
        safe = package.replace("@", "").replace("/", "-")
        dest = self.cache / "npm" / f"{safe}-{version}"
        if self._stamp_ok(dest):
            return dest / "package"
        dl = self.cache / "downloads"
        dl.mkdir(parents=True, exist_ok=True)
        tgz = dl / f"{safe}-{version}.tgz"
        if not tgz.is_file():
            res = self._run(["npm", "pack", f"{package}@{version}", "--silent"], dl)
            if res.returncode != 0 or not tgz.is_file():
                last = (res.stderr.strip().splitlines() or ["unknown error"])[-1]
                raise SourceUnavailable(f"npm pack failed: {last[:200]}")
        if tgz.stat().st_size > MAX_ARCHIVE_BYTES:
            raise SourceUnavailable(f"{tgz.name} too large")
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            with tarfile.open(tgz, "r:gz") as tf:
                tf.extractall(tmp, filter="data")  # rejects absolute paths, links out, devices
        except (tarfile.TarError, OSError) as exc:
            raise SourceUnavailable(f"bad npm tarball {tgz.name}: {exc}") from exc
        (tmp / STAMP).write_text(tgz.name + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        return dest / "package"


def unavailable(source: str, reason: str) -> None:
    """Print the one-line notice for a skipped source."""
    print(f"corpus: source {source} unavailable: {reason}", file=sys.stderr, flush=True)
