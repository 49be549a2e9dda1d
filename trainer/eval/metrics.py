"""Retrieval metrics exactly as the benchmarks define them.

Rankings are lists of gallery ids, best first, with the query's reference image already
removed (CIRR and CIRCO exclude it; `rank_gallery` does that).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np


def rank_gallery(
    scores: np.ndarray, gallery_ids: Sequence[Hashable],
    exclude: Sequence[Hashable | None] | None = None, top: int | None = None,
) -> list[list[Hashable]]:
    """Per query, gallery ids sorted by descending score, the excluded id (reference) removed."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, axis=1, kind="stable")
    out = []
    for qi, row in enumerate(order):
        ex = exclude[qi] if exclude is not None else None
        ids = [gallery_ids[j] for j in row if gallery_ids[j] != ex]
        out.append(ids[:top] if top else ids)
    return out


def recall_at_k(rankings: Sequence[Sequence[Hashable]], targets: Sequence[Hashable],
                ks: Sequence[int]) -> dict[int, float]:
    """Fraction of queries whose single ground-truth target is in the top K (in %)."""
    n = len(rankings)
    if n == 0:
        return {k: 0.0 for k in ks}
    return {k: 100.0 * sum(t in r[:k] for r, t in zip(rankings, targets, strict=True)) / n
            for k in ks}


def average_precision_at_k(ranking: Sequence[Hashable], gt: set[Hashable] | Sequence[Hashable],
                           k: int) -> float:
    """CIRCO AP@K = (1/min(K,|G|)) * sum_{k'<=K} P@k' * rel(k')."""
    gt = set(gt)
    if not gt:
        raise ValueError("empty ground-truth set")
    hits, total = 0, 0.0
    for rank, item in enumerate(ranking[:k], start=1):
        if item in gt:
            hits += 1
            total += hits / rank
    return total / min(k, len(gt))


def map_at_k(rankings: Sequence[Sequence[Hashable]], gts: Sequence[Sequence[Hashable]],
             ks: Sequence[int]) -> dict[int, float]:
    """CIRCO mAP@K in %: mean AP@K over queries."""
    n = len(rankings)
    return {k: 100.0 * float(np.mean([average_precision_at_k(r, g, k)
                                      for r, g in zip(rankings, gts, strict=True)])) if n else 0.0
            for k in ks}


def recall_subset_at_k(rankings: Sequence[Sequence[Hashable]], targets: Sequence[Hashable],
                       subsets: Sequence[Sequence[Hashable]], references: Sequence[Hashable],
                       ks: Sequence[int] = (1, 2, 3)) -> dict[int, float]:
    """CIRR Recall_subset@K: rank only within each query's image set, reference removed."""
    restricted = []
    for r, subset, ref in zip(rankings, subsets, references, strict=True):
        members = set(subset) - {ref}
        restricted.append([i for i in r if i in members])
    return recall_at_k(restricted, targets, ks)
