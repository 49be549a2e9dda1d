"""Benchmark runs: CIRCO, CIRR and FashionIQ as their official releases lay them out.

`python -m trainer.eval --benchmark circo|cirr|fashioniq --data DIR --checkpoint CKPT`
embeds the split's gallery (batched, with a progress bar), ranks it for every query, prints
the metrics the MagicLens paper reports and writes the test-server submission files.

What each release looks like, and the rules followed, as read from the official repositories:

- CIRCO (github.com/miccunifi/CIRCO, README "Data Structure" and src/dataset.py):
  `DIR/annotations/{val,test}.json` (keys `id`, `reference_img_id`, `shared_concept`,
  `relative_caption`; val also `target_img_id`, `gt_img_ids`), the gallery is every image of
  `DIR/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json` (`images[].id`,
  `images[].file_name`) under `DIR/COCO2017_unlabeled/unlabeled2017/`. Metric mAP@{5,10,25,50}
  as src/evaluation.py computes it (sum of precision at the hits in the top K over
  min(K, |G|)). Submission (README "Submission Format", submission_examples/): one JSON object
  {query id: [top-50 COCO image ids as integers]}, every test query present, no duplicates.
  The reference image stays in the gallery, as in CIRCO's evaluation and the released
  MagicLens inference.py (never a ground truth: 0 of the 220 val queries list it).
- CIRR (github.com/Cuberick-Orion/CIRR, README "Dataset File Structure" and
  Test-split_server.md): `DIR/captions/cap.rc2.{val,test1}.json` (`pairid`, `reference`,
  `target_hard`, `caption`, `img_set.members`), `DIR/image_splits/split.rc2.{val,test1}.json`
  (image name -> path relative to `DIR/img_raw/`, e.g. "./test1/test1-147-1-img1.png"); the
  gallery is the split's images minus the query's reference. Recall@{1,5,10,50};
  Recall_subset@{1,2,3} ranks only the query's `img_set.members` minus the reference. Two
  submission files (demo_files/test1_pred_ranks_recall{,_subset}.json):
  {"version": "rc2", "metric": "recall", pairid: [top-50 names]} and
  {"version": "rc2", "metric": "recall_subset", pairid: [top-3 members]}.
- FashionIQ (github.com/XiaoxiaoGuo/fashion-iq captions/ and image_splits/; images as the
  released MagicLens data/README.md lays them out): `DIR/captions/cap.{dress,shirt,toptee}
  .val.json` (`candidate`, `target`, `captions`), `DIR/image_splits/split.{category}.val.json`
  (the category's gallery), `DIR/images/<id>.png`. Recall@{10,50} per category and their
  mean; the reference stays in the gallery (released MagicLens data_utils.build_fiq_dataset).
  There is no test server, so no submission file; each category's top 50 per query goes
  to CATEGORY_val_top50.json.

Instructions are built as the released MagicLens eval builds them (trainer.eval.datasets).
Every file read is size-limited and checked first. Only gallery embeddings may be kept
between runs (`--cache DIR`, GalleryCache: .npz read without pickle, keyed by everything
they depend on); CIRCO's val and test share one 123k-image gallery.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import jax
import numpy as np

from trainer.data.triples import load_image
from trainer.eval.datasets import (
    EvalQuery,
    _load_json,
    load_circo,
    load_cirr,
    load_cirr_split,
    load_fashioniq,
    load_fashioniq_split,
)
from trainer.eval.metrics import map_at_k, rank_within, recall_at_k, top_k_ranking
from trainer.models.magiclens import MagicLens

BENCHMARKS = ("circo", "cirr", "fashioniq")
FIQ_CATEGORIES = ("dress", "shirt", "toptee")
CIRR_VERSION = "rc2"
TOP = 50  # both test servers take the top 50
SUBSET_TOP = 3
CIRCO_KS = (5, 10, 25, 50)
CIRR_KS = (1, 5, 10, 50)
CIRR_SUBSET_KS = (1, 2, 3)
FIQ_KS = (10, 50)
MAX_GALLERY = 2_000_000
MAX_QUERIES = 200_000
CIRCO_SERVER = "https://circo.micc.unifi.it/"
CIRR_SERVER = "https://cirr.cecs.anu.edu.au/"

LAYOUTS = {
    "circo": "the CIRCO release: DIR/annotations/{val,test}.json, "
             "DIR/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json, "
             "DIR/COCO2017_unlabeled/unlabeled2017/<12-digit id>.jpg",
    "cirr": f"the CIRR release: DIR/captions/cap.{CIRR_VERSION}.{{val,test1}}.json, "
            f"DIR/image_splits/split.{CIRR_VERSION}.{{val,test1}}.json, "
            "DIR/img_raw/<the split file's relative paths, e.g. ./dev/dev-0-0-img0.png>",
    "fashioniq": "the FashionIQ release: DIR/captions/cap.{dress,shirt,toptee}.val.json, "
                 "DIR/image_splits/split.{dress,shirt,toptee}.val.json, DIR/images/<id>.png",
}


class LayoutError(ValueError):
    """The data directory is not laid out as the benchmark's release (one-line message)."""


