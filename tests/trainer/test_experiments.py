"""The experiment loop (`python -m trainer.experiments`) end to end on the real `small` corpus
with the real compact towers: two seeds, both wordings, the report and the bar.

The snapshot is made from the corpus's training pages (its example queries, generated from
ground truth on pages that are never held out), so the test needs no pipeline run; the demo
runs the same command on the snapshot the training service froze.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools.corpus.build import build

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("CORPUS_CACHE", REPO / "data" / "cache"))


@pytest.fixture(scope="module")
def corpus_and_snapshot(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("experiments")
    corpus = root / "corpus"
    build(corpus, size="small", cache=CACHE, quiet=True)
    manifest = json.loads((corpus / "manifest.json").read_text())
    images = {im["id"]: im for im in manifest["images"] if im["split"] == "train"}
    snap = root / "snapshot"
    snap.mkdir()
    with (snap / "train.jsonl").open("w") as f:
        for line in (corpus / "example_queries.jsonl").read_text().splitlines():
            q = json.loads(line)
            if q["query_image"] not in images:
                continue
            page = images[q["query_image"]]["pages"][0]
            for t in q["targets"]:
                if t in images:
                    f.write(json.dumps({
                        "query_image": str(corpus / images[q["query_image"]]["file"]),
                        "instruction": q["instruction"],
                        "target_image": str(corpus / images[t]["file"]),
                        "page": page, "specificity": 10.0}) + "\n")
    with (snap / "captions.jsonl").open("w") as f:
        for im in images.values():
            f.write(json.dumps({"image": str(corpus / im["file"]), "text": im["alt"]}) + "\n")
    return corpus, snap


def test_experiment_command_trains_seeds_and_reports_both_wordings(corpus_and_snapshot,
                                                                  tmp_path):
    corpus, snap = corpus_and_snapshot
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.experiments", "--snapshot", str(snap), "--corpus",
         str(corpus), "--seeds", "2", "--steps", "60", "--out", str(out),
         "--markdown", str(tmp_path / "quality.md"), "--text-queries"],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [r["seed"] for r in results] == [0, 1]
    for r in results:
        assert set(r["metrics"]) == {"writer", "unseen"}
        assert r["config"]["steps"] == 60
        for wording in r["metrics"].values():
            assert wording["queries"] >= 20
    # Seeds differ (the head's initialisation and batch order), and are reported as a spread.
    assert results[0]["metrics"]["writer"]["magiclens/R@10"] != results[1]["metrics"][
        "writer"]["magiclens/R@10"] or results[0]["metrics"]["writer"]["magiclens/mAP@5"] != \
        results[1]["metrics"]["writer"]["magiclens/mAP@5"]
    report = (tmp_path / "quality.md").read_text()
    assert " ± " in report and "| image_only | unseen |" in report and "The bar" in report
    # Identity (issue 19): how close each query stays to its own image, by relation.
    writer = results[0]["metrics"]["writer"]
    assert writer["image_only/identity_cos"] == pytest.approx(1.0, abs=1e-4)
    assert 0.0 < writer["magiclens/identity_cos"] < 0.9999
    assert "identity cos |" in report
    # --text-queries: text-to-image search by the held-out images' alt texts and captions,
    # with the text-query head every compact export now has
    for r in results:
        assert set(r["text_queries"]) == {"alt", "caption"}
        assert r["text_queries"]["alt"]["queries"] >= 10  # the small corpus: 19
        assert {"text_head/R@1", "blank_image/R@1", "text_only/R@1"} <= set(
            r["text_queries"]["alt"])
    assert "Text-to-image search" in report and "| text_head | alt |" in report
    # Trained on the same relations, the model must beat search-by-image on held-out pages.
    mean = lambda k: sum(r["metrics"]["writer"][k] for r in results) / 2  # noqa: E731
    assert mean("magiclens/mAP@5") > mean("image_only/mAP@5"), report


def test_experiment_command_refuses_a_folder_without_triples(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "trainer.experiments", "--snapshot",
                           str(tmp_path), "--corpus", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "train.jsonl not found" in proc.stderr


def test_experiment_command_refuses_a_bad_corpus_and_a_bad_grid(corpus_and_snapshot, tmp_path):
    corpus, snap = corpus_and_snapshot
    bad_grid = tmp_path / "grid.json"
    bad_grid.write_text('{"not": "a list"}')
    for args, says in (([str(tmp_path)], "not a built corpus"),
                       ([str(corpus), "--grid", str(bad_grid)], "non-empty JSON list")):
        proc = subprocess.run([sys.executable, "-m", "trainer.experiments", "--snapshot",
                               str(snap), "--corpus", *args],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and says in proc.stderr, proc.stderr[-500:]


@pytest.mark.parametrize("tuning", [
    {"tower_tune": "lora", "tower_rank": 4, "tower_learning_rate": 2e-3},
    {"tower_lit": "lora", "tower_rank": 4, "tower_lit_steps": 20,
     "tower_lit_learning_rate": 1e-2},
], ids=["with-fusion", "lit-stage"])
def test_tower_tuning_trains_the_last_layer_and_serving_embeds_what_was_evaluated(
        corpus_and_snapshot, tmp_path, tuning):
    """issues 13 and 19: with `tower_tune` (during fusion) or `tower_lit` (a LiT stage on the
    captions before it) the image tower's last layer learns; the export holds it as ordinary
    weights, so the serving path (load_checkpoint, embeddings from image bytes) gives the
    gallery embeddings the experiment scored."""
    import numpy as np

    from services.embedding.model import load_checkpoint
    from trainer.checkpoints import load_params
    from trainer.configs import get_config
    from trainer.experiments import eval_sets, tuned_gallery
    from trainer.models.magiclens import abstract_params, build_model, config_for_checkpoint

    corpus, snap = corpus_and_snapshot
    out = tmp_path / "out"
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps([{"name": "tower", "overrides": tuning}]))
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.experiments", "--snapshot", str(snap), "--corpus",
         str(corpus), "--seeds", "1", "--steps", "30", "--grid", str(grid), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [result] = json.loads((out / "results.json").read_text())
    assert all(result["config"][k] == v for k, v in tuning.items())
    export = out / "runs" / "tower-s0" / "export"
    meta = json.loads((export / "magiclens_meta.json").read_text())
    model, pre = build_model("compact", config=config_for_checkpoint(meta))  # + text head
    params, _ = load_params(export, abstract_params(model, pre.image_size))
    before = np.load(out / "cache" / "eval-compact-colour8-v1.npz")
    # The tower moved: the trained last layer gives other pooled features than the
    # pretrained one the baselines use.
    sets = eval_sets(corpus, {}, out / "cache")
    tuned = tuned_gallery(get_config("compact", **tuning), model, params, sets[0])
    assert tuned.shape == before["image"].shape
    assert not np.allclose(tuned[:, :1280], before["image"][:, :1280], atol=1e-4)
    np.testing.assert_allclose(tuned[:, 1280:], before["image"][:, 1280:])
    # What the experiment scored for these gallery images == what serving indexes.
    evaluated = np.asarray(model.apply({"params": params}, tuned[:6], np.zeros((6, 384)),
                                       method=type(model).encode_target_features))
    served = load_checkpoint(export).encode_target(
        [Path(p).read_bytes() for p in sets[0].gallery_paths[:6]])
    np.testing.assert_allclose(served, evaluated, atol=2e-4)
