"""Retrieval metrics exactly as the benchmarks define them.

Rankings are lists of gallery ids, best first. Whether the query's reference image is
removed first is the benchmark's rule, applied by the caller through `exclude`: CIRR removes
it (its test server and CLIP4Cir/CIRPLANT do); CIRCO and FashionIQ keep it, as the released
MagicLens evaluation (google-deepmind/magiclens inference.py) and CIRCO's own evaluation
server (miccunifi/CIRCO src/evaluation.py) do. `trainer.eval.benchmarks` follows that.
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


def top_k_ranking(
    queries: np.ndarray, gallery: np.ndarray, gallery_ids: Sequence[Hashable], k: int,
    exclude: Sequence[Hashable | None] | None = None, chunk: int = 256,
) -> list[list[Hashable]]:
    """`rank_gallery(queries @ gallery.T, ...)[:, :k]` without the full [Q, N] sort: the
    top k (after removing each query's excluded id) by descending score, ties broken by
    gallery order exactly as the stable full sort does. Memory is [chunk, N] scores, so a
    123k-image gallery (CIRCO) ranks in pieces."""
    q = np.asarray(queries, np.float32)
    g = np.asarray(gallery, np.float32)
    n = g.shape[0]
    if k <= 0 or n == 0:
        return [[] for _ in range(len(q))]
    pos = {gid: i for i, gid in enumerate(gallery_ids)}
    out: list[list[Hashable]] = []
    for s in range(0, len(q), chunk):
        scores = q[s:s + chunk] @ g.T
        for r, row in enumerate(scores):
            ex = exclude[s + r] if exclude is not None else None
            ex_i = pos.get(ex, -1) if ex is not None else -1
            if ex_i >= 0:
                row = row.copy()
                row[ex_i] = -np.inf
            take = min(k, n - (ex_i >= 0))
            if take <= 0:
                out.append([])
                continue
            # Everything scoring at least the take-th best value: ties at the boundary are
            # all kept, so the stable sort below picks the same ones the full sort would.
            kth = np.partition(row, n - take)[n - take]
            cand = np.flatnonzero(row >= kth)
            cand = cand[np.lexsort((cand, -row[cand]))][:take]
            out.append([gallery_ids[j] for j in cand])
    return out


def rank_within(scores: np.ndarray, members: Sequence[Hashable],
                exclude: Hashable | None = None) -> list[Hashable]:
    """One query's ranking of a small candidate set (CIRR's image-set members): `scores[i]`
    is members[i]'s score; the excluded id (the reference) is dropped; best first, ties in
    member order."""
    keep = [i for i, m in enumerate(members) if m != exclude]
    order = sorted(keep, key=lambda i: (-float(scores[i]), i))
    return [members[i] for i in order]


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
