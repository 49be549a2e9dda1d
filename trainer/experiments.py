"""The quality experiment loop: train configurations on one frozen snapshot, over seeds, and
report held-out quality against search-by-image with the same backbone.

    python -m trainer.experiments --snapshot RUN_WORKDIR --corpus data/corpus \
        [--grid ablations|chosen|FILE.json] [--seeds 3] [--out DIR] [--markdown FILE]

`--snapshot` is a training run's work directory (the training service writes `train.jsonl`,
`captions.jsonl` and the images there) or any folder with those files. Tower features are
computed once and shared by every run (each run trains only what sits on the frozen towers),
so one configuration costs well under a minute per seed on 2 CPU cores. Every run is
evaluated on the corpus's held-out queries in both wordings: the writers' and the
hand-written unseen one (tools.corpus.unseen).

Grids: `chosen` = the compact config alone; `ablations` = it and the edit-head variants
docs/quality.md reports; `transformer` = the paper's head (slow on CPU); `tower` = the
image tower's last layer trained with the head (trainer.tower); `identity`, `wide` and
`lit` = rounds 5 and 6 of docs/quality.md; a JSON file = a
list of {"name", "config", "overrides": {...}, "arch": {...}}.

`--text-queries` also scores text-to-image search on the held-out pages (trainer.eval.
text_queries: the text-query head, a blank query image, the alignment baseline).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainer.checkpoints import META_FILE, load_params
from trainer.configs import get_config
from trainer.data.triples import JsonlTriples, read_captions
from trainer.eval.corpus import PHRASINGS, corpus_metrics, load_corpus_eval
from trainer.eval.retrieval import METHODS
from trainer.features import compute_features, feature_kind
from trainer.models.magiclens import (
    CONFIGS,
    abstract_params,
    build_model,
    config_for_checkpoint,
    pretrained_params,
)

MAX_SEEDS = 10
BAR_RELATION_MIN_N = 10
SHARED_CACHES = ("features.npz", "align_features.npz", "tower_inputs.npz", "lit_inputs.npz")


@dataclass(frozen=True)
class Variant:
    """One configuration: a trainer config name, field overrides and architecture overrides."""

    name: str
    config: str = "compact"
    overrides: dict[str, Any] = field(default_factory=dict)
    arch: dict[str, Any] = field(default_factory=dict)


CHOSEN = [Variant("chosen: edit head, colour, K=8, no query negatives, vague 0.3, T 0.1")]
# The first round of ablations varied one thing at a time around T 0.07, vague weight 1.0.
_R1 = {"temperature": 0.07, "vague_weight": 1.0}
ABLATIONS = [
    *CHOSEN,
    Variant("edit head, colour, K=8, no query negatives, T 0.07", overrides=_R1),
    Variant("... without colour histogram", overrides=_R1, arch={"colour_bins": 0}),
    Variant("... without hard negatives (K=0)", overrides={**_R1, "hard_negatives": 0}),
    Variant("... K=4 hard negatives", overrides={**_R1, "hard_negatives": 4}),
    Variant("... with query negatives", overrides={**_R1, "query_negatives": 1.0}),
    Variant("... vague triples weighted 0.3", overrides={**_R1, "vague_weight": 0.3}),
    Variant("... temperature 0.1", overrides={**_R1, "temperature": 0.1}),
    Variant("... 300 steps", overrides={**_R1, "steps": 300}),
    Variant("chosen, 900 steps", overrides={"steps": 900}),
    Variant("chosen, vague weight 1.0, 900 steps", overrides={"steps": 900,
                                                              "vague_weight": 1.0}),
    Variant("chosen, learning rate 1e-3", overrides={"learning_rate": 1e-3}),
    Variant("chosen, vague weight 0.1", overrides={"vague_weight": 0.1}),
    Variant("chosen, relation-balanced sampling (sqrt)", overrides={"relation_balance": 0.5}),
    Variant("chosen, relation-balanced sampling (equal)", overrides={"relation_balance": 1.0}),
    Variant("chosen, shift also sees the query image",
            arch={"edit_image_conditioned": True}),
]
# The paper's head: about 1.3 s per step on 2 cores (the edit head: 0.03 s), so run apart.
TRANSFORMER = [
    Variant("previous default: transformer head + residual, query negatives",
            "compact_transformer"),
    Variant("transformer head + residual, no query negatives, K=8 hard negatives",
            "compact_transformer", {"query_negatives": 0.0, "hard_negatives": 8}),
]
# Round 4 (issue 13): the image tower's last layer learns with the head (trainer.tower).
TOWER = [
    *CHOSEN,
    Variant("chosen + tower affine (features_18 scale/shift), tower lr 5e-4",
            overrides={"tower_tune": "affine", "tower_learning_rate": 5e-4}),
    Variant("chosen + tower LoRA r16 on features_18, tower lr 5e-4",
            overrides={"tower_tune": "lora", "tower_learning_rate": 5e-4}),
    Variant("chosen + tower affine, tower lr 2e-3",
            overrides={"tower_tune": "affine", "tower_learning_rate": 2e-3}),
    Variant("chosen + tower LoRA r16, tower lr 2e-3",
            overrides={"tower_tune": "lora", "tower_learning_rate": 2e-3}),
]
# Round 5 (issue 19 item 2): vague requests keep the query near its own image.
IDENTITY = [
    *CHOSEN,
    *(Variant(f"chosen + identity term {w:g} on vague triples",
              overrides={"identity_weight": w}) for w in (0.3, 1.0, 3.0)),
]
# Round 6 (issue 19): a 1,280-d index space (a rotation of the backbone's features) with the
# learned terms on its first 512 axes, and the tower's last layer tuned on captions (LiT).
WIDE = [
    *CHOSEN,
    Variant("chosen, embedding 1280 (a rotation of the backbone's features), shift and colour "
            "on its first 512 axes", arch={"embed_dim": 1280, "edit_shift_dim": 512}),
    Variant("... embedding 1280, shift on its first 512 axes, no colour histogram (zero shift "
            "= image-only exactly)",
            arch={"embed_dim": 1280, "edit_shift_dim": 512, "colour_bins": 0}),
    Variant("chosen without the colour histogram (512)", arch={"colour_bins": 0}),
]
LIT = [
    *CHOSEN,
    Variant("chosen + LiT stage, full last layer, lit lr 3e-3, 300 lit steps",
            overrides={"tower_lit": "full", "tower_lit_learning_rate": 3e-3}),
]
GRIDS = {"chosen": CHOSEN, "ablations": ABLATIONS, "transformer": TRANSFORMER, "tower": TOWER,
         "identity": IDENTITY, "wide": WIDE, "lit": LIT}


def load_grid(spec: str) -> list[Variant]:
    if spec in GRIDS:
        return GRIDS[spec]
    raw = json.loads(Path(spec).read_text())
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{spec}: expected a non-empty JSON list of variants")
    return [Variant(str(v["name"]), str(v.get("config", "compact")),
                    dict(v.get("overrides", {})), dict(v.get("arch", {}))) for v in raw]


# ------------------------------------------------------------------------------ features

@dataclass
class EvalSet:
    """Held-out queries of one wording and the tower features they need."""

    phrasing: str
    queries: list
    ids: list[str]
    gallery_features: np.ndarray
    text_features: dict[str, np.ndarray]
    empty_text_features: np.ndarray
    gallery_paths: list[str] = field(default_factory=list)
    cache: Path | None = None
    _tower_inputs: np.ndarray | None = field(default=None, repr=False)

    def tower_inputs(self) -> np.ndarray:
        """The gallery's activations before the image tower's last layer (trainer.tower),
        computed once per corpus and cached beside the features."""
        if self._tower_inputs is not None:
            return self._tower_inputs
        import jax

        from trainer import tower

        model, pre = build_model("compact")
        params = pretrained_params(model, jax.random.PRNGKey(0), pre.image_size)
        path = None if self.cache is None else self.cache / "eval-tower-inputs.npz"
        self._tower_inputs = tower.cached_inputs(path, model, params, pre,
                                                 self.gallery_paths, progress=True)
        return self._tower_inputs


def eval_sets(corpus: Path, variant_arch: dict[str, Any], cache: Path) -> list[EvalSet]:
    """Both wordings' queries with tower features (cached per backbone/colour setting)."""
    loaded = {}
    for ph in PHRASINGS:
        try:
            loaded[ph] = load_corpus_eval(corpus, ph)
        except ValueError as e:
            print(f"experiments: no {ph} queries ({e}); reporting the others only",
                  file=sys.stderr)
    if not loaded:
        raise ValueError(f"no held-out queries in {corpus}")
    gallery = next(iter(loaded.values()))[1]
    ids = sorted(gallery)
    texts = sorted({q.instruction for qs, _ in loaded.values() for q in qs})
    arch = dataclasses.replace(CONFIGS["compact"], **variant_arch)
    path = cache / f"eval-{feature_kind(arch)}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            gf, tf = z["image"], z["text"]
            same = [str(x) for x in z["ids"]] == ids and [str(x) for x in z["texts"]] == texts
    else:
        same = False
    if not same:
        import jax

        model, pre = build_model("compact", config=arch)
        params = pretrained_params(model, jax.random.PRNGKey(0), pre.image_size)
        gf, tf = compute_features(model, params, pre, [str(gallery[i]) for i in ids],
                                  [*texts, ""], progress=True)
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, image=gf, text=tf, ids=np.asarray(ids), texts=np.asarray(texts))
    by_text = dict(zip(texts, tf[:-1], strict=True))
    paths = [str(gallery[i]) for i in ids]
    return [EvalSet(ph, qs, ids, gf, by_text, tf[-1], paths, cache)
            for ph, (qs, _) in loaded.items()]


