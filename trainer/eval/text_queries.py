"""Text-to-image search on the demo corpus's held-out pages (the paper's third task).

Queries are the held-out images' own alt texts (wording `alt`) or captions (`caption`),
each distinct text once; a query's targets are every held-out image of the same subject
(from the manifest's ground truth, which the miner never sees: the same emoji in every art
style, a country's flag as a flag and as an emoji, an animal as a drawing and a photo). The
gallery is every held-out image, none of which was trained on. Methods, all ranking the
gallery by cosine:

- `text_head`: the text-query head (trainer.models.text_head) against the index the model
  serves (its target embeddings): what `Search` with an instruction alone runs;
- `blank_image`: the released code's reading, a blank (white) query image plus the text as
  its instruction, through the fusion head, against the same index;
- `text_only`: the baseline, the alignment stage's text projection against its image
  projection (a space of its own that the index does not use).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from trainer.eval.corpus import recall_any_at_k
from trainer.eval.metrics import rank_gallery
from trainer.models.magiclens import MagicLens

TEXT_WORDINGS = ("alt", "caption")
TEXT_METHODS = ("text_head", "blank_image", "text_only")
MAX_TEXT_QUERIES = 20_000


@dataclass(frozen=True)
class TextQuery:
    text: str
    targets: tuple[str, ...]  # held-out image ids of the text's subject


def subject(truth: dict[str, Any], source: str) -> str:
    """What a corpus image shows, as the key two images of the same thing share: a country
    (flags, flag emoji), an animal (photos, drawings, animal emoji), a landmark, an emoji
    (by its full name: skin tone and gender variants differ), else the item's name."""
    for key in ("country", "animal", "landmark"):
        if truth.get(key):
            return f"{key}:{str(truth[key]).lower()}"
    if truth.get("type") == "emoji":
        return f"emoji:{str(truth.get('name', '')).lower()}"
    return f"name:{str(truth.get('name', '')).lower()}:{source}"


def load_text_queries(corpus_dir: str | Path, wording: str = "alt"
                      ) -> tuple[list[TextQuery], dict[str, Path]]:
    """(queries, held-out gallery {image id: file}) for one wording."""
    if wording not in TEXT_WORDINGS:
        raise ValueError(f"wording must be one of {TEXT_WORDINGS}, not {wording!r}")
    corpus_dir = Path(corpus_dir)
    manifest = json.loads((corpus_dir / "manifest.json").read_text())
    held = [img for img in manifest["images"] if img.get("split") == "heldout"]
    gallery = {img["id"]: corpus_dir / img["file"] for img in held}
    by_subject: dict[str, set[str]] = {}
    for img in held:
        by_subject.setdefault(subject(img.get("truth") or {}, img.get("source", "")),
                              set()).add(img["id"])
    targets: dict[str, set[str]] = {}
    for img in held:
        text = " ".join(str(img.get(wording) or "").split())
        if text:
            targets.setdefault(text, set()).update(
                by_subject[subject(img.get("truth") or {}, img.get("source", ""))])
    queries = [TextQuery(t, tuple(sorted(ids))) for t, ids in sorted(targets.items())]
    if not queries:
        raise ValueError(f"no held-out {wording} texts in {corpus_dir}")
    return queries[:MAX_TEXT_QUERIES], gallery


@dataclass
class TextEvalSet:
    """Both wordings' queries and the features they need (the gallery's are the corpus
    evaluation's: trainer.experiments.EvalSet)."""

    queries: dict[str, list[TextQuery]]
    text_features: dict[str, np.ndarray]
    blank_features: np.ndarray  # [1, Fi] a white image's tower features


def text_eval_set(corpus_dir: Path, model: MagicLens, params: Any, pre: Any,
                  cache: Path | None = None) -> TextEvalSet:
    """Queries of every wording, with the text tower's features of their texts and the blank
    image's features (towers frozen, so `params` may be any with the pretrained towers)."""
    from trainer.features import compute_features

    queries = {w: load_text_queries(corpus_dir, w)[0] for w in TEXT_WORDINGS}
    texts = sorted({q.text for qs in queries.values() for q in qs})
    path = None if cache is None else cache / "text-queries.npz"
    tf = None
    if path is not None and path.exists():
        with np.load(path, allow_pickle=False) as z:
            if [str(x) for x in z["texts"]] == texts:
                tf, blank = z["text"], z["blank"]
    if tf is None:
        _, tf = compute_features(model, params, pre, [], texts)
        white = pre.images([Image.new("RGB", (pre.image_size, pre.image_size), "white")])
        blank = np.asarray(model.apply({"params": params}, white,
                                       method=MagicLens.image_features_only), np.float32)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, texts=np.asarray(texts), text=tf, blank=blank)
    return TextEvalSet(queries, dict(zip(texts, tf, strict=True)), blank)


