"""Pair filtering: keep pairs that are related but not the same picture, and describable.

MagicLens scores pairs with CLIP, MegaPairs keeps similarity in (0.8, 0.96). Our backbone is
MobileNetV2, whose pooled features are non-negative (cosines run higher than CLIP's), so the
window is configurable and its defaults come from the corpus distribution (README). Each drop
records one reason, so the keep rate can be explained.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.triplegen.meta import ImageMeta, words

FILTER_VERSION = "filter-v1"


@dataclass(frozen=True)
class FilterConfig:
    sim_min: float = 0.30
    sim_max: float = 0.98
    min_side: int = 32


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def decide(q: ImageMeta, t: ImageMeta, qe: np.ndarray | None, te: np.ndarray | None,
           cfg: FilterConfig) -> tuple[bool, str, float | None]:
    """(keep, reason, similarity); reason is '' for kept pairs."""
    for side, m in (("query", q), ("target", t)):
        if m.width and m.height and min(m.width, m.height) < cfg.min_side:
            return False, f"low_resolution_{side}", None
    if qe is None or te is None:
        return False, "no_embedding", None
    sim = cosine(qe, te)
    if not q.has_text():
        return False, "no_text_query", sim
    if not t.has_text():
        return False, "no_text_target", sim
    if sim > cfg.sim_max:
        return False, "near_duplicate", sim
    if sim < cfg.sim_min:
        return False, "unrelated", sim
    qt = " ".join(words(f"{q.alt} {q.caption}"))
    tt = " ".join(words(f"{t.alt} {t.caption}"))
    if qt == tt:
        return False, "indistinct_text", sim  # nothing in the text says how they differ
    return True, "", sim
