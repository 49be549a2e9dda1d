"""Where the CLI finds the services: environment, with local defaults.

Read without pydantic (its import costs ~0.5 s on a small machine, more than a search): the
three CLI settings are parsed here; the shared service settings (`DATABASE_URL`, …) that
`status` and `index` need are loaded through runtime.config on first use."""

from __future__ import annotations

import functools
import os
from typing import Any

from runtime import ports
from runtime.errors import ConfigError

MAX_RPC_TIMEOUT_S = 3600.0


class ClientSettings:
    """`MAGICLENS_SEARCH_ADDR`, `MAGICLENS_TRAINING_ADDR`, `MAGICLENS_MINING_ADDR`,
    `MAGICLENS_RPC_TIMEOUT_S`; any
    other attribute is the shared runtime settings' (runtime.config.BaseServiceSettings)."""

    def __init__(self) -> None:
        self.search_addr = _addr("MAGICLENS_SEARCH_ADDR", ports.SEARCH_ADDR)
        self.training_addr = _addr("MAGICLENS_TRAINING_ADDR", ports.TRAINING_ADDR)
        self.mining_addr = _addr("MAGICLENS_MINING_ADDR", ports.MINING_ADDR)
        raw = os.environ.get("MAGICLENS_RPC_TIMEOUT_S", "30")
        try:
            timeout = float(raw)
        except ValueError:
            raise ConfigError(f"bad configuration: MAGICLENS_RPC_TIMEOUT_S: '{raw}' is not "
                              "a number") from None
        if not 0 < timeout <= MAX_RPC_TIMEOUT_S:
            raise ConfigError("bad configuration: MAGICLENS_RPC_TIMEOUT_S: must be in "
                              f"(0, {MAX_RPC_TIMEOUT_S:g}]")
        self.rpc_timeout_s = timeout

    @functools.cached_property
    def runtime(self):
        from runtime.config import BaseServiceSettings, load_settings

        return load_settings(BaseServiceSettings)

    def __getattr__(self, name: str) -> Any:  # database_url, blob_root, …
        if name.startswith("_") or name == "runtime":
            raise AttributeError(name)
        return getattr(self.runtime, name)


def _addr(env: str, default: str) -> str:
    value = os.environ.get(env, default)
    try:
        return ports.check_addr(value)
    except ValueError as exc:
        raise ConfigError(f"bad configuration: {env}: {exc}") from None
