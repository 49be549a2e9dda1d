"""Benchmark runs (`magiclens eval --benchmark`): layouts, rankings, metrics, submission files.

Fast tests use the stand-in backbone and compare the harness with the model's own raw-pixel
path; the end-to-end tests run the real `magiclens` command with an untrained compact
checkpoint on fixtures laid out as the official releases (tests/trainer/benchmark_fixtures.py)
and check every number against the official evaluation rules recomputed here from the files
the command wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from tests.trainer.benchmark_fixtures import (
    CIRCO_COPY,
    CIRCO_IDS,
    FIQ,
    make_circo,
    make_cirr,
    make_fashioniq,
)
from trainer.eval import benchmarks
from trainer.eval.__main__ import main as eval_main
from trainer.eval.benchmarks import (
    Embedder,
    GalleryCache,
    Rankings,
    Split,
    load_splits,
    rank_split,
    run_benchmark,
    split_metrics,
    write_submissions,
)
from trainer.eval.datasets import EvalQuery
from trainer.eval.metrics import rank_gallery, rank_within, top_k_ranking
from trainer.models.magiclens import MagicLens, MagicLensConfig, build_model, init_params

ROOT = Path(__file__).resolve().parents[2]


# --- ranking helpers ---------------------------------------------------------------------
def test_top_k_ranking_equals_the_full_stable_sort():
    """Chunked top-k with exclusion and ties == rank_gallery's full stable sort, cut at k."""
    rng = np.random.default_rng(0)
    # small integers: dot products are exact in float32, so ties are real ties
    q = rng.integers(-3, 4, (37, 6)).astype(np.float32)
    g = rng.integers(-3, 4, (90, 6)).astype(np.float32)
    g[10] = g[3]  # exact ties
    g[50] = g[3]
    ids = [f"i{j}" for j in range(90)]
    exclude = [ids[j % 90] if j % 3 else None for j in range(37)]
    exclude[5] = "not-in-gallery"
    full = rank_gallery(q.astype(np.float64) @ g.T.astype(np.float64), ids, exclude=exclude)
    for k in (1, 7, 50, 89, 200):
        got = top_k_ranking(q, g, ids, k, exclude=exclude, chunk=8)
        assert got == [r[:k] for r in full], k
    assert top_k_ranking(q[:2], g[:0], [], 5) == [[], []]


def test_rank_within_ranks_members_without_the_reference():
    members = ["ref", "a", "b", "c"]
    assert rank_within(np.array([9.0, 0.1, 0.7, 0.7]), members, "ref") == ["b", "c", "a"]
    assert rank_within(np.array([0.5, 0.2]), ["x", "y"]) == ["x", "y"]


def _split(bench: str, queries: list[EvalQuery], gallery: list[str], **kw) -> Split:
    return Split(bench, "val", queries, gallery, {}, exclude_reference=bench == "cirr", **kw)


