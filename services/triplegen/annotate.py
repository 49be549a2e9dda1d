"""Image annotation with the compact backbone: zero-shot ImageNet labels and an embedding.

Why: instruction writers need caption-like text beyond what the page says (the paper adds
entity labels and a PaLI caption), and pair filtering needs a visual similarity. The compact
backbone's MobileNetV2 gives both from one forward pass: ImageNet top-k labels and its
1280-d pooled features (L2-normalised, float32). Batches are padded to a few fixed sizes so
jit compiles at most once per size.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from runtime.limits import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS

ANNOTATOR_VERSION = "mnv2-imagenet-v1"
BACKBONE_NAME = "compact/mobilenet_v2"
BATCH_SIZES = (1, 8, 32)
TOP_K = 5
CLASSES_FILE = Path(__file__).resolve().parents[2] / "trainer" / "data" / "imagenet_classes.txt"


@dataclass(frozen=True)
class Annotation:
    labels: list[dict[str, float | str]]  # [{"label": name, "score": p}, ...] best first
    embedding: np.ndarray  # [1280] float32, unit norm

    @property
    def labels_text(self) -> str:
        """Caption-like text: 'tabby cat (0.62), Egyptian cat (0.21), ...'."""
        return ", ".join(f"{d['label']} ({float(d['score']):.2f})" for d in self.labels)


def decode_image(data: bytes) -> Image.Image:
    """Bytes -> RGB image with size limits (refuses decompression bombs)."""
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(f"image of {len(data)} bytes exceeds {MAX_IMAGE_BYTES}")
    with Image.open(io.BytesIO(data)) as im:
        if im.width * im.height > MAX_IMAGE_PIXELS:
            raise ValueError(f"{im.width}x{im.height} exceeds {MAX_IMAGE_PIXELS} pixels")
        im.load()
        if im.mode in ("RGBA", "LA", "P"):
            # Transparent emoji and clip art: composite on white as a web page shows them.
            rgba = im.convert("RGBA")
            bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(bg, rgba).convert("RGB")
        return im.convert("RGB")


def embedding_to_bytes(vec: np.ndarray) -> bytes:
    return np.asarray(vec, dtype="<f4").tobytes()


def embedding_from_bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<f4")


class Annotator:
    """Loads MobileNetV2 (ImageNet head) from the compact backbone once; thread-safe."""

    def __init__(self) -> None:
        # JAX (~2.5 s to import) loads only when an annotator is built: `python -m
        # services.triplegen export|stats|review` and pipelines built without one never pay.
        import jax

        from trainer.models.backbone import build_backbone
        from trainer.weights.compact import mobilenet_params

        model, self.pre = build_backbone("compact")
        self.classes = [c.strip() for c in CLASSES_FILE.read_text().splitlines() if c.strip()]
        params = {"params": {"image_tower": mobilenet_params()}}

        def forward(x):
            def run(m, x):
                feats = m.image_features(x)
                return feats, m.image_tower.logits(feats)

            feats, logits = model.apply(params, x, method=run)
            feats = feats / jax.numpy.sqrt(
                jax.numpy.sum(feats * feats, axis=-1, keepdims=True) + 1e-12)
            return feats, jax.nn.softmax(logits, axis=-1)

        self._forward = jax.jit(forward)
        self._lock = threading.Lock()

    def annotate(self, images: Sequence[Image.Image]) -> list[Annotation]:
        out: list[Annotation] = []
        i = 0
        while i < len(images):
            rest = len(images) - i
            size = next((b for b in BATCH_SIZES if b >= rest), BATCH_SIZES[-1])
            chunk = list(images[i:i + size])
            x = self.pre.images(chunk)
            if len(chunk) < size:  # pad to the fixed size: no recompilation
                x = np.concatenate([x, np.zeros((size - len(chunk), *x.shape[1:]), x.dtype)])
            with self._lock:
                feats, probs = self._forward(x)
            feats, probs = np.asarray(feats)[: len(chunk)], np.asarray(probs)[: len(chunk)]
            for f, p in zip(feats, probs, strict=True):
                top = np.argsort(-p)[:TOP_K]
                labels = [{"label": self.classes[k], "score": round(float(p[k]), 4)}
                          for k in top]
                out.append(Annotation(labels, f.astype(np.float32)))
            i += len(chunk)
        return out
