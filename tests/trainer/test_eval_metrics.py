"""Metrics against hand-worked examples; annotation loaders on files in the real formats."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trainer.eval.corpus import mean_pairwise_cosine
from trainer.eval.datasets import (
    circo_image_file,
    load_circo,
    load_cirr,
    load_cirr_split,
    load_fashioniq,
    load_fashioniq_split,
)
from trainer.eval.metrics import (
    average_precision_at_k,
    map_at_k,
    rank_gallery,
    recall_at_k,
    recall_subset_at_k,
)
from trainer.eval.report import write_report


def test_circo_ap_hand_worked():
    # G = {a, b, c}; ranking hits at ranks 1, 3 and 6.
    ranking = ["a", "x", "b", "y", "z", "c", "w"]
    gt = {"a", "b", "c"}
    # K=5: (1/min(5,3)) * (1/1 + 2/3) = 0.5555...
    assert average_precision_at_k(ranking, gt, 5) == pytest.approx((1 + 2 / 3) / 3)
    # K=10: (1/3) * (1 + 2/3 + 3/6) = 0.7222...
    assert average_precision_at_k(ranking, gt, 10) == pytest.approx((1 + 2 / 3 + 0.5) / 3)
    # K=2 with |G|=3: normalised by min(2,3)=2 -> (1/2) * 1 = 0.5
    assert average_precision_at_k(ranking, gt, 2) == pytest.approx(0.5)
    # A single ground truth at rank 4: AP@5 = 1/4, AP@3 = 0.
    assert average_precision_at_k(["p", "q", "r", "g"], ["g"], 5) == pytest.approx(0.25)
    assert average_precision_at_k(["p", "q", "r", "g"], ["g"], 3) == 0.0


def test_map_is_mean_over_queries_in_percent():
    r = [["a", "b"], ["c", "d"]]
    g = [["a"], ["d"]]
    assert map_at_k(r, g, [1, 2]) == {1: pytest.approx(50.0), 2: pytest.approx(75.0)}


def test_reference_excluded_and_recall():
    scores = np.array([[0.9, 0.8, 0.1], [0.2, 0.3, 0.95]])
    ids = ["ref0", "t0", "t1"]
    ranks = rank_gallery(scores, ids, exclude=["ref0", "t1"])
    assert ranks == [["t0", "t1"], ["t0", "ref0"]]
    assert recall_at_k(ranks, ["t0", "ref0"], [1, 2]) == {1: 50.0, 2: 100.0}


def test_cirr_recall_subset():
    ranking = [["g1", "s3", "s2", "s1"]]  # s-members form the subset, g1 is outside it
    subset = [["ref", "s1", "s2", "s3"]]
    assert recall_subset_at_k(ranking, ["s2"], subset, ["ref"], ks=(1, 2)) == {1: 0.0, 2: 100.0}


def test_loaders_real_formats(tmp_path):
    circo = [{"reference_img_id": 85932, "target_img_id": 9761,
              "relative_caption": "is held by a little girl on a chair",
              "shared_concept": "a teddy bear", "gt_img_ids": [9761, 489535], "id": 0},
             {"reference_img_id": 1, "relative_caption": "is blue", "shared_concept": "a car",
              "id": 1}]
    (tmp_path / "circo.json").write_text(json.dumps(circo))
    q = load_circo(tmp_path / "circo.json")
    assert q[0].instruction == "find a teddy bear but is held by a little girl on a chair"
    assert q[0].targets == ("9761", "489535") and q[1].targets == ()
    assert circo_image_file("85932") == "000000085932.jpg"

    cirr = [{"pairid": 12063, "reference": "test1-147-1-img1", "target_hard": "test1-83-0-img1",
             "target_soft": {"test1-83-0-img1": 1.0}, "caption": "remove all but one dog",
             "img_set": {"id": 1, "members": ["test1-147-1-img1", "test1-83-0-img1"],
                         "reference_rank": 3, "target_rank": 4}}]
    (tmp_path / "cap.rc2.val.json").write_text(json.dumps(cirr))
    (tmp_path / "split.rc2.val.json").write_text(
        json.dumps({"test1-147-1-img1": "./test1/test1-147-1-img1.png"}))
    c = load_cirr(tmp_path / "cap.rc2.val.json")[0]
    assert (c.qid, c.reference, c.targets) == ("12063", "test1-147-1-img1", ("test1-83-0-img1",))
    assert len(c.subset) == 2
    assert load_cirr_split(tmp_path / "split.rc2.val.json")["test1-147-1-img1"].endswith(".png")

    fiq = [{"target": "B008BHCT58", "candidate": "B003FGW7MK",
            "captions": ["is solid black with no sleeves", "is black and more elegant"]}]
    (tmp_path / "cap.dress.val.json").write_text(json.dumps(fiq))
    (tmp_path / "split.dress.val.json").write_text(json.dumps(["B008BHCT58", "B003FGW7MK"]))
    f = load_fashioniq(tmp_path / "cap.dress.val.json")[0]
    assert f.instruction == "is solid black with no sleeves and is black and more elegant"
    assert f.reference == "B003FGW7MK" and f.targets == ("B008BHCT58",)
    assert load_fashioniq_split(tmp_path / "split.dress.val.json") == ["B008BHCT58", "B003FGW7MK"]


def test_loader_rejects_malformed(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps([{"captions": "not a list", "candidate": "x"}]))
    with pytest.raises(ValueError):
        load_fashioniq(tmp_path / "bad.json")


def test_report_files(tmp_path):
    paths = write_report({"magiclens/R@1": 50.0, "image_text_sum/R@1": 20.0}, tmp_path, "toy")
    md = paths["markdown"].read_text()
    assert "| magiclens | 50.00 |" in md
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mean_pairwise_cosine_flags_a_collapsed_space():
    eye = np.eye(4, dtype=np.float32)
    assert abs(mean_pairwise_cosine(eye)) < 1e-6
    same = np.tile(np.array([[0.6, 0.8]], np.float32), (5, 1))
    assert abs(mean_pairwise_cosine(same) - 1.0) < 1e-6
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c = x @ x.T
    assert abs(mean_pairwise_cosine(x) - c[~np.eye(50, dtype=bool)].mean()) < 1e-5