@dataclass
class Split:
    """One benchmark split ready to run: queries, gallery ids (in ranking tie order) and the
    image file of every gallery id and reference."""

    benchmark: str
    split: str
    queries: list[EvalQuery]
    gallery: list[str]
    files: dict[str, Path]
    exclude_reference: bool
    category: str = ""
    has_targets: bool = field(init=False)

    def __post_init__(self) -> None:
        self.has_targets = bool(self.queries) and all(q.targets for q in self.queries)

    @property
    def name(self) -> str:
        return f"{self.benchmark}/{self.category}" if self.category else self.benchmark


def _need(path: Path, benchmark: str) -> Path:
    if not path.is_file():
        raise LayoutError(f"missing {path} (expected {LAYOUTS[benchmark]})")
    return path


def _check_images(files: dict[str, Path], benchmark: str) -> None:
    """Every image file present before anything is embedded (hours into a CIRCO run is
    too late to find a missing one)."""
    missing = [p for p in files.values() if not p.is_file()]
    if missing:
        more = f" and {len(missing) - 1} more images" if len(missing) > 1 else ""
        raise LayoutError(f"missing {missing[0]}{more} (expected {LAYOUTS[benchmark]})")


def _safe_name(name: str, what: str) -> str:
    """An id or file name used to build a path: one plain component, nothing else."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"{what}: {name!r:.80} is not a plain file name")
    return name


def _under(root: Path, rel: str, what: str) -> Path:
    """`root/rel` for a release's relative path, refusing absolute paths and `..`."""
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or "\\" in rel or "\0" in rel:
        raise ValueError(f"{what}: {rel!r:.80} is not a relative path inside {root}")
    return root.joinpath(*[x for x in p.parts if x != "."])


def _limit(n: int, cap: int, what: str) -> None:
    if n > cap:
        raise ValueError(f"{what}: {n} entries exceed the limit of {cap}")