# ------------------------------------------------------------------------------ runs

def run_one(variant: Variant, seed: int, snapshot: Path, out: Path,
            sets: list[EvalSet], text: Any = None) -> dict[str, Any]:
    """Train one (variant, seed) on the snapshot and evaluate it on every wording."""
    from trainer.train import train

    cfg = get_config(variant.config, seed=seed, **variant.overrides)
    arch = dataclasses.replace(CONFIGS[cfg.model], **variant.arch)
    slug = "".join(c if c.isalnum() else "-" for c in variant.name.lower())[:60]
    workdir = out / "runs" / f"{slug}-s{seed}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    shared = out / "cache" / f"train-{feature_kind(arch)}"
    shared.mkdir(parents=True, exist_ok=True)
    for name in SHARED_CACHES:  # tower features do not depend on the seed or the head
        if not (shared / name).exists() and (snapshot / name).exists():
            shutil.copyfile(snapshot / name, shared / name)  # a training run's own cache
        if (shared / name).exists():
            os.link(shared / name, workdir / name)
    captions = snapshot / "captions.jsonl"
    t0 = time.perf_counter()
    result = train(cfg, JsonlTriples(snapshot / "train.jsonl"), workdir,
                   captions=read_captions(captions) if captions.exists() else None,
                   model_config=arch)
    seconds = time.perf_counter() - t0
    for name in SHARED_CACHES:
        if (workdir / name).exists() and not (shared / name).exists():
            os.link(workdir / name, shared / name)
    # the export's own architecture (the text-query head is added by training)
    model, pre = build_model(cfg.model, config=config_for_checkpoint(json.loads(
        (result.checkpoint / META_FILE).read_text())))
    params, _ = load_params(result.checkpoint, abstract_params(model, pre.image_size))
    metrics = {s.phrasing: corpus_metrics(model, params, s.queries, s.ids, s.gallery_features,
                                          s.text_features, s.empty_text_features,
                                          model_gallery_features=tuned_gallery(
                                              cfg, model, params, s))
               for s in sets}
    shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
    out_run = {"variant": variant.name, "seed": seed, "train_seconds": seconds,
               "config": dataclasses.asdict(cfg), "arch": dataclasses.asdict(arch),
               "metrics": metrics}
    if text is not None:
        from trainer.eval.text_queries import text_query_metrics

        s = sets[0]
        out_run["text_queries"] = text_query_metrics(
            model, params, text, s.ids, s.gallery_features, s.empty_text_features,
            tuned_gallery(cfg, model, params, s))
    return out_run