def test_metrics_on_hand_made_rankings():
    """CIRR R@K / R_subset@K / Avg, CIRCO mAP@K and FashionIQ R@K on rankings with known
    answers (hand-computed)."""
    qs = [EvalQuery("1", "r1", "x", ("t1",), ("r1", "t1", "m1")),
          EvalQuery("2", "r2", "x", ("t2",), ("r2", "m2", "t2", "m3"))]
    top = [["t1"] + [f"o{i}" for i in range(60)],            # rank 1
           [f"o{i}" for i in range(7)] + ["t2"]]             # rank 8
    m = split_metrics(_split("cirr", qs, []), Rankings(top, [["t1", "m1"], ["m2", "m3", "t2"]]))
    assert m == {"R@1": 50.0, "R@5": 50.0, "R@10": 100.0, "R@50": 100.0, "R_subset@1": 50.0,
                 "R_subset@2": 50.0, "R_subset@3": 100.0, "Avg": 50.0}
    # CIRCO: q1 G={a,b}, hits at 1 and 3: AP@5 = (1 + 2/3)/2; q2 G={c}, hit at 30: AP@25 = 0,
    # AP@50 = 1/30.
    circo = [EvalQuery("0", "r", "x", ("a", "b")), EvalQuery("1", "r", "x", ("c",))]
    ranks = Rankings([["a", "z", "b"] + [f"y{i}" for i in range(47)],
                      [f"y{i}" for i in range(29)] + ["c"]], [])
    m = split_metrics(_split("circo", circo, []), ranks)
    assert m["mAP@5"] == pytest.approx(100 * (1 + 2 / 3) / 2 / 2)
    assert m["mAP@25"] == pytest.approx(100 * (1 + 2 / 3) / 2 / 2)
    assert m["mAP@50"] == pytest.approx(100 * ((1 + 2 / 3) / 2 + 1 / 30) / 2)
    fiq = [EvalQuery("0", "r", "x", ("t",)), EvalQuery("1", "r", "x", ("u",))]
    m = split_metrics(_split("fashioniq", fiq, [], category="dress"),
                      Rankings([[f"y{i}" for i in range(10)] + ["t"], ["u"]], []))
    assert m == {"R@10": 50.0, "R@50": 100.0}
    # a test split (no targets) has no metrics
    assert split_metrics(_split("circo", [EvalQuery("0", "r", "x")], []), ranks) == {}


def test_submission_files_match_the_servers_formats(tmp_path):
    """CIRCO: {query id: [top-50 int ids]}; CIRR: version/metric entries, top 50 / top 3."""
    circo = _split("circo", [EvalQuery("0", "5", "x"), EvalQuery("1", "6", "x")],
                   [str(i) for i in range(80)])
    top = [[str(i) for i in range(80)], [str(79 - i) for i in range(80)]]
    (path,) = write_submissions(circo, Rankings(top, []), tmp_path)
    assert path.name == "submission_val.json"
    sub = json.loads(path.read_text())
    assert list(sub) == ["0", "1"] and sub["0"] == list(range(50))
    assert sub["1"][:2] == [79, 78] and all(isinstance(i, int) for i in sub["1"])
    cirr = Split("cirr", "test1", [EvalQuery("12063", "a", "x", (), ("a", "b", "c", "d"))],
                 [], {}, exclude_reference=True)
    recall, subset = write_submissions(cirr, Rankings([[f"n{i}" for i in range(70)]],
                                                      [["c", "b", "d", "e"]]), tmp_path)
    assert (recall.name, subset.name) == ("test1_pred_ranks_recall.json",
                                          "test1_pred_ranks_recall_subset.json")
    r = json.loads(recall.read_text())
    assert list(r)[:2] == ["version", "metric"]
    assert r["version"] == "rc2" and r["metric"] == "recall" and len(r["12063"]) == 50
    assert json.loads(subset.read_text()) == {"version": "rc2", "metric": "recall_subset",
                                              "12063": ["c", "b", "d"]}


# --- layout validation: one line naming the missing path --------------------------------
def _one_line_error(capsys, argv: list[str]) -> str:
    assert eval_main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("magiclens eval: "), err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.mark.parametrize(("bench", "make", "remove"), [
    ("circo", make_circo, "annotations/val.json"),
    ("circo", make_circo, "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json"),
    ("circo", make_circo, "COCO2017_unlabeled/unlabeled2017/000000000632.jpg"),
    ("cirr", make_cirr, "captions/cap.rc2.val.json"),
    ("cirr", make_cirr, "image_splits/split.rc2.val.json"),
    ("cirr", make_cirr, "img_raw/dev/dev-1-2-img0.png"),
    ("fashioniq", make_fashioniq, "image_splits/split.shirt.val.json"),
    ("fashioniq", make_fashioniq, "images/B00TO00003.png"),
])
def test_missing_file_is_one_line_naming_it_and_the_layout(tmp_path, capsys, bench, make,
                                                           remove):
    data = make(tmp_path / bench)
    (data / remove).unlink()
    line = _one_line_error(capsys, ["--config", "compact", "--benchmark", bench,
                                    "--data", str(data)])
    assert f"missing {data / remove}" in line
    assert f"(expected {benchmarks.LAYOUTS[bench]})" in line


