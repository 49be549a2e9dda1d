"""Is a backend built in this checkout? Lets a subcommand say "not built yet" instead of failing.

A backend counts as built when its entry module exists; whether it is *running* is a separate
question answered by calling it.
"""

from __future__ import annotations

import importlib.util

BACKENDS: dict[str, tuple[tuple[str, ...], str]] = {
    "search": (("services.search.root", "services.search.__main__"),
               "the search service (services/search)"),
    "training": (("services.training.__main__", "services.training.server"),
                 "the training service (services/training)"),
    "ingest": (("tools.ingest.__main__",), "page ingestion (tools/ingest)"),
    "mining": (("services.mining.miner",), "the miner (services/mining)"),
    "eval": (("trainer.eval.__main__",), "the evaluation harness's command (trainer/eval)"),
}


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def is_built(name: str) -> bool:
    return any(_exists(m) for m in BACKENDS[name][0])


def describe(name: str) -> str:
    return BACKENDS[name][1]