def tuned_gallery(cfg: Any, model: Any, params: Any, s: EvalSet) -> np.ndarray | None:
    """With tower tuning: the gallery's image features through the exported checkpoint's
    own last layer (what serving computes from pixels) and the unchanged colour histogram;
    None otherwise (the head reads the pretrained features, as it was trained to)."""
    if not (cfg.tower_tune or cfg.tower_lit):
        return None
    from trainer import tower

    return tower.features_through(model, params, s.tower_inputs(), s.gallery_features)


# ------------------------------------------------------------------------------ report

def mean_sd(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _vals(runs: list[dict], phrasing: str, key: str) -> list[float]:
    return [r["metrics"][phrasing][key] for r in runs if phrasing in r["metrics"]]


COLS = ("R@1", "R@5", "R@10", "mAP@5")


def report(results: list[dict]) -> str:
    """Markdown: the ablation table, then the first variant against the baselines, per
    wording and per relation, then the bar of issue 13 checked line by line."""
    variants = list(dict.fromkeys(r["variant"] for r in results))
    phrasings = [p for p in PHRASINGS if any(p in r["metrics"] for r in results)]
    lines = ["| configuration | wording | " + " | ".join(COLS) + " | train s |",
             "|---|---|" + "---|" * (len(COLS) + 1)]
    for v in variants:
        runs = [r for r in results if r["variant"] == v]
        for ph in phrasings:
            lines.append(f"| {v} | {ph} | " + " | ".join(
                mean_sd(_vals(runs, ph, f"magiclens/{c}")) for c in COLS)
                + f" | {statistics.mean(r['train_seconds'] for r in runs):.0f} |")
    best = [r for r in results if r["variant"] == variants[0]]
    seeds = len(best)
    lines += ["", f"**{variants[0]}** against the baselines ({seeds} seeds, mean ± sd; "
              "image_only is the backbone's own pooled features, no training):", "",
              "| method | wording | " + " | ".join(COLS) + " |",
              "|---|---|" + "---|" * len(COLS)]
    for ph in phrasings:
        for m in METHODS:
            lines.append(f"| {m} | {ph} | " + " | ".join(
                mean_sd(_vals(best, ph, f"{m}/{c}")) for c in COLS) + " |")
    for ph in phrasings:
        rels = sorted({k.split("/")[1] for k in best[0]["metrics"][ph]
                       if k.startswith("magiclens/") and k.endswith("/n")})
        lines += ["", f"By relation ({ph} wording):", "",
                  "| relation | n | magiclens R@1 | image_only R@1 | magiclens R@10 | "
                  "image_only R@10 | identity cos |", "|---|---|---|---|---|---|---|"]
        for rel in rels:
            n = int(best[0]["metrics"][ph][f"magiclens/{rel}/n"])
            ident = _vals(best, ph, f"magiclens/{rel}/identity_cos")
            lines.append(f"| {rel} | {n} | " + " | ".join(
                mean_sd(_vals(best, ph, f"{m}/{rel}/R@{k}"))
                for k in (1, 10) for m in ("magiclens", "image_only"))
                + (f" | {statistics.mean(ident):.2f} |" if ident else " | - |"))
    lines += ["", "The bar (issue 13), on the means:", ""] + [f"- {x}" for x in bar(best)]
    if any("text_queries" in r for r in results):
        from trainer.eval.text_queries import text_report

        lines += ["", text_report(results)]
    return "\n".join(lines)


def bar(runs: list[dict]) -> list[str]:
    """Issue 13's bar, each line saying met or NOT met with the numbers."""
    def m(ph: str, key: str) -> float:
        return statistics.mean(_vals(runs, ph, key))

    out = []
    for ph, need in (("writer", 10.0), ("unseen", 5.0)):
        if not _vals(runs, ph, "magiclens/R@1"):
            out.append(f"{ph} wording: no queries, not checked")
            continue
        for c in ("R@1", "mAP@5"):
            d = m(ph, f"magiclens/{c}") - m(ph, f"image_only/{c}")
            out.append(f"{ph} {c}: {d:+.1f} over image_only (need ≥ +{need:.0f}): "
                       + ("met" if d >= need else "NOT met"))
    for ph in PHRASINGS:
        if not _vals(runs, ph, "magiclens/R@1"):
            continue
        for k in sorted(runs[0]["metrics"][ph]):
            if not (k.startswith("magiclens/") and k.endswith("/n")):
                continue
            rel = k.split("/")[1]
            if runs[0]["metrics"][ph][k] < BAR_RELATION_MIN_N:
                continue
            floor = 0.0 if rel == "same_category" else -2.0
            d = m(ph, f"magiclens/{rel}/R@10") - m(ph, f"image_only/{rel}/R@10")
            if d < floor or rel == "same_category":
                out.append(f"{ph} {rel} R@10: {d:+.1f} vs image_only (need ≥ {floor:+.0f}): "
                           + ("met" if d >= floor else "NOT met"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.experiments",
                                 description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__)
    ap.add_argument("--snapshot", required=True, type=Path,
                    help="folder with train.jsonl (+ captions.jsonl): a training run's workdir")
    ap.add_argument("--corpus", required=True, type=Path,
                    help="built corpus (manifest.json, eval_queries.jsonl)")
    ap.add_argument("--grid", default="chosen",
                    help="chosen | ablations | transformer | tower | FILE.json")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("data/experiments"))
    ap.add_argument("--markdown", type=Path, help="also write the report here")
    ap.add_argument("--steps", type=int, help="override every variant's fusion steps")
    ap.add_argument("--text-queries", action="store_true",
                    help="also score text-to-image search (alt texts and captions of the "
                         "held-out images as queries)")
    a = ap.parse_args(argv)
    if not 1 <= a.seeds <= MAX_SEEDS:
        ap.error(f"--seeds must be 1..{MAX_SEEDS}")
    if not (a.snapshot / "train.jsonl").is_file():
        ap.error(f"{a.snapshot}/train.jsonl not found (point --snapshot at a training run's "
                 "workdir)")
    if not (a.corpus / "manifest.json").is_file() or not (a.corpus / "eval_queries.jsonl"
                                                         ).is_file():
        ap.error(f"{a.corpus}: not a built corpus (manifest.json, eval_queries.jsonl)")
    try:
        variants = load_grid(a.grid)
    except (OSError, ValueError, KeyError, TypeError) as e:
        ap.error(f"--grid {a.grid}: {e}")
    if a.steps is not None:
        variants = [dataclasses.replace(v, overrides={**v.overrides, "steps": a.steps})
                    for v in variants]
    a.out.mkdir(parents=True, exist_ok=True)
    results = []
    sets_by_arch: dict[str, list[EvalSet]] = {}
    for v in variants:
        akey = json.dumps(v.arch, sort_keys=True)
        if akey not in sets_by_arch:
            sets_by_arch[akey] = eval_sets(a.corpus, v.arch, a.out / "cache")
        text = None
        if a.text_queries:
            from trainer.eval.text_queries import pretrained_text_eval_set

            text = pretrained_text_eval_set(a.corpus, v.arch, a.out / "cache")
        for seed in range(a.seeds):
            r = run_one(v, seed, a.snapshot, a.out, sets_by_arch[akey], text)
            w = r["metrics"].get("writer", next(iter(r["metrics"].values())))
            print(f"experiments: {v.name} seed {seed}: R@1 {w['magiclens/R@1']:.1f} "
                  f"(image_only {w['image_only/R@1']:.1f}) in {r['train_seconds']:.0f}s",
                  flush=True)
            results.append(r)
            # after every run: a later failure keeps what the earlier runs measured
            (a.out / "results.json").write_text(json.dumps(results, indent=1))
    text = report(results)
    print(text)
    if a.markdown:
        a.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