def circo_split(data: Path, split: str) -> Split:
    """CIRCO val (has ground truth) or test (submission only)."""
    if split not in ("val", "test"):
        raise ValueError(f"CIRCO splits are val and test, not {split!r}")
    ann = _need(data / "annotations" / f"{split}.json", "circo")
    coco = data / "COCO2017_unlabeled"
    info = _load_json(_need(coco / "annotations" / "image_info_unlabeled2017.json", "circo"))
    images = info.get("images") if isinstance(info, dict) else None
    if not isinstance(images, list):
        raise ValueError(f"{coco / 'annotations'}/image_info_unlabeled2017.json: "
                         "expected an object with an `images` list")
    _limit(len(images), MAX_GALLERY, "image_info_unlabeled2017.json")
    img_dir = coco / "unlabeled2017"
    files: dict[str, Path] = {}
    for rec in images:
        if not (isinstance(rec, dict) and isinstance(rec.get("id"), int)
                and isinstance(rec.get("file_name"), str)):
            raise ValueError(f"image_info_unlabeled2017.json: entry {rec!r:.120} needs an "
                             "integer `id` and a `file_name`")
        files[str(rec["id"])] = img_dir / _safe_name(rec["file_name"], "file_name")
    queries = load_circo(ann)
    _limit(len(queries), MAX_QUERIES, str(ann))
    for q in queries:
        if q.reference not in files:
            raise ValueError(f"{ann}: query {q.qid}'s reference_img_id {q.reference} is not "
                             "in image_info_unlabeled2017.json")
    _check_images(files, "circo")
    return Split("circo", split, queries, list(files), files, exclude_reference=False)


def cirr_split(data: Path, split: str) -> Split:
    """CIRR val (has targets) or test1 (submission only)."""
    split = "test1" if split == "test" else split
    if split not in ("val", "test1"):
        raise ValueError(f"CIRR splits are val and test1, not {split!r}")
    caps = _need(data / "captions" / f"cap.{CIRR_VERSION}.{split}.json", "cirr")
    names = load_cirr_split(_need(data / "image_splits" / f"split.{CIRR_VERSION}.{split}.json",
                                  "cirr"))
    _limit(len(names), MAX_GALLERY, "CIRR image split")
    raw = data / "img_raw"
    if not raw.is_dir():
        raise LayoutError(f"missing {raw}/ (expected {LAYOUTS['cirr']})")
    files = {n: _under(raw, rel, f"split.{CIRR_VERSION}.{split}.json") for n, rel in names.items()}
    queries = load_cirr(caps)
    _limit(len(queries), MAX_QUERIES, str(caps))
    for q in queries:
        unknown = [i for i in (q.reference, *q.targets, *q.subset) if i not in files]
        if unknown:
            raise ValueError(f"{caps}: pair {q.qid} names {unknown[0]}, which is not in "
                             f"split.{CIRR_VERSION}.{split}.json")
    _check_images(files, "cirr")
    return Split("cirr", split, queries, list(files), files, exclude_reference=True)


def fashioniq_split(data: Path, category: str) -> Split:
    """FashionIQ val for one category (the public release has no test ground truth)."""
    if category not in FIQ_CATEGORIES:
        raise ValueError(f"FashionIQ categories are {', '.join(FIQ_CATEGORIES)}, "
                         f"not {category!r}")
    caps = _need(data / "captions" / f"cap.{category}.val.json", "fashioniq")
    gallery = load_fashioniq_split(_need(data / "image_splits" / f"split.{category}.val.json",
                                         "fashioniq"))
    _limit(len(gallery), MAX_GALLERY, f"split.{category}.val.json")
    queries = load_fashioniq(caps)
    _limit(len(queries), MAX_QUERIES, str(caps))
    img_dir = data / "images"
    gallery = list(dict.fromkeys(gallery))  # the order of first appearance, once each
    ids = set(gallery) | {q.reference for q in queries}
    files = {i: img_dir / f"{_safe_name(i, 'FashionIQ image id')}.png" for i in sorted(ids)}
    _check_images(files, "fashioniq")
    return Split("fashioniq", "val", queries, gallery, files, exclude_reference=False,
                 category=category)


def load_splits(benchmark: str, data: str | Path, split: str = "val",
                categories: Sequence[str] = FIQ_CATEGORIES) -> list[Split]:
    """The splits one `--benchmark` run covers (FashionIQ: one per category)."""
    data = Path(data)
    if not data.is_dir():
        raise LayoutError(f"missing {data}/ (expected {LAYOUTS.get(benchmark, benchmark)})")
    if benchmark == "circo":
        return [circo_split(data, split)]
    if benchmark == "cirr":
        return [cirr_split(data, split)]
    if benchmark == "fashioniq":
        if split != "val":
            raise ValueError("FashionIQ is evaluated on val (its test captions have no "
                             "public targets and no server)")
        return [fashioniq_split(data, c) for c in categories]
    raise ValueError(f"unknown benchmark {benchmark!r}; choose one of {BENCHMARKS}")


