"""Quality on the demo corpus's held-out pages: MagicLens vs the zero-shot baselines.

The queries (`eval_queries.jsonl`, written by the corpus builder from ground truth the miner
never sees) have a query image, an instruction and a set of target images; the gallery is
every image of the held-out pages, none of which was ever trained on. Recall@K counts a query
as found when any of its targets is in the top K; mAP@K is CIRCO's definition. The query
image is excluded from its own ranking.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.eval.metrics import map_at_k, rank_gallery
from trainer.eval.retrieval import METHODS, _params_tag, embed_all
from trainer.features import cached_features
from trainer.models.magiclens import MagicLens

MAX_QUERIES = 5000


@dataclass(frozen=True)
class CorpusQuery:
    qid: str
    query: str              # image id in the manifest
    instruction: str
    targets: tuple[str, ...]
    relation: str


PHRASINGS = ("writer", "unseen")


def load_corpus_eval(corpus_dir: str | Path, phrasing: str = "writer"
                     ) -> tuple[list[CorpusQuery], dict[str, Path]]:
    """(queries, held-out gallery {image id: file}) from a built corpus directory.

    `phrasing`: "writer" = the instruction in the writers' vocabulary; "unseen" = the
    hand-written second wording (tools.corpus.unseen), where the corpus has one."""
    if phrasing not in PHRASINGS:
        raise ValueError(f"phrasing must be one of {PHRASINGS}, not {phrasing!r}")
    field = "instruction" if phrasing == "writer" else "unseen_instruction"
    corpus_dir = Path(corpus_dir)
    manifest = json.loads((corpus_dir / "manifest.json").read_text())
    gallery = {img["id"]: corpus_dir / img["file"] for img in manifest["images"]
               if img.get("split") == "heldout"}
    queries = []
    with open(corpus_dir / "eval_queries.jsonl") as f:
        for n, line in enumerate(f):
            if n >= MAX_QUERIES:
                break
            q = json.loads(line)
            targets = tuple(t for t in q["targets"] if t in gallery)
            text = q.get(field) or ""
            if q["query_image"] in gallery and targets and text.strip():
                queries.append(CorpusQuery(q["id"], q["query_image"], text.strip(),
                                           targets, q.get("relation", "")))
    if not queries:
        raise ValueError(f"no usable held-out queries ({phrasing} phrasing) in {corpus_dir}")
    return queries, gallery


def recall_any_at_k(rankings: Sequence[Sequence[str]], gts: Sequence[Sequence[str]],
                    ks: Sequence[int]) -> dict[int, float]:
    """% of queries with at least one ground-truth target in the top K."""
    n = len(rankings)
    return {k: 100.0 * sum(bool(set(r[:k]) & set(g)) for r, g in zip(rankings, gts, strict=True))
            / max(n, 1) for k in ks}


def mean_pairwise_cosine(embeddings: np.ndarray) -> float:
    """Mean cosine between distinct gallery embeddings (unit vectors). Near 1 means the space
    has collapsed: rankings may survive, but scores say little and quantised ANN search
    (ScaNN's AH) loses the small differences that separate results."""
    n = len(embeddings)
    if n < 2:
        return float("nan")
    total = np.sum(embeddings, axis=0)
    return float((total @ total - np.sum(embeddings * embeddings)) / (n * (n - 1)))


def evaluate_corpus(model: MagicLens, params: Any, preprocessor: Any, corpus_dir: str | Path,
                    ks: Sequence[int] = (1, 5, 10), map_ks: Sequence[int] = (5,),
                    cache_file: Path | None = None, phrasing: str = "writer"
                    ) -> dict[str, float]:
    """Metrics keyed `<method>/R@K`, `<method>/mAP@K` and `<method>/<relation>/R@K|mAP@K`."""
    queries, gallery = load_corpus_eval(corpus_dir, phrasing)
    ids = sorted(gallery)
    texts = sorted({q.instruction for q in queries})
    fi, ft = cached_features(cache_file, model, params, preprocessor,
                             [str(gallery[i]) for i in ids], [*texts, ""],
                             params_tag=_params_tag(params))
    return corpus_metrics(model, params, queries, ids, fi, dict(zip(texts, ft[:-1],
                                                                    strict=True)), ft[-1],
                          ks, map_ks)


def corpus_metrics(model: MagicLens, params: Any, queries: Sequence[CorpusQuery],
                   ids: Sequence[str], gallery_features: np.ndarray,
                   text_features: dict[str, np.ndarray], empty_text_features: np.ndarray,
                   ks: Sequence[int] = (1, 5, 10), map_ks: Sequence[int] = (5,),
                   model_gallery_features: np.ndarray | None = None) -> dict[str, float]:
    """`evaluate_corpus` on precomputed backbone features (the experiment loop reuses one
    feature cache over many trained heads). `ids[i]` is the image of gallery_features[i].
    `model_gallery_features`: the same images' features through a trained tower, for
    magiclens only (the baselines keep the pretrained `gallery_features`)."""
    fi = gallery_features
    gidx = {g: i for i, g in enumerate(ids)}
    rows = [gidx[q.query] for q in queries]
    qf = fi[rows]
    xf = np.stack([text_features[q.instruction] for q in queries])
    mf = None if model_gallery_features is None else (model_gallery_features[rows],
                                                      model_gallery_features)
    embs = embed_all(model, params, qf, xf, fi, empty_text_features, mf)
    gts = [q.targets for q in queries]
    out: dict[str, float] = {"queries": float(len(queries)), "gallery": float(len(ids))}
    top = max([*ks, *map_ks, 10])
    by_rel: dict[str, list[int]] = defaultdict(list)
    for i, qq in enumerate(queries):
        by_rel[qq.relation].append(i)
    for method in METHODS:
        q, g = embs[method]
        out[f"{method}/gallery_cos"] = mean_pairwise_cosine(np.asarray(g))
        # How close each query embedding stays to its own image (issue 19: identity kept)
        own = np.sum(np.asarray(q) * np.asarray(g)[rows], axis=-1)
        out[f"{method}/identity_cos"] = float(np.mean(own))
        ranks = rank_gallery(np.asarray(q) @ np.asarray(g).T, list(ids),
                             exclude=[qq.query for qq in queries], top=top)
        for k, v in recall_any_at_k(ranks, gts, ks).items():
            out[f"{method}/R@{k}"] = v
        for k, v in map_at_k(ranks, gts, map_ks).items():
            out[f"{method}/mAP@{k}"] = v
        for rel, idx in sorted(by_rel.items()):
            r_rel, g_rel = [ranks[i] for i in idx], [gts[i] for i in idx]
            for k, v in recall_any_at_k(r_rel, g_rel, sorted({*ks, 10})).items():
                out[f"{method}/{rel}/R@{k}"] = v
            for k, v in map_at_k(r_rel, g_rel, map_ks).items():
                out[f"{method}/{rel}/mAP@{k}"] = v
            out[f"{method}/{rel}/n"] = float(len(idx))
            out[f"{method}/{rel}/identity_cos"] = float(np.mean(own[idx]))
    return out


def quality_table(metrics: dict[str, float], ks: Sequence[int] = (1, 5, 10),
                  map_ks: Sequence[int] = (5,)) -> str:
    """The headline table (markdown) for the demo and `magiclens eval`."""
    cols = [f"R@{k}" for k in ks] + [f"mAP@{k}" for k in map_ks]
    lines = ["| method | " + " | ".join(cols) + " | gallery cos |",
             "|---|" + "---|" * (len(cols) + 1)]
    for m in METHODS:
        lines.append(f"| {m} | " + " | ".join(f"{metrics.get(f'{m}/{c}', float('nan')):.1f}"
                                            for c in cols)
                     + f" | {metrics.get(f'{m}/gallery_cos', float('nan')):.2f} |")
    return "\n".join(lines)


def relation_table(metrics: dict[str, float]) -> str:
    """Per-relation R@10: where the trained model beats or loses to the best baseline."""
    rels = sorted({k.split("/")[1] for k in metrics
                   if k.startswith("magiclens/") and k.endswith("/n")})
    lines = ["| relation | n | magiclens R@10 | best baseline R@10 | baseline |",
             "|---|---|---|---|---|"]
    for rel in rels:
        base = {m: metrics[f"{m}/{rel}/R@10"] for m in METHODS[1:]}
        best = max(base, key=base.get)
        lines.append(f"| {rel or '-'} | {int(metrics[f'magiclens/{rel}/n'])} | "
                     f"{metrics[f'magiclens/{rel}/R@10']:.1f} | {base[best]:.1f} | {best} |")
    return "\n".join(lines)