def test_bad_inputs_are_one_line(tmp_path, capsys):
    data = make_cirr(tmp_path / "cirr")
    split = data / "image_splits" / "split.rc2.val.json"
    m = json.loads(split.read_text())
    m["dev-0-0-img0"] = "../../etc/passwd"
    split.write_text(json.dumps(m))
    assert "not a relative path" in _one_line_error(
        capsys, ["--config", "compact", "--benchmark", "cirr", "--data", str(data)])
    assert "missing" in _one_line_error(
        capsys, ["--config", "compact", "--benchmark", "circo", "--data", str(tmp_path / "no")])
    assert "splits are val and test" in _one_line_error(
        capsys, ["--config", "compact", "--benchmark", "circo", "--data",
                 str(make_circo(tmp_path / "c")), "--split", "train"])
    assert "magiclens_meta.json is missing" in _one_line_error(
        capsys, ["--checkpoint", str(tmp_path), "--benchmark", "circo", "--data",
                 str(tmp_path / "c")])


# --- the harness against the model's own raw-pixel path (stand-in backbone) -------------
@pytest.fixture(scope="module")
def standin_model():
    from tests.support.standin import StandInBackbone, StandInPreprocessor

    model, pre = build_model("compact", backbone=(StandInBackbone(32), StandInPreprocessor()),
                             config=MagicLensConfig("compact", 32, 4))  # transformer head
    params = init_params(model, jax.random.PRNGKey(1), pre.image_size)
    return model, params, pre


