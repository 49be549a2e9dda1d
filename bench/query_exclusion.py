"""What leaving the query image's copies out of search results costs the search root per query,
beside what it already spends on the query image: the fingerprint (sha256 + pHash + colour
signature) against `decode_image` (the validation every query already pays), per image size,
decoding again or reusing the validation's RGB image (what the root does when the image has
no transparency),
and the near-duplicate check over the over-fetched candidates (k + margin stored rows).

    python bench/query_exclusion.py [--repeats 30]

Postgres (one indexed read of k + margin rows) and the larger shard k are not timed here.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np
from PIL import Image

from runtime.image_input import decode_image
from runtime.near_duplicates import fingerprint, near, warm_up


def jpeg(side: int, rng: np.random.Generator) -> bytes:
    base = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((side, side * 3 // 4), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def timed(fn, repeats: int) -> tuple[float, float]:
    """(median ms, sd ms) over `repeats` calls."""
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(runs), statistics.pstdev(runs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    warm_up()
    print(f"{'image':>12s} {'decode ms':>14s} {'fingerprint ms':>16s} {'ratio':>6s} "
          f"{'reusing the decode ms':>22s} {'ratio':>6s}")
    for side in (256, 640, 1600):
        data = jpeg(side, rng)
        d, dsd = timed(lambda data=data: decode_image(data), args.repeats)
        f, fsd = timed(lambda data=data: fingerprint(data), args.repeats)
        rgb = decode_image(data)
        r, rsd = timed(lambda data=data, rgb=rgb: fingerprint(data, rgb), args.repeats)
        print(f"{side:>5d}px {len(data) // 1024:>4d}KB {d:8.2f} ±{dsd:4.2f} {f:10.2f} ±{fsd:4.2f}"
              f" {f / d:6.2f} {r:14.2f} ±{rsd:4.2f} {r / d:6.2f}")
    q = fingerprint(jpeg(640, rng))
    rows = [(int(rng.integers(-2**63, 2**63 - 1)), rng.integers(0, 255, 192, np.uint8).tobytes())
            for _ in range(120)]
    c, csd = timed(lambda: [near(q.phash, q.colour_sig, p, s) for p, s in rows], args.repeats)
    print(f"near-duplicate check of 120 candidates (k 100 + margin 20): {c:.3f} ±{csd:.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
