"""Where the checkout is: a module without dependencies, so that light entry points (the
CLI's `--help`, the token file's lookup) need not import pydantic to find it."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The checkout (MAGICLENS_HOME when set): the default data directory lives under it."""
    return Path(os.environ.get("MAGICLENS_HOME", Path(__file__).resolve().parents[1]))
