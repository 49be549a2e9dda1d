"""Trainer test fixtures: the tiny stand-in backbone (tests/support/standin.py) and an XLA
cache."""

from __future__ import annotations

import os
import tempfile

import jax
import pytest

from tests.support.standin import StandInBackbone, StandInPreprocessor

# Identical step functions are compiled by several tests (each train() call jits afresh):
# a persistent compilation cache turns the repeats into cache hits.
jax.config.update("jax_compilation_cache_dir", os.environ.get(
    "MAGICLENS_JAX_CACHE", os.path.join(tempfile.gettempdir(), "magiclens-jax-cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture
def standin_backbone():
    """Factory: (module, preprocessor) with embed_dim D."""
    def make(embed_dim: int = 64):
        return StandInBackbone(embed_dim=embed_dim), StandInPreprocessor()
    return make