class Embedder:
    """Model embeddings in fixed-size batches (one compile per function): gallery targets
    from pixels, and queries from a reference's backbone features plus an instruction."""

    def __init__(self, model: MagicLens, params: Any, preprocessor: Any, batch: int = 64,
                 progress: bool = True, workers: int | None = None) -> None:
        self.pre, self.batch, self.progress = preprocessor, batch, progress
        self.params = params
        self.workers = workers or min(8, os.cpu_count() or 1)

        def images(params, pixels):
            v = {"params": params}
            f = model.apply(v, pixels, method=MagicLens.image_features_only)
            e = jax.numpy.broadcast_to(self._empty, (f.shape[0], self._empty.shape[-1]))
            return f, model.apply(v, f, e, method=MagicLens.encode_target_features)

        def texts(params, tokens):
            return model.apply({"params": params}, tokens, method=MagicLens.text_features_only)

        def queries(params, image_features, text_features):
            return model.apply({"params": params}, image_features, text_features,
                               method=MagicLens.encode_features)

        self._texts = jax.jit(texts)
        # Targets are the model on (image, empty text), as the released eval indexes them.
        empty = np.broadcast_to(np.asarray(model.empty_tokens, np.int32),
                                (batch, len(model.empty_tokens)))
        self._empty = np.asarray(self._texts(params, empty))[:1]
        self._images, self._queries = jax.jit(images), jax.jit(queries)

    def _pixels(self, path: Path) -> np.ndarray:
        try:
            return self.pre.images([load_image(path)])[0]
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot read the image ({e})") from None

    def _pad(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        return x if n == self.batch else np.concatenate([x, np.repeat(x[-1:], self.batch - n, 0)])

    def images(self, paths: Sequence[Path], desc: str, keep: Sequence[int] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """([N, D] target embeddings, [len(keep), F] backbone features of rows `keep` (all
        rows if None)) of the image files. Only the kept features stay in memory (CIRCO's
        references, not its 123k-image gallery); decoding runs in threads one batch ahead
        of the model."""
        from tqdm import tqdm

        n = len(paths)
        want = np.zeros(n, bool)
        want[np.arange(n) if keep is None else np.asarray(keep, int)] = True
        emb, feats = [], []
        with ThreadPoolExecutor(self.workers) as pool, \
                tqdm(total=n, desc=desc, unit="img", file=sys.stderr,
                     disable=not self.progress) as bar:
            pending = [pool.submit(self._pixels, p) for p in paths[:self.batch]]
            for s in range(0, n, self.batch):
                current = pending
                nxt = paths[s + self.batch:s + 2 * self.batch]
                pending = [pool.submit(self._pixels, p) for p in nxt]
                pixels = np.stack([f.result() for f in current]).astype(np.float32)
                f, e = self._images(self.params, self._pad(pixels))
                k = len(current)
                feats.append(np.asarray(f)[:k][want[s:s + k]])
                emb.append(np.asarray(e, np.float32)[:k])
                bar.update(k)
        if not emb:
            return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
        kept = np.concatenate(feats)
        if keep is not None:  # rows in the caller's order, not sorted order
            kept = kept[np.searchsorted(np.flatnonzero(want), np.asarray(keep, int))]
        return np.concatenate(emb), kept

    def queries(self, image_features: np.ndarray, instructions: Sequence[str]) -> np.ndarray:
        """[Q, D] query embeddings from the references' features and the instructions."""
        out = []
        for s in range(0, len(instructions), self.batch):
            chunk = list(instructions[s:s + self.batch])
            k = len(chunk)
            tokens = self.pre.texts(chunk + [chunk[-1]] * (self.batch - k))
            t = self._texts(self.params, tokens)
            q = self._queries(self.params, self._pad(image_features[s:s + k]), t)
            out.append(np.asarray(q, np.float32)[:k])
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


CACHE_VERSION = 1  # bump when the embedding code changes what it computes


class GalleryCache:
    """Gallery embeddings kept between runs as `DIR/gallery-KEY.npz` (numpy arrays only,
    loaded with allow_pickle=False). The key covers every parameter's bytes, the
    architecture, the preprocessing, the empty-text tokens and each image file's resolved
    path, size and mtime, so a changed checkpoint or file never reuses stale vectors; a file
    that does not match its key or cannot be read is ignored and rewritten."""

    def __init__(self, directory: str | Path, model: MagicLens, params: Any,
                 preprocessor: Any) -> None:
        self.dir = Path(directory)
        pre = {k: np.asarray(getattr(preprocessor, k)).tolist()
               for k in ("image_size", "resize", "resize_to", "scale", "resample", "mean",
                         "std") if hasattr(preprocessor, k)}
        h = hashlib.sha256(json.dumps([CACHE_VERSION, dataclasses.asdict(model.config),
                                       list(model.empty_tokens), pre], default=str).encode())
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
            a = np.asarray(leaf)
            h.update(f"{jax.tree_util.keystr(path)}:{a.dtype}:{a.shape}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
        self.model_digest = h.hexdigest()

    def key(self, paths: Sequence[Path]) -> str:
        h = hashlib.sha256(self.model_digest.encode())
        for p in paths:
            st = p.stat()
            h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def file(self, key: str) -> Path:
        return self.dir / f"gallery-{key[:32]}.npz"

    def load(self, key: str, n: int) -> np.ndarray | None:
        f = self.file(key)
        if not f.is_file():
            return None
        try:
            with np.load(f, allow_pickle=False) as z:
                if str(z["key"]) != key or z["embeddings"].shape[0] != n:
                    return None
                return np.asarray(z["embeddings"], np.float32)
        except (OSError, ValueError, KeyError):
            return None

    def save(self, key: str, embeddings: np.ndarray) -> Path:
        f = self.file(key)
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f.name + ".tmp")
        with tmp.open("wb") as fh:
            np.savez(fh, key=np.asarray(key), embeddings=embeddings.astype(np.float32))
        tmp.replace(f)
        return f


@dataclass
class Rankings:
    """Per query, the top-50 gallery ids (and, for CIRR, the top-3 image-set members)."""

    top: list[list[str]]
    subset: list[list[str]]


def rank_split(split: Split, embedder: Embedder, cache: GalleryCache | None = None,
               log: Callable[[str], None] | None = None) -> Rankings:
    """Embed the gallery (or take it from `cache`) and the references it lacks, embed the
    queries, rank."""
    gpos = {g: i for i, g in enumerate(split.gallery)}
    paths = [split.files[g] for g in split.gallery]
    key = cache.key(paths) if cache else ""
    g_emb = cache.load(key, len(paths)) if cache else None
    if g_emb is None:
        refs_in = sorted({q.reference for q in split.queries} & gpos.keys())
        g_emb, in_feat = embedder.images(paths, f"{split.name} {split.split} gallery",
                                         keep=[gpos[r] for r in refs_in])
        if cache:
            saved = cache.save(key, g_emb)
            if log:
                log(f"gallery embeddings saved to {saved}")
    else:  # only the references' backbone features are still needed
        refs_in, in_feat = [], np.zeros((0, 0), np.float32)
        if log:
            log(f"gallery embeddings from {cache.file(key)}")
    outside = sorted({q.reference for q in split.queries} - set(refs_in))
    o_feat = embedder.images([split.files[r] for r in outside],
                             f"{split.name} {split.split} query images")[1] if outside \
        else in_feat[:0]
    ref_feat = dict(zip(refs_in, in_feat, strict=True)) | dict(zip(outside, o_feat,
                                                                    strict=True))
    q_feat = np.stack([ref_feat[q.reference] for q in split.queries]) if split.queries \
        else in_feat[:0]
    q_emb = embedder.queries(q_feat, [q.instruction for q in split.queries])
    refs = [q.reference for q in split.queries] if split.exclude_reference else None
    top = top_k_ranking(q_emb, g_emb, split.gallery, TOP, exclude=refs)
    subset = []
    if split.benchmark == "cirr":
        for qi, q in enumerate(split.queries):
            members = [m for m in dict.fromkeys(q.subset) if m in gpos]
            scores = g_emb[[gpos[m] for m in members]] @ q_emb[qi] if members else []
            subset.append(rank_within(np.asarray(scores), members, q.reference)[:SUBSET_TOP])
    return Rankings(top, subset)


def split_metrics(split: Split, ranks: Rankings) -> dict[str, float]:
    """The paper's metrics (in %) for a split with ground truth; {} for a test split."""
    if not split.has_targets:
        return {}
    qs = split.queries
    if split.benchmark == "circo":
        return {f"mAP@{k}": v for k, v in map_at_k(ranks.top, [q.targets for q in qs],
                                                     CIRCO_KS).items()}
    targets = [q.targets[0] for q in qs]
    if split.benchmark == "cirr":
        out = {f"R@{k}": v for k, v in recall_at_k(ranks.top, targets, CIRR_KS).items()}
        out |= {f"R_subset@{k}": v
                for k, v in recall_at_k(ranks.subset, targets, CIRR_SUBSET_KS).items()}
        out["Avg"] = (out["R@5"] + out["R_subset@1"]) / 2  # CIRR's headline (R@5 + Rs@1)/2
        return out
    return {f"R@{k}": v for k, v in recall_at_k(ranks.top, targets, FIQ_KS).items()}


def _write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj))
    tmp.replace(path)
    return path


