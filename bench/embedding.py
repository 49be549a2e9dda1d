"""Embedding throughput: images/s through the Triton server (gRPC, bytes in) vs the same model
in-process (decode + preprocess + jitted encode), per batch size; ratio = serving overhead.

    python bench/embedding.py --triton-url 127.0.0.1:8001 --checkpoint DIR [--batches 1 4 16]

Start the server first (task serving:triton -- --checkpoint DIR).
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

from PIL import Image

sys.path[:0] = [str(Path(__file__).resolve().parents[1]),
                str(Path(__file__).resolve().parents[1] / "gen")]

from services.embedding.client import EmbeddingClient  # noqa: E402
from services.embedding.model import load_checkpoint  # noqa: E402


def images(n: int) -> list[bytes]:
    import skimage.data

    base = Image.fromarray(skimage.data.astronaut())
    out = []
    for i in range(n):
        buf = io.BytesIO()
        base.rotate(i * 3).resize((320, 320)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def rate(fn, batch: list[bytes], seconds: float) -> float:
    fn(batch)  # warm (compile / connect)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn(batch)
        n += len(batch)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--triton-url", default="127.0.0.1:8001")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 4, 16])
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    model = load_checkpoint(args.checkpoint)
    client = EmbeddingClient(args.triton_url)
    print("| model | batch | Triton img/s | in-process img/s | in-process / Triton |")
    print("|---|---|---|---|---|")
    for b in args.batches:
        batch = images(b)
        instr = ["make it red"] * b
        for name, tri, loc in (
            ("target", lambda x: client.embed_targets(x), lambda x: model.encode_target(x)),
            ("query", lambda x, i=instr: client.embed_queries(x, i),
             lambda x, i=instr: model.encode_query(x, i)),
        ):
            t = rate(tri, batch, args.seconds)
            local = rate(loc, batch, args.seconds)
            print(f"| {name} | {b} | {t:.1f} | {local:.1f} | {local / t:.2f} |", flush=True)


if __name__ == "__main__":
    main()
