"""Tiny CIRCO, CIRR and FashionIQ trees laid out exactly as the official releases (same
folders, file names and JSON keys; see trainer/eval/benchmarks.py for the sources), with a
handful of small real photos each.

Every tree holds a byte-identical copy of one reference image under another id and makes it
that query's target: with an untrained checkpoint (the edit head starts at the image
embedding, so a query embeds exactly as its reference image does) the copy must come first
(CIRR, reference excluded) or in the first two (CIRCO, FashionIQ, reference kept). That is
the ranking the tests know without trusting the code under test.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image, ImageOps

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field",
          "immunohistochemistry", "colorwheel", "logo", "coins", "horse", "clock", "brick",
          "moon")
SIDE = 40


def photo_bytes(i: int, fmt: str) -> bytes:
    """The i-th distinct small image: a photo, mirrored and/or cropped for i >= len(PHOTOS)."""
    a = getattr(skimage.data, PHOTOS[i % len(PHOTOS)])()
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    im = Image.fromarray(a[..., :3].astype(np.uint8))
    turn = i // len(PHOTOS)
    if turn % 2:
        im = ImageOps.mirror(im)
    if turn >= 2:
        w, h = im.size
        im = im.crop((w // 4, h // 4, w, h))
    buf = io.BytesIO()
    im.resize((SIDE, SIDE)).save(buf, fmt)
    return buf.getvalue()


def _write(path: Path, data: bytes | object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(json.dumps(data, indent=4))
    return path


# --- CIRCO -------------------------------------------------------------------------------
CIRCO_IDS = [139, 285, 632, 724, 776, 785, 802, 872, 885, 1000]
CIRCO_COPY = (139, 802)  # 802 is a byte copy of 139


def make_circo(root: Path) -> Path:
    """CIRCO/annotations/{val,test}.json + COCO2017_unlabeled/{annotations,unlabeled2017}."""
    coco = root / "COCO2017_unlabeled"
    images = []
    for n, cid in enumerate(CIRCO_IDS):
        name = f"{cid:012d}.jpg"
        src = CIRCO_IDS.index(CIRCO_COPY[0]) if cid == CIRCO_COPY[1] else n
        _write(coco / "unlabeled2017" / name, photo_bytes(src, "JPEG"))
        images.append({"license": 4, "file_name": name,
                       "coco_url": f"http://images.cocodataset.org/unlabeled2017/{name}",
                       "height": SIDE, "width": SIDE, "date_captured": "2013-11-14 16:28:13",
                       "id": cid})
    _write(coco / "annotations" / "image_info_unlabeled2017.json",
           {"info": {"description": "COCO 2017 Dataset", "year": 2017}, "licenses": [],
            "images": images, "categories": []})
    val = [
        {"reference_img_id": 139, "target_img_id": 802, "relative_caption": "is the same photo",
         "shared_concept": "a woman", "gt_img_ids": [802], "id": 0,
         "semantic_aspects": ["direct_addressing"]},
        {"reference_img_id": 285, "target_img_id": 632, "relative_caption": "is a cat",
         "shared_concept": "a cup", "gt_img_ids": [632, 724], "id": 1,
         "semantic_aspects": ["addition"]},
        {"reference_img_id": 776, "target_img_id": 1000, "relative_caption": "is smaller",
         "shared_concept": "an object", "gt_img_ids": [1000, 885, 872], "id": 2,
         "semantic_aspects": ["cardinality", "viewpoint"]},
    ]
    _write(root / "annotations" / "val.json", val)
    test = [{"reference_img_id": r, "relative_caption": c, "shared_concept": s, "id": i}
            for i, (r, c, s) in enumerate([(139, "is outdoors", "a person"),
                                           (885, "has two of them", "a coin"),
                                           (1000, "is at night", "a rocket")])]
    _write(root / "annotations" / "test.json", test)
    return root


# --- CIRR --------------------------------------------------------------------------------
def _cirr_names(split: str) -> list[str]:
    folder = "dev" if split == "val" else split
    return [f"{folder}-{n // 2}-{n % 3}-img{n % 2}" for n in range(8)]


def make_cirr(root: Path, split: str = "val") -> Path:
    """cirr/captions/cap.rc2.SPLIT.json, image_splits/split.rc2.SPLIT.json, img_raw/..."""
    names = _cirr_names(split)
    folder = names[0].split("-")[0]
    split_map = {}
    for n, name in enumerate(names):
        src = 0 if n == 7 else n  # names[7] is a copy of names[0]
        _write(root / "img_raw" / folder / f"{name}.png", photo_bytes(src, "PNG"))
        split_map[name] = f"./{folder}/{name}.png"
    _write(root / "image_splits" / f"split.rc2.{split}.json", split_map)
    ref, dup = names[0], names[7]
    entries = [
        (ref, dup, "is the very same picture", [ref, names[1], dup, names[2], names[3],
                                                names[4]]),
        (names[1], names[2], "show a cat instead", [names[1], names[2], names[5], names[6],
                                                    names[3], names[0]]),
        (names[3], names[6], "make it brighter", [names[3], names[6], names[4], names[5],
                                                  names[1], names[2]]),
    ]
    caps = []
    for k, (r, t, cap, members) in enumerate(entries):
        e = {"pairid": 12063 + k, "reference": r, "target_hard": t, "target_soft": {t: 1.0},
             "caption": cap, "img_set": {"id": 1 + k, "members": members,
                                         "reference_rank": 0, "target_rank": 1}}
        if split == "test1":  # the public test file has no targets
            e = {k2: v for k2, v in e.items() if k2 not in ("target_hard", "target_soft")}
            e["img_set"] = {k2: v for k2, v in e["img_set"].items() if k2 != "target_rank"}
        caps.append(e)
    _write(root / "captions" / f"cap.rc2.{split}.json", caps)
    return root


# --- FashionIQ ---------------------------------------------------------------------------
FIQ = ("dress", "shirt", "toptee")


def _asin(cat: str, n: int) -> str:
    return f"B00{cat[:2].upper()}{n:05d}"


def make_fashioniq(root: Path, gallery: int = 12) -> Path:
    """fiq/captions/cap.CAT.val.json, image_splits/split.CAT.val.json, images/ID.png.

    Per category: query 0's target is a copy of its candidate (in the first two), query 1's
    target is not in the category's gallery (never found), query 2's target is its own
    candidate (the reference stays in the FashionIQ gallery, so rank 1). R@10 = R@50 = 2/3.
    """
    for c, cat in enumerate(FIQ):
        ids = [_asin(cat, n) for n in range(gallery)]
        for n, i in enumerate(ids):
            src = 0 if n == gallery - 1 else n  # the last is a copy of the first
            _write(root / "images" / f"{i}.png", photo_bytes(src + c, "PNG"))
        outside = _asin(cat, 99)
        _write(root / "images" / f"{outside}.png", photo_bytes(13, "PNG"))
        _write(root / "image_splits" / f"split.{cat}.val.json", ids)
        caps = [{"target": ids[-1], "candidate": ids[0],
                 "captions": ["is the same", "has the same colour"]},
                {"target": outside, "candidate": ids[1],
                 "captions": ["is longer", "is red"]},
                {"target": ids[2], "candidate": ids[2],
                 "captions": ["is identical", "is unchanged"]}]
        _write(root / "captions" / f"cap.{cat}.val.json", caps)
    return root


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