def write_submissions(split: Split, ranks: Rankings, out: Path) -> list[Path]:
    """The test-server files (CIRCO: submission_SPLIT.json; CIRR: SPLIT_pred_ranks_recall
    .json and SPLIT_pred_ranks_recall_subset.json); nothing for FashionIQ."""
    ids = [q.qid for q in split.queries]
    if split.benchmark == "circo":
        # COCO ids as integers: the server's evaluation.py reads them with dtype=int
        sub = {qid: [int(i) for i in r[:TOP]] for qid, r in zip(ids, ranks.top, strict=True)}
        return [_write_json(out / f"submission_{split.split}.json", sub)]
    if split.benchmark == "cirr":
        head = {"version": CIRR_VERSION}
        recall = {**head, "metric": "recall",
                  **{qid: r[:TOP] for qid, r in zip(ids, ranks.top, strict=True)}}
        subset = {**head, "metric": "recall_subset",
                  **{qid: r[:SUBSET_TOP] for qid, r in zip(ids, ranks.subset, strict=True)}}
        return [_write_json(out / f"{split.split}_pred_ranks_recall.json", recall),
                _write_json(out / f"{split.split}_pred_ranks_recall_subset.json", subset)]
    return []


def write_rankings(split: Split, ranks: Rankings, out: Path) -> Path:
    """FashionIQ has no server: its top 50 per query (keyed by the caption entry's index),
    to look at what the model retrieved and to recheck the metrics."""
    return _write_json(out / f"{split.category}_{split.split}_top{TOP}.json",
                       {q.qid: r[:TOP] for q, r in zip(split.queries, ranks.top, strict=True)})