def _raw_pixel_embeddings(model, params, pre, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """(queries, gallery) through MagicLens.encode_query / encode_target on whole images,
    not the harness's cached-features path."""
    p = {"params": params}
    pix = {i: pre.images([Image.open(f)])[0] for i, f in split.files.items()}
    target = jax.jit(lambda x: model.apply(p, x, method=MagicLens.encode_target))
    query = jax.jit(lambda x, t: model.apply(p, x, t, method=MagicLens.encode_query))
    g = np.asarray(target(jnp.asarray(np.stack([pix[i] for i in split.gallery]))))
    q = np.asarray(query(jnp.asarray(np.stack([pix[x.reference] for x in split.queries])),
                         jnp.asarray(pre.texts([x.instruction for x in split.queries]))))
    return q, g


def test_rankings_equal_the_models_raw_pixel_path(tmp_path, standin_model):
    """Batched features -> embeddings -> top-k (reference excluded) and image-set ranking ==
    MagicLens.encode_query / encode_target on the pixels, full-sorted; batches of 3 pad."""
    model, params, pre = standin_model
    split = load_splits("cirr", make_cirr(tmp_path / "cirr"))[0]
    ranks = rank_split(split, Embedder(model, params, pre, batch=3, progress=False))
    q, g = _raw_pixel_embeddings(model, params, pre, split)
    # the instruction matters with this head, so this is not image-only retrieval
    assert not np.allclose(q[0], g[split.gallery.index(split.queries[0].reference)], atol=1e-3)
    want = rank_gallery(q @ g.T, split.gallery, exclude=[x.reference for x in split.queries])
    assert ranks.top == want
    for qi, x in enumerate(split.queries):
        members = list(x.subset)
        ids = [split.gallery.index(m) for m in members]
        assert ranks.subset[qi] == rank_within(g[ids] @ q[qi], members, x.reference)[:3]
        assert x.reference not in ranks.top[qi] and x.reference not in ranks.subset[qi]


def test_kept_features_follow_the_callers_order_and_outside_references(tmp_path,
                                                                       standin_model):
    """`keep` rows come back in the order asked (not sorted); a FashionIQ candidate missing
    from its category's gallery is embedded on its own and still queries, unranked."""
    model, params, pre = standin_model
    data = make_fashioniq(tmp_path / "fiq")
    emb = Embedder(model, params, pre, batch=4, progress=False)
    split = load_splits("fashioniq", data, categories=["dress"])[0]
    paths = [split.files[i] for i in split.gallery]
    all_emb, all_feat = emb.images(paths, "all")
    some_emb, some_feat = emb.images(paths, "some", keep=[9, 2, 5])
    np.testing.assert_allclose(some_emb, all_emb, atol=1e-6)
    np.testing.assert_allclose(some_feat, all_feat[[9, 2, 5]], atol=1e-6)

    gallery_file = data / "image_splits" / "split.dress.val.json"
    ids = json.loads(gallery_file.read_text())
    gallery_file.write_text(json.dumps(ids[2:]))  # drop query 0's and query 1's candidates
    split = load_splits("fashioniq", data, categories=["dress"])[0]
    ranks = rank_split(split, emb)
    q, g = _raw_pixel_embeddings(model, params, pre, split)
    assert ranks.top == rank_gallery(q @ g.T, split.gallery)
    assert ids[0] not in ranks.top[0] and len(ranks.top[0]) == len(ids) - 2


def test_gallery_cache_is_reused_only_for_the_same_model_and_files(tmp_path, standin_model):
    """Second run: same rankings from the .npz (no pickle); the file is really read (a
    doctored copy under the same key changes the ranking); other params or a touched image
    get a new key."""
    model, params, pre = standin_model
    split = load_splits("cirr", make_cirr(tmp_path / "cirr"))[0]
    emb = Embedder(model, params, pre, batch=4, progress=False)
    cache = GalleryCache(tmp_path / "cache", model, params, pre)
    paths = [split.files[g] for g in split.gallery]
    first = rank_split(split, emb, cache)
    (saved,) = (tmp_path / "cache").glob("gallery-*.npz")
    with np.load(saved, allow_pickle=False) as z:
        assert z["embeddings"].shape == (8, 32) and str(z["key"]) == cache.key(paths)
        doctored = {"key": z["key"], "embeddings": np.asarray(z["embeddings"])}
    assert rank_split(split, emb, cache) == first
    doctored["embeddings"][:] = 0  # every score 0: ties, so gallery order minus reference
    with saved.open("wb") as f:
        np.savez(f, **doctored)
    assert first.top != [[g for g in split.gallery if g != q.reference]
                         for q in split.queries]
    assert rank_split(split, emb, cache).top == [[g for g in split.gallery if g != q.reference]
                                                 for q in split.queries]
    other = GalleryCache(tmp_path / "cache", model,
                         jax.tree_util.tree_map(lambda a: a * 1.01, params), pre)
    assert other.key(paths) != cache.key(paths)
    os.utime(paths[0], ns=(1, 1))
    assert cache.key(paths) != str(doctored["key"])
    assert rank_split(split, emb, cache) == first  # the touched file: embedded afresh
    saved.write_bytes(b"not an npz")
    assert cache.load(str(doctored["key"]), 8) is None


def test_cirr_test1_writes_both_files_and_no_metrics(tmp_path, standin_model):
    """test1 has no targets: submission files for every pair, no metrics, one report."""
    model, params, pre = standin_model
    data = make_cirr(tmp_path / "cirr", split="test1")
    result, text = run_benchmark("cirr", data, model, params, pre, tmp_path / "out",
                                 split="test", batch=4, progress=False)
    assert result["split"] == "test1" and result["metrics"] == {}
    assert "no public ground truth" in text and "test1_pred_ranks_recall.json" in text
    recall = json.loads((tmp_path / "out" / "test1_pred_ranks_recall.json").read_text())
    subset = json.loads((tmp_path / "out" / "test1_pred_ranks_recall_subset.json").read_text())
    caps = json.loads((data / "captions" / "cap.rc2.test1.json").read_text())
    assert set(recall) == {"version", "metric"} | {str(c["pairid"]) for c in caps}
    for c in caps:
        pid, ref = str(c["pairid"]), c["reference"]
        assert len(recall[pid]) == 7 and ref not in recall[pid]  # 8 images minus reference
        assert len(subset[pid]) == 3 and ref not in subset[pid]
        assert set(subset[pid]) <= set(c["img_set"]["members"])


# --- end to end: the real command, an untrained compact checkpoint ----------------------
@pytest.fixture(scope="session")
def compact_checkpoint() -> Path:
    """Pretrained towers + the untrained edit head (query == its image's embedding), cached
    under data/cache keyed by the compact architecture."""
    import hashlib

    from services.embedding.model import create_initial_checkpoint
    from trainer.models.magiclens import CONFIGS, arch_meta

    arch = arch_meta(CONFIGS["compact"])["arch"]
    key = hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:12]
    d = ROOT / "data" / "cache" / "benchmark-test" / f"compact-{key}"
    meta = d / "magiclens_meta.json"
    if not (meta.exists() and json.loads(meta.read_text()).get("arch") == arch):
        create_initial_checkpoint(d, "benchmark-test", seed=0)
    return d


