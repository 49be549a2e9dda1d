"""Where the checkout is: a module without dependencies, so that light entry points (the
CLI's `--help`, the token file's lookup) need not import pydantic to find it."""

from __future__ import annotations

import os
from pathlib import Path

_INSTALLED_INTO = {"site-packages", "dist-packages"}


def project_root() -> Path:
    """The checkout (MAGICLENS_HOME when set): the default data directory lives under it.

    When the suite is pip-installed (this file under site-packages) there is no checkout, and
    data must not be written among the installed packages: the root is then the user's data
    directory, $XDG_DATA_HOME/magiclens (~/.local/share/magiclens)."""
    if os.environ.get("MAGICLENS_HOME"):
        return Path(os.environ["MAGICLENS_HOME"])
    here = Path(__file__).resolve().parents[1]
    if here.name not in _INSTALLED_INTO:
        return here
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "magiclens"