def _table(cols: Sequence[str], rows: Sequence[tuple[str, dict[str, float]]]) -> str:
    lines = ["| | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {name} | " + " | ".join(f"{m[c]:.2f}" for c in cols) + " |"
              for name, m in rows]
    return "\n".join(lines)


def run_benchmark(benchmark: str, data: str | Path, model: MagicLens, params: Any,
                  preprocessor: Any, out: str | Path, split: str = "val",
                  categories: Sequence[str] = FIQ_CATEGORIES, batch: int = 64,
                  progress: bool = True, label: str = "", cache_dir: str | Path | None = None,
                  log: Callable[[str], None] | None = None) -> tuple[dict[str, Any], str]:
    """Run one benchmark end to end: (metrics JSON, the printed report). Writes the
    submission files and metrics.json under `out`; `cache_dir` keeps gallery embeddings."""
    splits = load_splits(benchmark, data, split, categories)  # validate before any model work
    embedder = Embedder(model, params, preprocessor, batch=batch, progress=progress)
    cache = GalleryCache(cache_dir, model, params, preprocessor) if cache_dir else None
    out = Path(out)
    result: dict[str, Any] = {"benchmark": benchmark, "split": splits[0].split, "model": label,
                              "metrics": {}, "counts": {}, "files": []}
    rows: list[tuple[str, dict[str, float]]] = []
    for sp in splits:
        if log:
            log(f"{sp.name} {sp.split}: {len(sp.queries)} queries, gallery {len(sp.gallery)}")
        ranks = rank_split(sp, embedder, cache, log)
        m = split_metrics(sp, ranks)
        key = sp.category or benchmark
        result["counts"][key] = {"queries": len(sp.queries), "gallery": len(sp.gallery)}
        if m:
            result["metrics"][key] = m
            rows.append((sp.category or sp.split, m))
        result["files"] += [str(p) for p in write_submissions(sp, ranks, out)]
        if sp.benchmark == "fashioniq":
            result["files"].append(str(write_rankings(sp, ranks, out)))
    if benchmark == "fashioniq" and rows:
        avg = {f"R@{k}": float(np.mean([m[f"R@{k}"] for _, m in rows])) for k in FIQ_KS}
        avg["Avg"] = float(np.mean(list(avg.values())))
        for _, m in rows:
            m["Avg"] = float(np.mean([m[f"R@{k}"] for k in FIQ_KS]))
        result["metrics"]["average"] = avg
        rows.append(("average", avg))
    result["files"].append(str(_write_json(out / "metrics.json", result)))
    return result, report_text(result, rows)


