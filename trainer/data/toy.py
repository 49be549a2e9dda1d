"""A toy triple set from real photos (scikit-image's bundled samples): each photo is cropped
into several base images and transformed (flip, greyscale, zoom, tint...); the instruction
names the transformation. Ground truth is exact, so it tests that training learns to follow
instructions. Split by base image, so held-out queries show unseen images.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from trainer.data.triples import Triple, write_jsonl

DESCRIPTIONS = {
    "astronaut": "an astronaut in a white space suit", "coffee": "a cup of coffee on a saucer",
    "chelsea": "a tabby cat", "cat": "a cat", "rocket": "a rocket on a launch pad",
    "motorcycle_left": "a red motorcycle", "motorcycle_right": "a red motorcycle",
    "hubble_deep_field": "galaxies in deep space", "retina": "a retina photographed in an eye",
    "immunohistochemistry": "stained tissue under a microscope", "colorwheel": "a colour wheel",
    "logo": "a snake logo",
}
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "hubble_deep_field",
          "retina", "immunohistochemistry", "colorwheel", "logo", "cat", "motorcycle_right")


def _tint(img: Image.Image, rgb: tuple[float, float, float]) -> Image.Image:
    a = np.asarray(img, np.float32) * np.asarray(rgb, np.float32)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def _zoom(img: Image.Image) -> Image.Image:
    w, h = img.size
    return img.crop((w // 4, h // 4, 3 * w // 4, 3 * h // 4)).resize((w, h))


TRANSFORMS: dict[str, tuple[str, Callable[[Image.Image], Image.Image]]] = {
    "flip": ("the same picture mirrored left to right", ImageOps.mirror),
    "upside_down": ("turn it upside down", lambda im: im.rotate(180)),
    "grey": ("make it black and white", lambda im: ImageOps.grayscale(im).convert("RGB")),
    "zoom": ("zoom in on the centre", _zoom),
    "red": ("give it a red tint", lambda im: _tint(im, (1.3, 0.6, 0.6))),
    "blue": ("give it a blue tint", lambda im: _tint(im, (0.6, 0.7, 1.3))),
    "dark": ("make it much darker", lambda im: ImageEnhance.Brightness(im).enhance(0.4)),
    "invert": ("invert the colours", ImageOps.invert),
}


def _photo(name: str) -> np.ndarray:
    import skimage.data

    arr = getattr(skimage.data, name)()
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, -1)
    return arr[..., :3].astype(np.uint8)


def _available_photos() -> list[str]:
    import skimage.data

    return [p for p in PHOTOS if hasattr(skimage.data, p)]


def build_toy_split(out_dir: str | Path, *, crops_per_photo: int = 4, size: int = 128,
                    held_out_fraction: float = 0.25, transforms: list[str] | None = None,
                    seed: int = 0) -> tuple[Path, Path]:
    """Write images + `train.jsonl` and `eval.jsonl` under out_dir; return the two paths."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    names = transforms or list(TRANSFORMS)
    bases: list[str] = []
    for photo in _available_photos():
        try:
            arr = _photo(photo)
        except Exception:  # a sample that needs network (pooch) is skipped
            continue
        img = Image.fromarray(arr)
        w, h = img.size
        for c in range(crops_per_photo):
            cw, ch = int(w * rng.uniform(0.55, 0.8)), int(h * rng.uniform(0.55, 0.8))
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            base = img.crop((x, y, x + cw, y + ch)).resize((size, size), Image.BILINEAR)
            key = f"{photo}_{c}"
            base.save(out / "images" / f"{key}.png")
            for t in names:
                TRANSFORMS[t][1](base).save(out / "images" / f"{key}_{t}.png")
            bases.append(key)
    rng.shuffle(bases)
    n_eval = max(1, int(len(bases) * held_out_fraction))
    splits = {"eval": bases[:n_eval], "train": bases[n_eval:]}
    with (out / "captions.jsonl").open("w") as f:  # for the compact alignment stage
        for b in splits["train"]:
            desc = DESCRIPTIONS.get(b.rsplit("_", 1)[0], "a photo")
            f.write(json.dumps({"image": f"images/{b}.png", "text": f"a photo of {desc}"}) + "\n")
            for t in names:
                f.write(json.dumps({"image": f"images/{b}_{t}.png",
                                    "text": f"a photo of {desc}, {TRANSFORMS[t][0]}"}) + "\n")
    paths = []
    for split in ("train", "eval"):
        triples = [Triple(str(out / "images" / f"{b}.png"), TRANSFORMS[t][0],
                          str(out / "images" / f"{b}_{t}.png"))
                   for b in splits[split] for t in names]
        paths.append(write_jsonl(out / f"{split}.jsonl", triples))
    return paths[0], paths[1]


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out_dir")
    ap.add_argument("--crops", type=int, default=4)
    a = ap.parse_args()
    print(*build_toy_split(a.out_dir, crops_per_photo=a.crops))