def pretrained_text_eval_set(corpus_dir: Path, arch: dict[str, Any], cache: Path
                             ) -> TextEvalSet:
    """`text_eval_set` with the compact config (`arch` overrides) and its pretrained towers."""
    import dataclasses

    from trainer.models.magiclens import CONFIGS, build_model, pretrained_params

    model, pre = build_model("compact", config=dataclasses.replace(CONFIGS["compact"], **arch))
    params = pretrained_params(model, jax.random.PRNGKey(0), pre.image_size)
    return text_eval_set(corpus_dir, model, params, pre, cache)


def text_report(results: list[dict]) -> str:
    """Markdown: text-to-image R@K per variant, method and wording (mean ± sd over seeds)."""
    import statistics

    def cell(vals: list[float]) -> str:
        if len(vals) == 1:
            return f"{vals[0]:.1f}"
        return f"{statistics.mean(vals):.1f} ± {statistics.stdev(vals):.1f}"

    runs = [r for r in results if "text_queries" in r]
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    first = runs[0]["text_queries"]
    lines = ["Text-to-image search on the held-out pages (queries: the held-out images' own "
             "alt texts or captions; targets: every held-out image of the same subject; "
             + ", ".join(f"{w} {int(first[w]['queries'])} queries" for w in first) + "):",
             "", "| configuration | method | wording | R@1 | R@5 | R@10 |",
             "|---|---|---|---|---|---|"]
    for v in variants:
        vr = [r["text_queries"] for r in runs if r["variant"] == v]
        for m in TEXT_METHODS:
            for w in TEXT_WORDINGS:
                vals = {k: [t[w][f"{m}/R@{k}"] for t in vr if f"{m}/R@{k}" in t.get(w, {})]
                        for k in (1, 5, 10)}
                if vals[1]:
                    lines.append(f"| {v} | {m} | {w} | "
                                 + " | ".join(cell(vals[k]) for k in (1, 5, 10)) + " |")
    return "\n".join(lines)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def text_query_metrics(model: MagicLens, params: Any, tset: TextEvalSet, ids: Sequence[str],
                       gallery_features: np.ndarray, empty_text_features: np.ndarray,
                       model_gallery_features: np.ndarray | None = None,
                       ks: Sequence[int] = (1, 5, 10)) -> dict[str, dict[str, float]]:
    """{wording: {"<method>/R@K": %, "queries": n}}; `text_head` only when the model has
    the head. `model_gallery_features`: the gallery through a tuned tower (trainer.tower)."""
    # jitted, on device copies of the params: eager calls on the restored (numpy) params
    # gave run-to-run different outputs here
    params = jax.tree.map(jnp.asarray, params)

    def run(method):
        return jax.jit(lambda pp, *a: model.apply({"params": pp}, *a, method=method))

    mg = gallery_features if model_gallery_features is None else model_gallery_features
    ef = np.broadcast_to(empty_text_features, (len(mg), empty_text_features.shape[-1]))
    index = np.array(run(MagicLens.encode_target_features)(params, mg, ef))
    gi = _unit(np.array(run(MagicLens.project_features)(params, gallery_features, ef)[0]))
    out: dict[str, dict[str, float]] = {}
    for wording, queries in tset.queries.items():
        xf = np.stack([tset.text_features[q.text] for q in queries])
        blank = np.repeat(tset.blank_features, len(queries), 0)
        embs = {"blank_image": (np.array(run(MagicLens.encode_features)(params, blank, xf)),
                                index),
                "text_only": (_unit(np.array(run(MagicLens.project_features)(
                    params, blank, xf)[1])), gi)}
        if model.has_text_query:
            embs["text_head"] = (np.array(run(MagicLens.encode_text_query_features)(
                params, xf)), index)
        gts = [q.targets for q in queries]
        got: dict[str, float] = {"queries": float(len(queries))}
        for method, (q, g) in embs.items():
            ranks = rank_gallery(np.asarray(q) @ np.asarray(g).T, list(ids), top=max(ks))
            for k, v in recall_any_at_k(ranks, gts, ks).items():
                got[f"{method}/R@{k}"] = v
        out[wording] = got
    return out