def report_text(result: dict[str, Any], rows: Sequence[tuple[str, dict[str, float]]]) -> str:
    """The human report: counts, the metrics table (val) and where the submission files are."""
    bench, split = result["benchmark"], result["split"]
    title = {"circo": "CIRCO", "cirr": "CIRR", "fashioniq": "FashionIQ"}[bench]
    counts = "; ".join(f"{k}: {c['queries']} queries, gallery {c['gallery']} images"
                       for k, c in result["counts"].items())
    lines = [f"{title} {split} — {counts}" + (f" — {result['model']}" if result["model"]
                                              else "")]
    if rows:
        cols = {"circo": [f"mAP@{k}" for k in CIRCO_KS],
                "cirr": [f"R@{k}" for k in CIRR_KS] + [f"R_subset@{k}" for k in CIRR_SUBSET_KS]
                + ["Avg"],
                "fashioniq": [f"R@{k}" for k in FIQ_KS] + ["Avg"]}[bench]
        lines += ["", _table(cols, rows)]
    else:
        lines += ["", f"{split} has no public ground truth: no metrics here; submit the "
                      "files below to the evaluation server."]
    files = [f for f in result["files"] if not f.endswith("metrics.json")]
    if bench == "fashioniq":
        lines += ["", "top 50 per query:", *[f"  {f}" for f in files]]
    else:
        server = CIRCO_SERVER if bench == "circo" else CIRR_SERVER
        lines += ["", f"test-server submission files ({server}):", *[f"  {f}" for f in files]]
    lines += [f"metrics: {f}" for f in result["files"] if f.endswith("metrics.json")]
    return "\n".join(lines) + "\n"