def _magiclens_eval(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("magiclens")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "tools.cli.main"]
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'gen'}",
               JAX_COMPILATION_CACHE_DIR=str(jax.config.jax_compilation_cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
    proc = subprocess.run([*cmd, "eval", *args, "--batch-size", "16"], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def circo_official_map(predictions: dict[str, list[int]], annotations: list[dict],
                       k: int) -> float:
    """miccunifi/CIRCO src/evaluation.py compute_metrics, mAP part, re-typed."""
    aps = []
    for qid, pred in predictions.items():
        gt = next(a for a in annotations if a["id"] == int(qid))["gt_img_ids"]
        assert len(set(pred)) == len(pred)
        labels = np.isin(np.array(pred, dtype=int), gt)
        precisions = np.cumsum(labels, axis=0) * labels / np.arange(1, labels.shape[0] + 1)
        aps.append(float(np.sum(precisions[:k]) / min(len(gt), k)))
    return 100 * float(np.mean(aps))


def test_circo_val_and_test_end_to_end(tmp_path, compact_checkpoint):
    data = make_circo(tmp_path / "CIRCO")
    cache = ["--cache", str(tmp_path / "cache")]  # val and test share CIRCO's gallery
    proc = _magiclens_eval(["--checkpoint", str(compact_checkpoint), "--benchmark", "circo",
                            "--data", str(data), *cache], tmp_path)
    assert "circo val gallery" in proc.stderr  # the progress bar
    out = tmp_path / "eval-circo-val"
    sub = json.loads((out / "submission_val.json").read_text())
    ann = json.loads((data / "annotations" / "val.json").read_text())
    assert list(sub) == ["0", "1", "2"]
    for pred in sub.values():  # reference kept: the whole 10-image gallery, no repeats
        assert sorted(pred) == sorted(CIRCO_IDS) and all(isinstance(i, int) for i in pred)
    assert set(sub["0"][:2]) == set(CIRCO_COPY)  # the byte copy ties with the reference
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]["circo"]
    for k in (5, 10, 25, 50):
        assert metrics[f"mAP@{k}"] == pytest.approx(circo_official_map(sub, ann, k))
    row = next(ln for ln in proc.stdout.splitlines() if ln.startswith("| val |"))
    assert row == "| val | " + " | ".join(f"{metrics[f'mAP@{k}']:.2f}"
                                          for k in (5, 10, 25, 50)) + " |"
    assert "mAP@5 | mAP@10 | mAP@25 | mAP@50" in proc.stdout
    assert metrics["mAP@50"] >= 100 * 0.5 / 3  # query 0 alone: its copy in the top 2

    proc = _magiclens_eval(["--checkpoint", str(compact_checkpoint), "--benchmark", "circo",
                            "--data", str(data), "--split", "test", "--out", "sub", *cache],
                           tmp_path)
    assert "gallery embeddings from" in proc.stderr and "circo test gallery" not in proc.stderr
    sub = json.loads((tmp_path / "sub" / "submission_test.json").read_text())
    assert list(sub) == ["0", "1", "2"] and all(sorted(v) == sorted(CIRCO_IDS)
                                                for v in sub.values())
    assert set(sub["0"][:2]) == set(CIRCO_COPY)  # test query 0: reference 139 and its copy
    assert "no public ground truth" in proc.stdout and "submission_test.json" in proc.stdout


def test_cirr_val_end_to_end(tmp_path, compact_checkpoint):
    data = make_cirr(tmp_path / "cirr")
    proc = _magiclens_eval(["--checkpoint", str(compact_checkpoint), "--benchmark", "cirr",
                            "--data", str(data), "--json"], tmp_path)
    result = json.loads(proc.stdout)
    out = tmp_path / "eval-cirr-val"
    recall = json.loads((out / "val_pred_ranks_recall.json").read_text())
    subset = json.loads((out / "val_pred_ranks_recall_subset.json").read_text())
    caps = json.loads((data / "captions" / "cap.rc2.val.json").read_text())
    assert recall["metric"] == "recall" and subset["metric"] == "recall_subset"
    for c in caps:
        pid = str(c["pairid"])
        assert len(recall[pid]) == 7 and c["reference"] not in recall[pid]
        members = set(c["img_set"]["members"]) - {c["reference"]}
        assert len(subset[pid]) == 3 and set(subset[pid]) <= members
    # pair 0's target is a byte copy of its reference: first, in the gallery and its set
    assert recall["12063"][0] == caps[0]["target_hard"] == subset["12063"][0]
    want = {f"R@{k}": 100 * np.mean([c["target_hard"] in recall[str(c["pairid"])][:k]
                                     for c in caps]) for k in (1, 5, 10, 50)}
    want |= {f"R_subset@{k}": 100 * np.mean([c["target_hard"] in subset[str(c["pairid"])][:k]
                                            for c in caps]) for k in (1, 2, 3)}
    want["Avg"] = (want["R@5"] + want["R_subset@1"]) / 2
    assert result["metrics"]["cirr"] == pytest.approx(want)
    assert want["R@1"] >= 100 / 3 - 1e-9 and want["R@50"] == 100.0  # 7 candidates < 50


def test_fashioniq_end_to_end(tmp_path, compact_checkpoint):
    """Per category: the copy target and the self target are found, the out-of-gallery one
    never is: R@10 = R@50 = 66.67 exactly, and so is the average."""
    data = make_fashioniq(tmp_path / "fiq")
    proc = _magiclens_eval(["--checkpoint", str(compact_checkpoint), "--benchmark",
                            "fashioniq", "--data", str(data)], tmp_path)
    out = tmp_path / "eval-fashioniq-val"
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    for cat in FIQ:
        assert metrics[cat] == pytest.approx({"R@10": 200 / 3, "R@50": 200 / 3,
                                              "Avg": 200 / 3})
        top = json.loads((out / f"{cat}_val_top50.json").read_text())
        caps = json.loads((data / "captions" / f"cap.{cat}.val.json").read_text())
        assert top["2"][0] == caps[2]["candidate"]  # the reference itself stays, rank 1
        assert caps[0]["target"] in top["0"][:2]
        assert len(top["0"]) == 12  # the category's gallery, reference included
    assert metrics["average"] == pytest.approx({"R@10": 200 / 3, "R@50": 200 / 3,
                                                "Avg": 200 / 3})
    assert "| average | 66.67 | 66.67 | 66.67 |" in proc.stdout
    assert "| dress | 66.67 | 66.67 | 66.67 |" in proc.stdout
