"""Pair filtering decisions on crafted pairs (embeddings chosen to hit each rule)."""

from __future__ import annotations

import numpy as np

from services.triplegen.filtering import FilterConfig, decide
from services.triplegen.meta import ImageMeta

CFG = FilterConfig(sim_min=0.3, sim_max=0.95, min_side=32)


def unit(angle_deg: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array([1.0, np.tan(a), 0.0], np.float32) / np.sqrt(1 + np.tan(a) ** 2)


def m(i: int, alt: str, caption: str = "", w: int = 200, h: int = 200) -> ImageMeta:
    return ImageMeta(i, alt=alt, caption=caption, width=w, height=h)


def test_kept_pair_inside_window_with_text():
    keep, reason, sim = decide(m(1, "red apple"), m(2, "green pear"), unit(0), unit(60), CFG)
    assert keep and reason == "" and abs(sim - 0.5) < 1e-5


def test_near_duplicate_dropped():
    keep, reason, sim = decide(m(1, "cat"), m(2, "cat sleeping"), unit(0), unit(5), CFG)
    assert (keep, reason) == (False, "near_duplicate") and sim > 0.95


def test_unrelated_dropped():
    assert decide(m(1, "cat"), m(2, "bus"), unit(0), unit(85), CFG)[:2] == (False, "unrelated")


def test_missing_or_generic_text_dropped():
    assert decide(m(1, ""), m(2, "bus"), unit(0), unit(60), CFG)[1] == "no_text_query"
    assert decide(m(1, "bus"), m(2, "image"), unit(0), unit(60), CFG)[1] == "no_text_target"
    assert decide(m(1, "bus"), m(2, "", "Tram"), unit(0), unit(60), CFG)[0]  # caption counts


def test_identical_text_cannot_be_described():
    r = decide(m(1, "fish", "Fish"), m(2, "fish", "fish"), unit(0), unit(60), CFG)
    assert r[:2] == (False, "indistinct_text")


def test_low_resolution_and_missing_embedding():
    assert decide(m(1, "a", w=16), m(2, "bus"), unit(0), unit(60), CFG)[1] == \
        "low_resolution_query"
    assert decide(m(1, "tram"), m(2, "bus"), None, unit(60), CFG)[1] == "no_embedding"
